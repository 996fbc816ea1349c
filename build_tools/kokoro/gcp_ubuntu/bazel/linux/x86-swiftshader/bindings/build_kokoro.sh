#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# CI job bazel/linux/x86-swiftshader/bindings: runs build.sh beside this script inside the bazel-python
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
  gcr.io/iree-oss/bazel-python@sha256:473b7e294136bc38abc1941042f0c0404199de5827f141520f0b6757305b7a95 \
  build_tools/kokoro/gcp_ubuntu/bazel/linux/x86-swiftshader/bindings/build.sh

# Kokoro copies this whole folder back to the machine that runs the job, which
# is slow and useless.
sudo rm -rf "${KOKORO_ARTIFACTS_DIR?}"/*
