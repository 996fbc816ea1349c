#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Build the Python bindings with Bazel and run their tests.
# Runs inside the bazel-python image (see build_kokoro.sh beside this script).

set -e
set -x

# Print the tool versions for debugging.
bazel --version
"${CC?}" --version
"${CXX?}" --version
python3 --version

bazel build --config=generic_clang //bindings/python/...
bazel test --config=generic_clang --test_output=errors //bindings/python/...
