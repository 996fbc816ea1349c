#!/usr/bin/env bash
# A Latin-1 locale for the tests that run the tool under one
# (tests/test_guarantees_git.py): Debian's `locales` data, and en_US.ISO-8859-1
# compiled into the system's locale archive. Safe to run again.
set -euo pipefail
# shellcheck source=as-root.sh
. "$(dirname "$0")/as-root.sh"

if ! locale -a 2>/dev/null | grep -qix 'en_US.iso88591'; then
    as_root "compiling the locale en_US.ISO-8859-1" "$0" "$@"
    if [ ! -e /usr/share/i18n/charmaps/ISO-8859-1.gz ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq locales >/dev/null
    fi
    localedef -i en_US -c -f ISO-8859-1 en_US.ISO-8859-1
fi
locale -a | grep -ix 'en_US.iso88591'
