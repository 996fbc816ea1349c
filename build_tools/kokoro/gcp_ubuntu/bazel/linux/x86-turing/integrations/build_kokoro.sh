#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# CI job bazel/linux/x86-turing/integrations: runs build.sh beside this script inside the bazel-tensorflow-nvidia
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
  gcr.io/iree-oss/bazel-tensorflow-nvidia@sha256:e5e96ec1709e83355ee2264c97c26fa5c3d40f749a62734f4787b17a83f2c3b8 \
  build_tools/kokoro/gcp_ubuntu/bazel/linux/x86-turing/integrations/build.sh

# Kokoro copies this whole folder back to the machine that runs the job, which
# is slow and useless.
sudo rm -rf "${KOKORO_ARTIFACTS_DIR?}"/*
