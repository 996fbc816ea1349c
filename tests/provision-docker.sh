#!/usr/bin/env bash
# Provision a Docker engine for the end-to-end tests (Debian). Root is needed
# only to install a package or start dockerd: then it runs itself again
# through sudo, or says to run it as root.
#
# Installs Debian's docker.io (the engine; not when another engine answers or
# another dockerd is installed), docker-registry (a real registry,
# started per test session by the test fixtures) and busybox-static (the
# tiny root filesystem the test images are built from), acl and attr (setfacl
# and setfattr, for the tests that files keep their ACL and extended
# attributes), qemu-user-static and binfmt-support (QEMU's binfmt handlers, so
# BuildKit runs the linux/arm64 RUN of tests/test_e2e_platforms.py's index;
# they register no handler for the machine's own architecture) when they are
# missing,
# then starts dockerd in the background unless an engine already answers, and
# waits until `docker info` does. Safe to run any number of times.
set -euo pipefail
# shellcheck source=as-root.sh
. "$(dirname "$0")/as-root.sh"

log=${DOCKERD_LOG:-/tmp/manage-images-dockerd.log}

missing=()
for package in docker.io docker-registry busybox-static acl attr qemu-user-static binfmt-support; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${missing[0]:-}" = docker.io ] && { command -v dockerd >/dev/null || docker info >/dev/null 2>&1; }; then
  missing=("${missing[@]:1}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  as_root "installing ${missing[*]}" "$0" "$@"
elif ! docker info >/dev/null 2>&1; then
  as_root "starting dockerd" "$0" "$@"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "provision-docker: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi

if docker info >/dev/null 2>&1; then
  echo "provision-docker: engine already running"
  exit 0
fi

echo "provision-docker: starting dockerd (log: $log)"
nohup dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "provision-docker: engine ready ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 0.5
done
echo "provision-docker: dockerd did not answer within 60 s; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
