#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# CI job bazel/linux/x86-swiftshader/integrations: runs build.sh beside this script inside the bazel-tensorflow-swiftshader
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
  gcr.io/iree-oss/bazel-tensorflow-swiftshader@sha256:39c0e43c503bddfacd69758a50f02450ad2322d35324e2f56997aebb33a1b20a \
  build_tools/kokoro/gcp_ubuntu/bazel/linux/x86-swiftshader/integrations/build.sh

# Kokoro copies this whole folder back to the machine that runs the job, which
# is slow and useless.
sudo rm -rf "${KOKORO_ARTIFACTS_DIR?}"/*
