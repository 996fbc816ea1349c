#!/usr/bin/env bash
# Install tmux, Debian's package, for the terminal-view tests
# (tests/test_e2e_progress.py run the tool in a real terminal and read its
# screen), when it is missing. Safe to run any number of times.
set -euo pipefail
# shellcheck source=as-root.sh
. "$(dirname "$0")/as-root.sh"

if ! dpkg -s tmux >/dev/null 2>&1; then
  as_root "installing tmux" "$0" "$@"
  echo "provision-terminal: installing tmux"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q tmux
fi
echo "provision-terminal: $(tmux -V)"
