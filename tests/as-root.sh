# Sourced by the scripts that need root for part of their work (installing
# packages, starting dockerd, adding users). They work the same run as root or
# by a user with sudo, and never need `sudo` typed in front of them:
#
#   as_root WHY SCRIPT ARGS...
#
# returns at once when this shell is root; else runs SCRIPT ARGS again as root
# through sudo, keeping the variables the scripts read (MANAGE_IMAGES_*,
# DOCKER*, PYTHON, CI); else, with no sudo, stops with one line saying what to
# do. Call it before the script changes folder (SCRIPT may be relative).

as_root() {
  local why=$1 script name keep
  script=$(readlink -f "$2")
  name=$(basename "$2")
  shift 2
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then
    keep=$(compgen -e | grep -E '^(MANAGE_IMAGES_|DOCKER|PYTHON$|CI$)' | paste -sd, - || true)
    echo "$name: $why needs root: running it again with sudo" >&2
    exec sudo ${keep:+"--preserve-env=$keep"} bash "$script" "$@"
  fi
  echo "$name: $why needs root, and sudo is not installed: run it again as root" >&2
  exit 1
}
