#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# CI job cmake/linux/x86-turing: runs build.sh beside this script inside the cmake-python-nvidia
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
  --gpus all \
  gcr.io/iree-oss/cmake-python-nvidia@sha256:310e3b399717905bb2b485f3ebed32222915c7dc4dc075aa4e1b8551101fe607 \
  build_tools/kokoro/gcp_ubuntu/cmake/linux/x86-turing/build.sh

# Kokoro copies this whole folder back to the machine that runs the job, which
# is slow and useless.
sudo rm -rf "${KOKORO_ARTIFACTS_DIR?}"/*
