#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Cross-compile the runtime for Android arm64-v8a with CMake and the NDK (build only).
# Runs inside the cmake-android image (see build_kokoro.sh beside this script).

set -e
set -x

# Print the tool versions for debugging.
export CMAKE_BIN="$(which cmake)"
"${CMAKE_BIN?}" --version
ninja --version
echo "ANDROID_NDK=${ANDROID_NDK?}"

"${CMAKE_BIN?}" -G Ninja -B build-android \
  -DCMAKE_TOOLCHAIN_FILE="${ANDROID_NDK?}/build/cmake/android.toolchain.cmake" \
  -DANDROID_ABI=arm64-v8a \
  -DANDROID_PLATFORM=android-29 \
  -DIREE_BUILD_COMPILER=OFF \
  -DIREE_BUILD_TESTS=ON \
  -DIREE_BUILD_SAMPLES=OFF
"${CMAKE_BIN?}" --build build-android
