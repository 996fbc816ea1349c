#!/usr/bin/env bash
# Try manage_images.py's main job for real on this machine, with no account:
# build, push and re-pin a family of images across a repository.
#
#   bash examples/try-locally.sh
#
# Run it as root or as a user with sudo: it asks for root (runs itself again
# through sudo) only when no engine answers to this user, to start one.
# It uses the Docker engine it finds: the one MANAGE_IMAGES_ENGINE names
# (classic, buildkit or containerd, as tests/provision-engines.sh provisions
# them), else the one DOCKER_HOST or the default socket answers on; only when
# none answers does it provision one (tests/provision-docker.sh). It says which
# engine it used: its version, its builder (classic or BuildKit) and its image
# store (a graph driver such as overlay2, or containerd). It starts a private
# registry on 127.0.0.1:${MANAGE_IMAGES_TRY_PORT:-5000} if
# none answers there, and lays out a scratch repository under
# ${MANAGE_IMAGES_TRY_DIR:-/tmp/manage-images-try} whose 17 images are tiny
# busybox images with the real graph. There it edits base and runs
#   manage_images.py --image base --build --push --update_references -j 4
# then shows the plan, the summary, `git diff --stat`, a Dockerfile's FROM
# line before and after, and `--check` passing. It never touches this
# repository or your docker config (DOCKER_CONFIG points into the scratch
# folder, with your buildx plugin linked in). Safe to run again. The scratch
# repository is then the "try-it world" of README.md: its prod_digests.txt names
# the local registry, so every workflow of the README runs there as written.
set -euo pipefail
# shellcheck source=../tests/as-root.sh
. "$(dirname "$0")/../tests/as-root.sh"

here=$(cd "$(dirname "$0")/.." && pwd)
port=${MANAGE_IMAGES_TRY_PORT:-5000}
state=${MANAGE_IMAGES_TRY_DIR:-/tmp/manage-images-try}
registry="127.0.0.1:$port/iree-oss"
python=${PYTHON:-python3}
engines=${MANAGE_IMAGES_ENGINES_DIR:-/var/lib/manage-images-engines}
if [ -n "${MANAGE_IMAGES_ENGINE:-}" ]; then
  [ -f "$engines/$MANAGE_IMAGES_ENGINE/engine.env" ] || {
    echo "no $engines/$MANAGE_IMAGES_ENGINE/engine.env; run: bash tests/provision-engines.sh $MANAGE_IMAGES_ENGINE" >&2
    exit 1
  }
  set -a
  # shellcheck disable=SC1090
  . "$engines/$MANAGE_IMAGES_ENGINE/engine.env"
  set +a
fi
# An engine this user can reach, or root to reach or start one.
docker info >/dev/null 2>&1 || as_root "reaching or starting a Docker engine" "$0" "$@"
# The buildx plugin of the docker config in use, before DOCKER_CONFIG moves.
buildx="${DOCKER_CONFIG:-${HOME:-/root}/.docker}/cli-plugins/docker-buildx"
export DOCKER_CONFIG="$state/docker-config"  # never ~/.docker/config.json
mkdir -p "$DOCKER_CONFIG/cli-plugins"
if [ -x "$buildx" ]; then
  ln -sfn "$(readlink -f "$buildx")" "$DOCKER_CONFIG/cli-plugins/docker-buildx"
else
  rm -f "$DOCKER_CONFIG/cli-plugins/docker-buildx"
fi

step() { printf '\n==> %s\n' "$*"; }
answers() { "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://127.0.0.1:$port/v2/" 2>/dev/null; }

step "A Docker engine"
if docker info >/dev/null 2>&1; then
  echo "an engine answers at ${DOCKER_HOST:-the default socket}: using it"
else
  bash "$here/tests/provision-docker.sh"
fi
command -v docker-registry >/dev/null && [ -x /bin/busybox ] || bash "$here/tests/provision-docker.sh"
server=$(docker version --format '{{.Server.Version}}')
client=$(docker version --format '{{.Client.Version}}')
if [ "${DOCKER_BUILDKIT:-}" = 0 ]; then
  builder="classic (DOCKER_BUILDKIT=0)"
elif docker buildx version >/dev/null 2>&1 && { [ "${client%%.*}" -ge 23 ] || [ "${DOCKER_BUILDKIT:-}" = 1 ]; }; then
  builder="BuildKit ($(docker buildx version | awk '{print "buildx " $2}'))"
else
  builder="classic (no buildx plugin)"
fi
if docker info --format '{{json .DriverStatus}}' | grep io.containerd.snapshotter.v1 >/dev/null; then
  store="containerd ($(docker info --format '{{.Driver}}') snapshotter)"
else
  store="$(docker info --format '{{.Driver}}') (graph driver)"
fi
echo "Engine: Docker $server (client $client) at ${DOCKER_HOST:-the default socket}; builder: $builder; image store: $store"

step "A private registry on 127.0.0.1:$port"
started_registry=""
if answers; then
  echo "a registry already answers there: using it"
else
  mkdir -p "$state/registry"
  cat >"$state/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $state/registry/data
http:
  addr: 127.0.0.1:$port
YAML
  nohup docker-registry serve "$state/registry/config.yml" >"$state/registry/log" 2>&1 </dev/null &
  echo $! >"$state/registry/pid"
  started_registry=$(cat "$state/registry/pid")
  for _ in $(seq 1 50); do answers && break; sleep 0.2; done
  answers || { echo "the registry did not start; see $state/registry/log" >&2; exit 1; }
  echo "started docker-registry (pid $started_registry), storing under $state/registry/data"
fi

step "A scratch repository: 17 tiny busybox images with the real graph"
repo="$state/repo"
rm -rf "$repo"
"$python" - "$here" "$repo" "$registry" <<'PY'
import sys
from pathlib import Path

here, repo, registry = sys.argv[1:]
sys.path[:0] = [f"{here}/tests", f"{here}/build_tools/docker"]
import fake_tree
import manage_images

fake_tree.make_tree(Path(repo), registry, manage_images.IMAGES_TO_DEPENDENCIES)
PY
cp "$here/build_tools/docker/manage_images.py" "$repo/build_tools/docker/"
cd "$repo"
git add build_tools/docker/manage_images.py
git -c commit.gpgsign=false commit -qm "Add manage_images.py"
# No --registry: the tree's prod_digests.txt names the local registry, and the tool uses it.
tool() { "$python" build_tools/docker/manage_images.py "$@"; }
echo "$repo: $(git ls-files | wc -l) tracked files. Building, pushing and pinning all 17 images once..."
tool --images all --build --push --update_references -j 4 >"$state/bootstrap.log" 2>&1 ||
  { tail -n 30 "$state/bootstrap.log" >&2; exit 1; }
git -c commit.gpgsign=false commit -qam "Pin the images"
echo "done; the tree pins every image by digest (log: $state/bootstrap.log)"

step "Edit a file in base's build context"
echo "base, edited at $(date -u +%FT%TZ)" >build_tools/docker/base/stamp
git -c commit.gpgsign=false commit -qam "Edit base"
before=$(grep -m1 '^FROM' build_tools/docker/cmake/Dockerfile)

step "The plan: base and every image built on it, parents first"
tool --image base --graph

step "The main job: manage_images.py --image base --build --push --update_references -j 4"
tool --image base --build --push --update_references -j 4 >"$state/run.log" 2>&1 ||
  { tail -n 30 "$state/run.log" >&2; exit 1; }
sed -n '/^Summary:/,$p' "$state/run.log"
echo "(the full output, with every docker command: $state/run.log)"

step "git diff --stat: the new digests, pinned across the tree"
git diff --stat

step "build_tools/docker/cmake/Dockerfile, before and after"
echo "before: $before"
echo "after:  $(grep -m1 '^FROM' build_tools/docker/cmake/Dockerfile)"

step "manage_images.py --check --images all"
tool --check --images all

step "Done. To remove what this started:"
if [ -n "$started_registry" ]; then
  echo "  kill $started_registry                  # the registry on 127.0.0.1:$port"
elif [ -f "$state/registry/pid" ] && kill -0 "$(cat "$state/registry/pid")" 2>/dev/null; then
  echo "  kill $(cat "$state/registry/pid")                  # the registry an earlier run started on 127.0.0.1:$port"
else
  echo "  (the registry on 127.0.0.1:$port was not started by this script; it was left alone)"
fi
echo "  rm -rf $state             # the scratch repository, registry data and docker config"
echo "  ${DOCKER_HOST:+DOCKER_HOST=$DOCKER_HOST }docker image ls '127.0.0.1:$port/iree-oss/*'   # the images it built; remove them with docker image rm"
echo
echo "Try the README's workflows there, as written (their digests go to the registry above):"
echo "  cd $repo"
