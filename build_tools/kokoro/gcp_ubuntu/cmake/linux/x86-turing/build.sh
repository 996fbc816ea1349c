#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Configure and build with CMake, then run the tests on an NVIDIA Turing GPU.
# Runs inside the cmake-python-nvidia image (see build_kokoro.sh beside this script).

set -e
set -x

# Print the tool versions for debugging.
export CMAKE_BIN="$(which cmake)"
"${CMAKE_BIN?}" --version
ninja --version
"${CC?}" --version
"${CXX?}" --version
python3 --version

nvidia-smi
"${CMAKE_BIN?}" -G Ninja -B build -DIREE_BUILD_PYTHON_BINDINGS=ON
"${CMAKE_BIN?}" --build build
cd build && ctest --output-on-failure
