#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Build the TensorFlow integrations with Bazel and run their tests on SwiftShader.
# Runs inside the bazel-tensorflow-swiftshader image (see build_kokoro.sh beside this script).

set -e
set -x

# Print the tool versions for debugging.
bazel --version
"${CC?}" --version
"${CXX?}" --version
python3 --version

echo "VK_ICD_FILENAMES=${VK_ICD_FILENAMES?}"
cd integrations/tensorflow
bazel build --config=generic_clang //iree_tf_compiler/...
bazel test --config=generic_clang --test_output=errors //e2e/...
