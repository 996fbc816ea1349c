#!/usr/bin/env bash
# Provision the three Docker engines of the test matrix (Debian 12 or 13; as root,
# or as a user with sudo: it runs itself again through sudo).
#
#   bash tests/provision-engines.sh [classic] [buildkit] [containerd]   # default: all three
#
#   classic     Debian 12's docker.io 20.10, classic builder (DOCKER_BUILDKIT=0,
#               no buildx plugin). On Debian 12 it is the system engine on the
#               default socket (tests/provision-docker.sh starts it); on any
#               other release, bookworm's docker.io is downloaded and started
#               privately like the two below. MANAGE_IMAGES_CLASSIC=private
#               forces the private copy on Debian 12 too.
#   buildkit    Debian 13's docker.io 26.1.5 with docker-buildx 0.13.1 (BuildKit),
#               overlay2 image store.
#   containerd  the same binaries with the containerd image store
#               ("features": {"containerd-snapshotter": true}).
#
# Packages of another Debian release are brought in without touching the
# system's: `apt-get download` with a private sources list (the mirror is the
# one this machine's own sources name), then `dpkg-deb -x` into
# $MANAGE_IMAGES_ENGINES_CACHE/SUITE/root (default /var/cache/manage-images-engines).
# Each private engine has its own socket, data root, exec root and pid file,
# shares docker0 and leaves iptables alone (never --bridge=none: it would
# delete docker0 for the system engine).
#
# For each engine it writes $MANAGE_IMAGES_ENGINES_DIR/NAME/engine.env (default
# /var/lib/manage-images-engines): DOCKER_HOST, DOCKER_BUILDKIT, DOCKER_CONFIG
# (holding the buildx plugin where the engine has one), PATH with the engine's
# own binaries first, and what a test needs to start a cold engine of the
# same kind. Source it (`set -a; . FILE; set +a`) to point docker at that
# engine, or run the tests with MANAGE_IMAGES_ENGINE=NAME. Safe to run any
# number of times: a cached download is reused, a running engine is kept.
set -euo pipefail
# shellcheck source=as-root.sh
. "$(dirname "$0")/as-root.sh"
as_root "provisioning engines" "$0" "$@"

here=$(cd "$(dirname "$0")" && pwd)
cache=${MANAGE_IMAGES_ENGINES_CACHE:-/var/cache/manage-images-engines}
state=${MANAGE_IMAGES_ENGINES_DIR:-/var/lib/manage-images-engines}
run=${MANAGE_IMAGES_ENGINES_RUN:-/run/manage-images-engines}
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(classic buildkit containerd)

say() { echo "provision-engines: $*"; }
die() { echo "provision-engines: $*" >&2; exit 1; }

# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

# The plain Debian mirror this machine's own sources use (not -security).
mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# extract SUITE PACKAGE...: the packages of Debian SUITE unpacked into
# $cache/SUITE/root (reused when it already holds exactly them).
extract() {
  local suite=$1
  shift
  local root=$cache/$suite/root apt=$cache/$suite/apt
  if [ -f "$root/.packages" ] && [ "$(cut -d= -f1 "$root/.packages")" = "$(printf '%s\n' "$@")" ]; then
    return
  fi
  say "downloading $* from Debian $suite ($(mirror))"
  mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial" "$cache/$suite/debs"
  # apt downloads as its own user where it can write.
  chown _apt "$cache/$suite/debs" 2>/dev/null || true
  cat >"$apt/sources/$suite.sources" <<EOF
Types: deb
URIs: $(mirror)
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  local options=(
    -q
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$apt/sources"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache"
  )
  apt-get "${options[@]}" update >/dev/null
  rm -f "$cache/$suite/debs"/*.deb
  (cd "$cache/$suite/debs" && apt-get "${options[@]}" download "$@" >/dev/null)
  rm -rf "$root.new"
  mkdir -p "$root.new"
  local package deb
  for package in "$@"; do
    deb=$(ls "$cache/$suite/debs/${package}_"*.deb)
    dpkg-deb -x "$deb" "$root.new"
    echo "$package=$(dpkg-deb -f "$deb" Version)" >>"$root.new/.packages"
  done
  rm -rf "$root"
  mv "$root.new" "$root"
}

version_of() { sed -n "s/^$2=//p" "$cache/$1/root/.packages"; }

# write_env NAME KEY=VALUE...: $state/NAME/engine.env, one KEY=VALUE a line
# (values hold no spaces; `$PATH` stands for the caller's PATH).
write_env() {
  local name=$1
  shift
  mkdir -p "$state/$name"
  printf '%s\n' "# The $name engine of the test matrix; written by tests/provision-engines.sh." \
    "MANAGE_IMAGES_ENGINE=$name" "$@" >"$state/$name/engine.env.new"
  mv "$state/$name/engine.env.new" "$state/$name/engine.env"
}

# answers SOCKET: the engine on unix://SOCKET answers (asked with the engine's own client).
answers() {
  env DOCKER_HOST="unix://$1" DOCKER_CONFIG="$2" PATH="$3" docker info >/dev/null 2>&1
}

# start NAME ROOT FEATURES BUILDX: a private dockerd from ROOT (see the header).
start() {
  local name=$1 root=$2 features=$3 buildx=$4
  local folder=$state/$name sock=$run/$name/docker.sock
  local path=$root/usr/bin:$root/usr/sbin:$PATH
  mkdir -p "$folder/docker-config" "$run/$name"
  echo "{\"features\": $features}" >"$folder/daemon.json"
  if [ -n "$buildx" ]; then
    mkdir -p "$folder/docker-config/cli-plugins"
    ln -sfn "$buildx" "$folder/docker-config/cli-plugins/docker-buildx"
  fi
  if answers "$sock" "$folder/docker-config" "$path"; then
    say "$name: engine already running on unix://$sock"
    return
  fi
  say "$name: starting $root/usr/sbin/dockerd on unix://$sock (log: $folder/dockerd.log)"
  env PATH="$path" setsid nohup "$root/usr/sbin/dockerd" \
    --config-file "$folder/daemon.json" \
    --data-root "$folder/data" \
    --exec-root "$run/$name/exec" \
    --pidfile "$run/$name/docker.pid" \
    --host "unix://$sock" \
    --iptables=false --ip-masq=false \
    >>"$folder/dockerd.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 120); do
    answers "$sock" "$folder/docker-config" "$path" && return
    sleep 0.5
  done
  tail -n 20 "$folder/dockerd.log" >&2 || true
  die "$name: dockerd did not answer within 60 s; see $folder/dockerd.log"
}

# private NAME SUITE FEATURES BUILDKIT PACKAGE...: extract, start, write the env file.
private() {
  local name=$1 suite=$2 features=$3 buildkit=$4
  shift 4
  extract "$suite" "$@"
  local root=$cache/$suite/root buildx=""
  [ "$buildkit" = 1 ] && buildx=$root/usr/libexec/docker/cli-plugins/docker-buildx
  start "$name" "$root" "$features" "$buildx"
  write_env "$name" \
    "MANAGE_IMAGES_ENGINE_DOCKERD=$root/usr/sbin/dockerd" \
    "MANAGE_IMAGES_ENGINE_DAEMON_JSON=$state/$name/daemon.json" \
    "MANAGE_IMAGES_ENGINE_BUILDX=$buildx" \
    "MANAGE_IMAGES_ENGINE_PACKAGES=$(paste -sd, "$root/.packages")" \
    "DOCKER_HOST=unix://$run/$name/docker.sock" \
    "DOCKER_BUILDKIT=$buildkit" \
    "DOCKER_CONFIG=$state/$name/docker-config" \
    "PATH=$root/usr/bin:$root/usr/sbin:\$PATH"
  say "$name: ready ($(version_of "$suite" docker.io); $state/$name/engine.env)"
}

classic() {
  if [ "$codename" = bookworm ] && [ "${MANAGE_IMAGES_CLASSIC:-system}" != private ]; then
    mkdir -p "$state/classic/docker-config"
    # A cold engine of this kind reads what the system engine reads.
    local config=""
    [ -f /etc/docker/daemon.json ] && config=/etc/docker/daemon.json
    write_env classic \
      "MANAGE_IMAGES_ENGINE_DOCKERD=$(command -v dockerd)" \
      "MANAGE_IMAGES_ENGINE_DAEMON_JSON=$config" \
      "MANAGE_IMAGES_ENGINE_BUILDX=" \
      "MANAGE_IMAGES_ENGINE_PACKAGES=docker.io=$(dpkg-query -W -f '${Version}' docker.io)" \
      "DOCKER_HOST=unix:///var/run/docker.sock" \
      "DOCKER_BUILDKIT=0" \
      "DOCKER_CONFIG=$state/classic/docker-config" \
      "PATH=\$PATH"
    say "classic: the system engine on unix:///var/run/docker.sock ($state/classic/engine.env)"
    return
  fi
  # bookworm's dockerd links libdevmapper, which Debian 13's docker.io does not need.
  if ! ldconfig -p | grep 'libdevmapper\.so\.1\.02\.1' >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libdevmapper1.02.1
  fi
  private classic bookworm '{}' 0 docker.io
}

# The system's engine, registry and busybox, and the containerd, runc and
# tini every private engine runs on (Debian 12's and 13's serve both).
env -u DOCKER_HOST -u DOCKER_CONTEXT bash "$here/provision-docker.sh"
needed=()
for package in containerd runc tini; do
  dpkg -s "$package" >/dev/null 2>&1 || needed+=("$package")
done
if [ ${#needed[@]} -gt 0 ]; then
  say "installing ${needed[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${needed[@]}"
fi
mkdir -p "$cache" "$state" "$run"
# One provisioning at a time: two CI runs on one machine share the engines.
exec 9>"$state/.lock"
flock 9
for name in "${wanted[@]}"; do
  case $name in
    classic) classic ;;
    buildkit) private buildkit trixie '{"containerd-snapshotter": false}' 1 docker.io docker-cli docker-buildx ;;
    containerd) private containerd trixie '{"containerd-snapshotter": true}' 1 docker.io docker-cli docker-buildx ;;
    *) die "unknown engine $name (classic, buildkit or containerd)" ;;
  esac
done
