#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# CI job cmake/linux/x86-swiftshader: runs build.sh beside this script inside the cmake-python-swiftshader
# image, pinned by digest (kept up to date by build_tools/docker/manage_images.py).

set -e
set -x

# Print the UTC time when set -x is on.
export PS4='[$(date -u "+%T %Z")] '

# Kokoro checks the repository out here.
cd "${KOKORO_ARTIFACTS_DIR?}/github/iree"
source build_tools/kokoro/gcp_ubuntu/docker_common.sh

# Sets DOCKER_RUN_ARGS.
docker_setup

docker run "${DOCKER_RUN_ARGS[@]?}" \
  gcr.io/iree-oss/cmake-python-swiftshader@sha256:3e3d3427f3a58b32fa3ed578b610e411e0b81fd0e1984ac9b0fceae8bf8343dc \
  build_tools/kokoro/gcp_ubuntu/cmake/linux/x86-swiftshader/build.sh

# Kokoro copies this whole folder back to the machine that runs the job, which
# is slow and useless.
sudo rm -rf "${KOKORO_ARTIFACTS_DIR?}"/*
