# SPDX-License-Identifier: Apache-2.0
# Licensed under the Apache License v2.0; see https://www.apache.org/licenses/LICENSE-2.0

# Shared set-up for the CI scripts that run a build inside a Docker image.

# docker_setup fills the DOCKER_RUN_ARGS array for `docker run`: the repository
# mounted as the working directory, the container removed afterwards, and the
# build run as the calling user (with a fake home and passwd/group files so
# tools that look the user up work), with read-only access to gcloud's config.
# Needs KOKORO_ROOT and KOKORO_ARTIFACTS_DIR.
function docker_setup() {
  local workdir="${KOKORO_ARTIFACTS_DIR?}/github/iree"
  DOCKER_RUN_ARGS=(
    --volume="${workdir?}:${workdir?}"
    --workdir="${workdir?}"
    --rm
  )

  # Run as the calling user, so files written to the mounted repository are
  # theirs and not root's.
  DOCKER_RUN_ARGS+=(--user="$(id -u):$(id -g)")

  # Tools such as Bazel look the user up: give the container this machine's
  # users and groups.
  local fake_etc_dir="${KOKORO_ROOT?}/fake_etc"
  mkdir -p "${fake_etc_dir?}"
  getent group > "${fake_etc_dir?}/group"
  getent passwd > "${fake_etc_dir?}/passwd"
  DOCKER_RUN_ARGS+=(
    --volume="${fake_etc_dir?}/group:/etc/group:ro"
    --volume="${fake_etc_dir?}/passwd:/etc/passwd:ro"
  )

  # A writable home that is not the host's.
  local fake_home_dir="${KOKORO_ROOT?}/fake_home"
  mkdir -p "${fake_home_dir?}"
  DOCKER_RUN_ARGS+=(--volume="${fake_home_dir?}:${HOME?}")

  # gcloud credentials, read-only, for builds that fetch from Google Cloud.
  local gcloud_config_dir="${HOME?}/.config/gcloud"
  mkdir -p "${gcloud_config_dir?}"
  DOCKER_RUN_ARGS+=(--volume="${gcloud_config_dir?}:${HOME?}/.config/gcloud:ro")
}
