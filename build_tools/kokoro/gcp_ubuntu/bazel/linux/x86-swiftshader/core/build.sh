#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Build the core compiler and runtime with Bazel and run their tests on SwiftShader.
# Runs inside the bazel image (see build_kokoro.sh beside this script).

set -e
set -x

# Print the tool versions for debugging.
bazel --version
"${CC?}" --version
"${CXX?}" --version

bazel build --config=generic_clang //iree/...
bazel test --config=generic_clang --test_output=errors --test_tag_filters=-nokokoro //iree/...
