#!/usr/bin/env python3
"""Manage the CI Docker images of this repository and pin them by digest.

The images form a graph (IMAGES_TO_DEPENDENCIES): an image's Dockerfile pins
each of its parents by digest (`FROM gcr.io/iree-oss/base@sha256:...`).
Selecting an image processes it and every image that transitively depends on
it, each after all of its parents, running the steps asked for:

  --pull               docker pull REGISTRY/NAME:TAG
  --build              docker build --tag REGISTRY/NAME:TAG build_tools/docker/NAME
  --push               docker push REGISTRY/NAME:TAG
  --update_references  rewrite every REGISTRY/NAME[:TAG]@sha256:... in the files git
                       tracks to the digest the registry gave the pushed image

Rebuild cmake and every image that depends on it, push them and pin the new
digests everywhere:
  python3 build_tools/docker/manage_images.py --image cmake \
      --build --push --update_references

Show what that would do without doing it:
  python3 build_tools/docker/manage_images.py --image cmake \
      --build --push --update_references --dry-run

Rebuild everything after a change to base, four images at a time:
  python3 build_tools/docker/manage_images.py --images all \
      --build --push --update_references -j 4

Spread that rebuild over three build hosts (docker contexts or buildx builders),
two images at a time on each; every parent is pushed and pinned before its
children start on any of them:
  python3 build_tools/docker/manage_images.py --images all \
      --build --push --update_references -j 2 \
      --builder build-1 --builder build-2 --builder build-3

Check, without Docker, that the graph, the Dockerfiles, the references and
prod_digests.txt agree, and that every image a change touched was re-pinned
(for CI, with a JSON report):
  python3 build_tools/docker/manage_images.py --check --images all \
      --changed_since origin/main --json report.json

Publish the pinned images under `prod`, by digest, and check the registry:
  python3 build_tools/docker/manage_images.py --images all --promote --tag prod
  python3 build_tools/docker/manage_images.py --images all --verify_pinned --tag prod

Rebuild on a machine that never built the images and prove every pinned
digest comes out the same:
  python3 build_tools/docker/manage_images.py --images all --build \
      --cache_from_pinned --verify_pinned

See build_tools/docker/README.md, the manual, for the workflows in full.
"""

from __future__ import annotations

import argparse
import bisect
import codecs
import collections
import contextlib
import errno
import fcntl
import functools
import gc
import graphlib
import itertools
import os
import re
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import (
    TYPE_CHECKING,
    IO,
    Callable,
    Container,
    Iterable,
    Iterator,
    Literal,
    Mapping,
    NamedTuple,
    Sequence,
    TextIO,
    TypeVar,
)

# ---------------------------------------------------------------------------
# Constants: where things live, the image graph (data), and the grammars.

__version__ = "0.2.0"
DEFAULT_REGISTRY = "gcr.io/iree-oss"
DEFAULT_TAG = "latest"
DOCKER_DIR = "build_tools/docker"
PROD_DIGESTS_PATH = f"{DOCKER_DIR}/prod_digests.txt"
WORKSPACE_PATH = "WORKSPACE"
# Bazel reads this one instead of WORKSPACE when both exist.
WORKSPACE_BAZEL_PATH = "WORKSPACE.bazel"
RBE_IMAGE = "rbe-toolchain"
LOCK_NAME = "manage_images.lock"  # in the git directory, beside index.lock
LOCK_MAX_BYTES = 16 << 20  # a lock lists the temporary files of one change: a bigger one is not the tool's
COMMAND_TIMEOUT = 120  # seconds, for the read-only commands (git, docker image inspect)
SAVE_DEADLINE = 3600  # seconds for `docker save` of an index: its layers stream through, unread
SAVE_KEEP = 64 << 20  # bytes of an index's manifests and configs kept from `docker save`, in all
# Options on every git call, so no user configuration changes what git prints:
# no pager, no colour, paths unquoted, never into submodules unless asked.
GIT_OPTIONS = (
    "--no-pager",
    "-c",
    "color.ui=never",
    "-c",
    "core.quotePath=false",
    "-c",
    "submodule.recurse=false",
)
# git's variables that would point it at another repository, index or object
# store than the work tree the tool chose (--repo_root, or the current folder's).
GIT_REPOSITORY_VARIABLES = frozenset(
    (
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_SHALLOW_FILE",
        "GIT_GRAFT_FILE",
    )
)
# git decides a file is binary by a NUL byte among its first bytes; so does the tool.
BINARY_PEEK = 8000
STOP_GRACE = 5  # seconds a stopped command has to end after SIGTERM, before SIGKILL
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # each stops the whole run, in every mode

# Map from image names to the images they are built from. Keep this in
# agreement with the Dockerfiles' FROM and COPY --from lines.
IMAGES_TO_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "base": (),
    "util": (),
    "cmake": ("base", "util"),
    "cmake-android": ("cmake", "util"),
    "cmake-python": ("cmake",),
    "cmake-python-vulkan": ("cmake-python", "vulkan"),
    "cmake-python-swiftshader": ("cmake-python-vulkan", "swiftshader"),
    "cmake-python-nvidia": ("cmake-python-vulkan",),
    "bazel": ("base", "util"),
    "bazel-python": ("bazel",),
    "bazel-tensorflow": ("bazel-python",),
    "bazel-tensorflow-vulkan": ("bazel-tensorflow", "vulkan"),
    "bazel-tensorflow-swiftshader": ("bazel-tensorflow-vulkan", "swiftshader"),
    "bazel-tensorflow-nvidia": ("bazel-tensorflow-vulkan",),
    "rbe-toolchain": ("vulkan",),
    "swiftshader": ("cmake",),
    "vulkan": ("util",),
}

# The platforms (OS/ARCH[/VARIANT]) an image is built for when it is not the engine's own
# alone: beside IMAGES_TO_DEPENDENCIES, written once. Such an image is pinned as one index
# holding exactly these platforms, and an image built from it may use only platforms it
# has. An image without an entry is built for the engine's platform, as it always was.
# Empty here: this tree's pins are single-platform (linux/amd64) image manifests.
IMAGE_PLATFORMS: dict[str, tuple[str, ...]] = {}

# Docker refuses a repository name (registry and path) longer than this.
MAX_REFERENCE_NAME = 255
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
# Docker's tag grammar.
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
TAG_RE = re.compile(_TAG + r"\Z")
# A registry host (with an optional port) followed by repository path
# components, in Docker's reference grammar.
_DOMAIN_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REGISTRY_RE = re.compile(
    rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
    rf"(?:/{_PATH_COMPONENT})*\Z"
)
# Registries whose pushes go through `gcloud auth configure-docker`.
GOOGLE_REGISTRY_RE = re.compile(r"(?:gcr\.io|[a-z0-9.-]+\.gcr\.io|[a-z0-9-]+-docker\.pkg\.dev)\Z")
# Characters that would make a match part of a longer registry host or path
# (`mirror.gcr.io/...`, `x/gcr.io/...`); `//` stays allowed for URLs.
_REFERENCE_PART = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-")
# What may not follow an unpinned `REGISTRY/NAME[:TAG]`: a longer path or tag,
# a tag that is not one (`:$TAG`), or a digest of another form (`@sha512:`).
_UNPINNED_CONTINUES = _REFERENCE_PART | frozenset(b":@")
# A line holding this marker (in a comment) may name our images unpinned.
ALLOW_UNPINNED = "manage-images: allow-unpinned"
# A git attribute (.gitattributes) that lets the files it is set for name our images unpinned.
ALLOW_UNPINNED_ATTRIBUTE = "manage-images-allow-unpinned"
# In an image's Dockerfile: nothing outside prod_digests.txt has to refer to the image.
ALLOW_UNREFERENCED = "manage-images: allow-unreferenced"
# Documentation names images unpinned on purpose: --check leaves it out of that finding.
DOCUMENTATION_SUFFIXES = (".md", ".rst", ".txt")
HEX64_BYTES_RE = re.compile(rb"[0-9a-f]{64}\Z")
# One string literal on one line with no prefix: the only kind whose bytes
# the tool replaces in WORKSPACE (a concatenation or an f-string is not a pin
# it can own).
_PLAIN_STRING_RE = re.compile(rb"""(?:"(?:[^"\\\r\n]|\\.)*"|'(?:[^'\\\r\n]|\\.)*')\Z""")
# Where Python's tokenizer (and so Starlark's grammar as `ast` reads it) ends a line.
_NEWLINE_RE = re.compile(rb"\r\n|\r|\n")
# What docker's output says when a push or pull fails, for `diagnose`.
_UNREACHABLE_RE = re.compile(
    r"connection refused|no such host|i/o timeout|network is unreachable|"
    r"server gave HTTP response to HTTPS client|connection reset|broken pipe",
    re.I,
)
_REFUSED_RE = re.compile(
    r"unauthorized|authentication required|denied|forbidden|no basic auth credentials", re.I
)
_NO_ENGINE_RE = re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running", re.I)
# A step of a build that failed (BuildKit's words, then the classic builder's), not its push.
_STEP_FAILED_RE = re.compile(r"did not complete successfully: exit code|returned a non-zero code")
# A temporary file beside its target: a short fixed-length name, so it fits
# wherever the target's name does, and one the next run can recognise.
BIG_FILE = 1 << 20  # bytes; a smaller file is written from memory, whatever changed
BLOCK = 1 << 16  # bytes; the unit a big file is patched and read back in
TEMPORARY_RE = re.compile(r"\.manage_images\.[0-9a-f]{12}\.tmp\Z")
# BuildKit's own record of its cache in an image config: build bookkeeping,
# not content (a cold engine writes another one for the same layers).
CACHE_RECORD_KEY = "moby.buildkit.cache.v0"
# The runtime config of an image (the OCI image spec's `config`): what a container of it
# gets. Docker's own extra fields (Image, Hostname, ...) are bookkeeping, and newer CLIs
# leave them out of `docker image inspect`.
RUNTIME_CONFIG_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
)
# The image store of an engine that keeps its images in containerd.
CONTAINERD_SNAPSHOTTER = ["driver-type", "io.containerd.snapshotter.v1"]
# What Go's strconv.ParseBool accepts, as docker reads DOCKER_BUILDKIT.
GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
# The docker CLI that runs `docker build` through buildx when the plugin is there.
BUILDX_DEFAULT_SINCE = 23
# Platforms, as containerd's `platforms` package knows them (database.go): an OS or an
# architecture outside these is a typo, not a platform.
KNOWN_OS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 "
    "solaris wasip1 windows zos".split()
)
KNOWN_ARCHITECTURES = frozenset(
    "386 amd64 amd64p32 arm armbe arm64 arm64be ppc64 ppc64le loong64 mips mipsle mips64 mips64le "
    "mips64p32 mips64p32le ppc riscv riscv64 s390 s390x sparc sparc64 wasm".split()
)
_PLATFORM_PART_RE = re.compile(r"[A-Za-z0-9_-]+\Z")  # containerd's grammar of each part
# What BuildKit annotates the attestation manifests of an index with: not a platform's image.
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"
BUILDER_INSPECT_ARGV = ("docker", "buildx", "inspect")  # the current builder, its platforms among it
# A --builder: a docker context's name (docker's rule, one character fewer) or a buildx builder's.
BUILDER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}\Z")
PROBE_TIMEOUT = 30  # seconds a builder has to answer whether it is still there, after a failure on it
NO_ENGINE_HINT = "the Docker engine is not running: start it or point DOCKER_HOST at one"
# The registry's HTTP API: every manifest media type (indexes first), and how
# the client waits and retries.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_MEDIA_TYPES = frozenset(MANIFEST_MEDIA_TYPES[:2])
_MEDIA_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"  # RFC 6838's restricted-name
MEDIA_TYPE_RE = re.compile(rf"{_MEDIA_NAME}/{_MEDIA_NAME}\Z")
REGISTRY_TIMEOUT = 30  # seconds, to connect and for each read of one request
REGISTRY_DEADLINE = 120  # seconds for one request in all, its redirects and whole answer included
REGISTRY_ATTEMPTS = 4  # in all, for a request answered 429 or 5xx or whose connection dropped
RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))
RETRY_AFTER_MAX = 30.0  # seconds; a longer Retry-After is cut to this
# The most bytes read of an answer: a manifest or an index (distribution's limit, which
# containerd's nearly is), an image config and a token server's answer (containers/image's),
# and any other body, such as an error's, of which only this much is kept (containerd's).
MANIFEST_LIMIT = 4 << 20
CONFIG_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20
ERROR_BODY_LIMIT = 64000
HELPER_TIMEOUT = 60  # seconds a credential helper has to answer (it may refresh a token first)
HELPER_LIMIT = 1 << 20  # bytes a credential helper may print in all (its answer is a few hundred)
# docker's per-registry TLS folders (HOST[:PORT]/ca.crt); the variable points elsewhere (tests).
CERTS_D = "/etc/docker/certs.d"
DOCKER_CONFIG_LIMIT = 4 << 20  # bytes of docker's config.json (a few KiB): a FIFO or a device is none
# OpenSSL's reasons for a TLS hello answered in plain HTTP: a loopback registry then gets HTTP.
NOT_TLS_REASONS = frozenset(
    (
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
    )
)
CERTS_D_ENV = "MANAGE_IMAGES_CERTS_D"
DOCKER_HUB_CREDENTIALS = "https://index.docker.io/v1/"  # Docker Hub's key in config.json
CLIENT_ID = "manage_images.py"  # the OAuth2 client_id of the refresh-token grant
USER_AGENT = f"manage_images.py/{__version__}"
# --progress, after buildx: `auto` is `tty` on a terminal (TERM not dumb), else `plain`.
PROGRESS_CHOICES = ("auto", "tty", "plain", "quiet")
LOGS_NAME = "manage_images-logs"  # in the git directory, beside the lock: one folder per run
RUN_FOLDER_RE = re.compile(r"\d{8}T\d{6}Z-\d+(?:-\d+)?\Z")  # a run's folder of logs; only these are pruned
KEEP_RUNS = 5  # runs whose logs are kept, this one included
DURATIONS_NAME = "durations.json"  # beside the runs' folders: each image's last step durations
DURATIONS_MAX_BYTES = 1 << 20  # a bigger durations.json is none the tool wrote
DURATION_MAX = 7 * 24 * 3600.0  # seconds; a longer step is no record of one
TAIL_LINES = 20  # lines of a failed image's log shown under the summary
REDRAW_SECONDS = 0.5  # the terminal view is redrawn at most this often
_ESCAPE_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a terminal control sequence (colour, cursor)
# Text from outside the tool (a registry, a token server, a credential helper, a build's
# output) is data: how much of it is kept, and what replaces a credential found in it.
OUTSIDE_TEXT_MAX = 300  # characters of a registry's, token server's or helper's own words
OUTPUT_LINE_MAX = 8192  # characters of one line of a command's output (the rest is dropped)
ERROR_MAX = 4000  # characters of an error's line, whatever it quotes
SECRET_MIN = 4  # shorter credentials would blank ordinary words and digests, and guard nothing
SECRET_PART = 20  # characters: this much of a credential (a server may quote it cut) is one too
# How part of one is found: windows of 12 characters looked up every 8 characters of a
# run see any part of 12 + 8 - 1 <= SECRET_PART characters, at an eighth of the cost.
_WINDOW, _STRIDE = 12, 8
REDACTED = "***"
# A run of the characters tokens, base64 and URL-encoded text are made of: where part of a
# credential may be.
_TOKEN_RUN_RE = re.compile(rf"(?<![\w+/=.~%-])[A-Za-z0-9+/=_.~%-]{{{SECRET_PART},}}")
# What a terminal acts on, in 7-bit and 8-bit (C1) forms: a CSI sequence (cursor moves,
# erasing, colours); an OSC, DCS, SOS, PM or APC string up to BEL or ST (window titles,
# hyperlinks, clipboard writes); any other ESC sequence, or a lone ESC.
_SEQUENCE_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# Characters that move the cursor, erase or reorder what is shown: the C0 controls but
# tab and newline, DEL, the C1 controls, Unicode's line separators and bidi controls.
_MORE_CONTROLS = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL_RE = re.compile(rf"[\x00-\x08\x0b-\x1f{_MORE_CONTROLS}]")
# At an output boundary a carriage return that ends a line (a CRLF file in a diff) is harmless.
_UNPRINTABLE_RE = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f{_MORE_CONTROLS}]|\r(?!\n|\Z)")
# The label each build gets: the digest of the image's inputs (see `inputs_digest`), so
# the registry answers, with the config it serves for a pin, whether a build would
# change anything. A new INPUTS_VERSION makes every older label differ.
INPUTS_LABEL = "org.iree.manage-images.inputs"
INPUTS_VERSION = 1
# Go's unicode.IsSpace, what strings.TrimSpace removes (str.strip would also remove \x1c-\x1f).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)
GO_REGEXP_META = frozenset(".+()|{}$")  # what moby's patternmatcher escapes for Go's regexp
SCAN_LINE_MAX = 64 * 1024  # bufio.Scanner's token size: docker fails on a longer .dockerignore line
_PINNED_SOURCE_RE = re.compile(r"@sha256:[0-9a-f]{64}\Z")
# A parser directive at the top of a Dockerfile (`# syntax=IMAGE`).
_DIRECTIVE_RE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\S.*?)\s*\Z")
# An ADD source docker fetches itself: its bytes are not in the context.
_REMOTE_SOURCE_RE = re.compile(r"(?:[a-z][a-z0-9+.-]*://|git@)", re.I)

T = TypeVar("T")

if TYPE_CHECKING:  # imported where used, so --help and --graph start fast
    import ast
    import concurrent.futures
    import email.message
    import http.client
    import ipaddress
    import socket
    import ssl
    import subprocess
    import urllib.error
    import urllib.request


# ---------------------------------------------------------------------------
# Errors, and the helpers that format what they show.


class Secrets:
    """The credentials in use in this process (passwords, their base64 forms, tokens), each in
    every form a server could echo it in (see `secret_forms`).

    Process-wide by nature, as CHILDREN is: whichever thread or client learned a credential,
    every path out of the tool (the consoles, the logs, the report, an error's text) must
    remove it. The registry client adds what it obtains; `main` starts each run with none.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: tuple[str, ...] = ()

    def add(self, *secrets: object) -> None:
        """Adds each credential of `secrets` that is text (a token server's answer may hold anything)."""
        with self._lock:
            texts = [secret for secret in secrets if isinstance(secret, str)]
            found = set(self._forms).union(*(secret_forms(secret) for secret in texts))
            self._forms = tuple(sorted(found, key=lambda form: (-len(form), form)))

    def forms(self) -> tuple[str, ...]:
        """Every form of every credential, longest first (so a longer form goes before its part)."""
        return self._forms

    def reset(self) -> None:
        with self._lock:
            self._forms = ()


SECRETS = Secrets()


class ManageImagesError(Exception):
    """A failure the user can act on; `main` prints it as one line and exits with `returncode`.

    Its text is safe to show wherever it goes, whatever outside text it quotes: one line
    (a line break in it shown as `\\n`), no credential in use, no control character, at
    most ERROR_MAX characters."""

    returncode = 1

    def __str__(self) -> str:
        text = super().__str__().replace("\r", "\\r").replace("\n", "\\n")
        return cut(printable(text, SECRETS.forms()), ERROR_MAX)


class UsageError(ManageImagesError):
    """Bad input found after parsing (a revision git does not know): exit 2, as argparse's errors."""

    returncode = 2


class CommandError(ManageImagesError):
    """A command exited non-zero; its exit code becomes ours."""

    def __init__(self, argv: Sequence[str], returncode: int, hint: str = "") -> None:
        self.argv = tuple(argv)
        # A command killed by signal N exits, as a shell reports it, with 128 + N.
        self.returncode = 128 - returncode if returncode < 0 else returncode
        if returncode < 0:
            hint = ", ".join(filter(None, [f"killed by {_signal_name(-returncode)}", hint]))
        super().__init__(
            f"Command failed with exit code {self.returncode}: `{format_command(argv)}`"
            + (f" ({hint})" if hint else "")
        )


class BuilderFault(ManageImagesError):
    """An image failed because its builder (--builder) could no longer be reached: the
    scheduler gives that builder nothing more, and may retry the image on another."""

    def __init__(self, message: str, builder: str, returncode: int = 1) -> None:
        self.builder = builder
        self.returncode = returncode
        super().__init__(message)


class ChangedOnDisk(ManageImagesError):
    """Files changed on disk after their change was computed; none was written."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        super().__init__(
            f"{shown(paths[0])} changed on disk while the tool ran, so its change was not written "
            "(no file was changed for this image); run again once nobody edits it"
        )


class WorkspaceError(ManageImagesError):
    """WORKSPACE cannot be read exactly; carries the line to report."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


def format_command(argv: Sequence[str]) -> str:
    return " ".join(argv)


def counted(number: int, noun: str) -> str:
    """`1 file`, `3 files`: a count and its noun, in the right number."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def shown(text: str) -> str:
    """`text` safe to print: bytes of a file name that are not UTF-8 appear as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and `...` when it is longer."""
    return text if len(text) <= limit else f"{text[: max(limit - 3, 0)]}..."


def secret_forms(secret: str) -> set[str]:
    """A credential as text may carry it: as it is, JSON-escaped, URL-encoded (a form or a
    query), and as an output boundary shows it; none when it is shorter than SECRET_MIN."""
    import json
    import urllib.parse

    if len(secret) < SECRET_MIN:
        return set()
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        printable(secret),
    }
    return {form for form in forms if len(form) >= SECRET_MIN}


def basic_credentials(username: str, password: str) -> str:
    """The base64 of `user:password`: Basic auth's header value, config.json's `auth`."""
    import base64

    return base64.b64encode(f"{username}:{password}".encode()).decode()


def without_secrets(text: str, secrets: Sequence[str]) -> str:
    """`text` with each of `secrets` (longest first) replaced by REDACTED, and then each
    run of SECRET_PART characters or more that any of them holds (a token quoted cut)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    parts = secret_parts(tuple(secrets))
    return _TOKEN_RUN_RE.sub(lambda match: _without_parts(match.group(), parts), text) if parts else text


@functools.lru_cache(maxsize=8)
def secret_parts(secrets: tuple[str, ...]) -> frozenset[str]:
    """Every _WINDOW characters in a row of those of `secrets` at least SECRET_PART long."""
    return frozenset(
        secret[start : start + _WINDOW]
        for secret in secrets
        if len(secret) >= SECRET_PART
        for start in range(len(secret) - _WINDOW + 1)
    )


def _without_parts(run: str, parts: frozenset[str]) -> str:
    """`run` with every stretch that `parts` cover replaced by REDACTED: each window found
    (looked up every _STRIDE characters) grows to all the windows around it that are parts."""
    covered: list[tuple[int, int]] = []
    last, probe = len(run) - _WINDOW, 0
    while probe <= last:
        if run[probe : probe + _WINDOW] in parts:
            start = end = probe
            while start > 0 and run[start - 1 : start - 1 + _WINDOW] in parts:
                start -= 1
            while end < last and run[end + 1 : end + 1 + _WINDOW] in parts:
                end += 1
            covered.append((start, end + _WINDOW))
            probe = end + 1
        elif probe < last:
            probe = min(probe + _STRIDE, last)
        else:
            break
    for start, stop in reversed(covered):
        run = f"{run[:start]}{REDACTED}{run[stop:]}"
    return run


def outside_text(text: str, secrets: Sequence[str] = (), limit: int = OUTSIDE_TEXT_MAX) -> str:
    """Text from outside (a registry, a token server, a credential helper, a command's
    output) as the tool may show it: on one line, every escape sequence and control
    character removed (after carriage returns, only what a terminal would show: the
    text after the last one), every form of `secrets` replaced, cut to `limit` characters.
    Secrets go before the cut, so a cut never leaves part of one."""
    if "\n" in text or "\r" in text:
        text = " ".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
    if _CONTROL_RE.search(text):  # every sequence starts with one (ESC, or a C1 control)
        text = _CONTROL_RE.sub("", _SEQUENCE_RE.sub("", text))
    return cut(without_secrets(text, secrets), limit)


def printable(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` as an output boundary writes it (a console, a log, the report): every control
    character but tab, newline and a line's closing carriage return shown as an escape
    (`\\x1b`), bytes that are not UTF-8 too, and every form of `secrets` replaced. What
    quoted outside text is had it removed already: this is the last line of defence."""
    text = shown(text)
    if _UNPRINTABLE_RE.search(text):
        text = _UNPRINTABLE_RE.sub(lambda match: match.group().encode("unicode_escape").decode(), text)
    return without_secrets(text, secrets)


def unexpected(error: BaseException, evidence: str = "") -> str:
    """The one line for an error the tool did not foresee (a bug); `evidence` is the file
    holding its traceback, or why there is none."""
    where = f"with {evidence}, which holds its traceback" if evidence else "with the command you ran"
    return f"unexpected {type(error).__name__}: {error}. This is a bug: please report it {where}"


# ---------------------------------------------------------------------------
# Records: small frozen values passed between the parts below.

Status = Literal["done", "failed", "skipped", "not started"]
FindingKind = Literal[
    "malformed",
    "ambiguous",
    "duplicate",
    "unknown-image",
    "unlisted",
    "stale",
    "workspace",
    "dockerfile",
    "unsafe-path",
    "sparse",
    "missing",
    "not-served",
    "drift",
    "not-re-pinned",
    "unpinned",
    "unreferenced",
    "binary",
    "encoding",
    "assume-unchanged",
    "submodule",
    "platforms",
    "pin-platforms",
]


class Finding(NamedTuple):
    """One disagreement `--check` reports, as `path:line: message`."""

    path: str
    line: int
    message: str
    kind: FindingKind = "dockerfile"

    def __str__(self) -> str:
        return f"{shown(self.path)}:{self.line}: {self.message}"


class ProdDigest(NamedTuple):
    """A line of prod_digests.txt."""

    line: int
    url: str
    digest: str


class RbeRule(NamedTuple):
    """An `rbe_autoconfig(...)` call in WORKSPACE.

    `url` is `registry/repository` when both are plain string literals, ""
    when the rule names no registry (Google's default image), None when it
    cannot be told; `digest_span` is the byte span of the `digest` literal,
    quotes included; `problem` says why the rule cannot be rewritten exactly.
    """

    line: int
    url: str | None
    digest: str | None
    digest_line: int
    digest_span: tuple[int, int] | None
    problem: str = ""
    problem_line: int = 0


class ParentRef(NamedTuple):
    """An image a Dockerfile takes from the registry."""

    line: int
    instruction: str  # FROM, COPY --from or RUN --mount
    ref: str  # as written
    image: str
    digest: str  # what follows `@`, or "" when the parent is not pinned


class Steps(NamedTuple):
    """The steps asked for, run for each image in this order."""

    pull: bool = False
    build: bool = False
    push: bool = False
    update_references: bool = False

    def any(self) -> bool:
        return self.pull or self.build or self.push or self.update_references

    def names(self) -> list[str]:
        return [name for name in self._fields if getattr(self, name)]


class BuildOptions(NamedTuple):
    """How the images of a run are built: one field per build flag, named as the flag's
    `dest`, so `from_arguments` reads them all. A flag docker takes as it is adds a field
    here, its argument in `_add_step_arguments`, and its argv in `options_argv` (which
    also makes it one of each image's inputs); every field but verify_pinned (also a mode
    of its own) needs --build."""

    build_arg: tuple[str, ...] = ()  # NAME=VALUE, in the order given
    attestations: bool = False  # keep BuildKit's default attestations
    cache_from_pinned: bool = False  # --cache-from the pinned image
    verify_pinned: bool = False  # compare each build with its pin, before any push
    skip_unchanged: bool = False  # build only the images whose inputs are not their pin's

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> BuildOptions:
        values = [getattr(args, name) for name in cls._fields]
        return cls._make(tuple(value) if isinstance(value, list) else value for value in values)

    def asked(self) -> list[str]:
        """The flags given, as the user wrote them (`--attestations`)."""
        return [f"--{name}" for name in self._fields if getattr(self, name)]


class ImageResult(NamedTuple):
    """What happened to one image in a run."""

    image: str
    result: Status
    seconds: float = 0.0
    digest: str | None = None
    error: ManageImagesError | None = None
    finished: int = 0  # completion rank, to find the first failure
    builder: str = ""  # the --builder it ran on ("": the engine DOCKER_HOST or the current context names)
    waited: float = 0.0  # seconds it was ready and waited for a free builder
    retried: str = ""  # why its first attempt failed, when a builder fault made it start again


Splice = tuple[int, int, bytes]  # (start, end, piece): old[start:end] becomes piece


class FileChange(NamedTuple):
    """A file's new content: its old bytes with `splices` put in.

    A digest rewrite puts 64 new hex digits in place of 64 old ones, so a big
    file's new content never has to be built in memory: it is copied and
    patched (see `patchable`). Other edits are one splice of the whole file.
    """

    path: str  # relative to the repository root
    old: bytes
    splices: tuple[Splice, ...]  # sorted, not overlapping

    @classmethod
    def whole(cls, path: str, old: bytes, new: bytes) -> FileChange:
        """The change that puts `new` in place of all of `old`."""
        return cls(path, old, ((0, len(old), new),))

    def new(self) -> bytes:
        return apply_splices(self.old, self.splices)

    def changed(self) -> bool:
        return any(piece != _slice(self.old, start, end) for start, end, piece in self.splices)

    def patchable(self) -> bool:
        """True if every splice is small and keeps its length (so every byte keeps its offset)."""
        return all(end - start == len(piece) <= BLOCK for start, end, piece in self.splices)


class TreeScan(NamedTuple):
    """What one run knows of the tracked files that name the registry.

    Found once per run: a rewrite changes digests, never which files name an
    image.
    """

    candidates: tuple[str, ...]  # tracked regular files naming the registry: read and rewritten
    skipped: tuple[tuple[str, str], ...]  # (path, why) tracked files naming it that are never touched
    hidden: tuple[str, ...]  # outside the sparse checkout, yet naming it in the index
    tracked: frozenset[str]  # which of WORKSPACE and prod_digests.txt git tracks
    problems: Mapping[str, str]  # why WORKSPACE or prod_digests.txt, present, cannot be used
    untouched: tuple[Finding, ...] = ()  # tracked files naming it that are named, never rewritten
    workspace: str = WORKSPACE_PATH  # the file Bazel reads: WORKSPACE.bazel when it exists
    heads: Mapping[str, bytes] = {}  # candidate -> its bytes, for one shorter than BINARY_PEEK (read whole)
    found: Mapping[str, list[Reference]] = {}  # candidate of `heads` -> its references (`find_references`)


class Reference(NamedTuple):
    """`REGISTRY/NAME[:TAG][@sha256:X]` in a file (see `reference_scanner`):
    where it starts and ends, NAME, TAG (None without one), and, when it is
    pinned, where X starts and X (any run of letters and digits)."""

    start: int  # of the whole reference
    hex_start: int  # -1 when it is not pinned
    name: str
    hexdigits: bytes  # b"" when it is not pinned
    tag: bytes | None = None
    end: int = 0

    def pinned(self) -> bool:
        return self.hex_start >= 0

    def well_formed(self) -> bool:
        return self.pinned() and bool(HEX64_BYTES_RE.match(self.hexdigits))


class Presubmit(NamedTuple):
    """--changed_since: the revision, and the images whose build context changed since it."""

    ref: str
    changed: tuple[str, ...]


class Schedule(NamedTuple):
    """How many images run at a time, and whether a failure stops new starts."""

    jobs: int = 1  # per builder
    keep_going: bool = False
    builders: tuple[str, ...] = ()  # --builder, in the order given: () for the engine docker finds

    def slots(self) -> int:
        return self.jobs * max(len(self.builders), 1)


Identity = Literal["identical", "same content", "differs"]


class Engine(NamedTuple):
    """The Docker engine a run builds with, found once per run (`check_docker`)."""

    client: str  # the docker CLI's version
    server: str  # the engine's version
    builder: Literal["classic", "buildkit"]
    store: str  # "containerd" (the containerd image store) or the graph driver, e.g. "overlay2"
    buildx: str = ""  # the buildx plugin's version when `docker build` runs through it
    platform: str = "linux/amd64"  # what it builds for (os/architecture)
    driver: str = "docker"  # buildx's driver: any other keeps no image store the tool can ask
    buildx_path: str = ""  # the buildx plugin docker runs (`docker info` names it), when known
    context: str = ""  # the docker context docker uses (`docker info` names it), when known

    def loads(self) -> bool:
        """Whether what it builds is in an image store docker commands reach (see `Builder`)."""
        return self.driver == "docker"

    def registry_cache(self) -> bool:
        """Whether its builds export their cache to the registry, beside the image (see `cache_export`)."""
        return self.containerd() or not self.loads()

    def describe(self) -> str:
        if self.builder == "classic":
            builder = "the classic builder"
        else:
            builder = f"BuildKit (buildx {self.buildx})" if self.buildx else "BuildKit (built into the CLI)"
        if not self.loads():
            return (
                f"BuildKit {self.server} through buildx {self.buildx}'s {self.driver} driver (no image store)"
            )
        store = "the containerd image store" if self.containerd() else f"the {self.store} image store"
        return f"Docker {self.server} (client {self.client}), {builder}, {store}"

    def containerd(self) -> bool:
        return self.store == "containerd"

    def as_json(self) -> dict[str, object]:
        return {
            "builder": self.builder,
            "store": self.store,
            "buildx": self.buildx or None,
            "client": self.client,
            "server": self.server,
            **({} if self.loads() else {"driver": self.driver}),
        }


class Builder(NamedTuple):
    """Where a run builds (--builder NAME), named as buildx's --builder and docker's --context
    name it.

    A docker context (which buildx also lists as a builder of its `docker` driver) runs
    every docker command of the images built there: build, push, pull, tag, inspect. A
    buildx builder of another driver (docker-container, kubernetes, remote) runs the
    builds alone and keeps no image store docker commands reach: each image is pushed as
    it is built, and every question about it goes to the registry."""

    name: str
    context: str = ""  # the docker context its docker commands go to; "" for another driver
    driver: str = "docker"  # buildx's driver
    endpoint: str = ""  # where it is (the context's host, the builder's nodes), for the lines naming it

    def loads(self) -> bool:
        return self.driver == "docker"

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with every docker command sent to this builder: docker's DOCKER_CONTEXT and
        buildx's BUILDX_BUILDER (so no builder `docker buildx use` chose takes its builds).
        DOCKER_HOST goes, as docker's --context flag overrides it (the variable would not),
        except for the context `default`, which is what DOCKER_HOST names. A builder of
        another driver builds through buildx alone: DOCKER_BUILDKIT=0 would send `docker
        build` to the legacy builder, which knows none of its flags."""
        env = {**base, "BUILDX_BUILDER": self.name}
        if not self.loads():
            env.pop("DOCKER_BUILDKIT", None)
        if self.context:
            env["DOCKER_CONTEXT"] = self.context
            if self.context != "default":
                env.pop("DOCKER_HOST", None)
        return env

    def describe(self) -> str:
        if self.context:
            return f"{self.name} (docker context, {self.endpoint or 'its endpoint unknown'})"
        return f"{self.name} (buildx builder, {self.driver} driver{', ' + self.endpoint if self.endpoint else ''})"

    def as_json(self, engine: Engine | None) -> dict[str, object]:
        return {
            "name": self.name,
            "context": self.context or None,
            "driver": self.driver,
            "endpoint": self.endpoint or None,
            "engine": engine.as_json() if engine else None,
        }


class LocalImage(NamedTuple):
    """What the engine says of one local image, for comparing it with what the registry serves."""

    id: str
    config_digest: str | None  # the ID on a graph-driver store; from the build's metadata on containerd
    platform: str  # os/architecture[/variant]
    view: Mapping[str, object]  # see `inspect_view`
    repo_digests: tuple[str, ...]
    # An index (built for several platforms): platform -> (config digest, config), once read
    # (see `saved_configs`); the engine shows the config of its own platform alone.
    configs: Mapping[str, tuple[str, bytes]] | None = None


IgnoreKind = Literal["exact", "prefix", "suffix", "regexp"]


class IgnoreRule(NamedTuple):
    """One pattern of a .dockerignore, as moby's patternmatcher compiles it."""

    pattern: str  # cleaned (filepath.Clean, no leading `/`), without its `!`
    exception: bool  # a `!` line: it includes again what it matches
    kind: IgnoreKind
    regex: re.Pattern[str] | None = None


class ContextEntry(NamedTuple):
    """A file, symbolic link or folder of a build context, as docker sends it."""

    path: str  # relative, `/`-separated; a name's undecodable bytes as surrogate escapes
    kind: Literal["file", "link", "dir", "parent"]  # parent: an excluded folder sent for what it holds
    mode: int  # the permission bits
    payload: str  # a file's sha256, a link's target, "" for a folder


class Inputs(NamedTuple):
    """What one build reads: the digest of its inputs (or why they are not all known), and
    how they compare with its pin's (--skip_unchanged)."""

    digest: str | None  # the label's value (see `inputs_digest`); None when `reason` says why not
    reason: str = ""  # why the inputs are not known, or why the image was built all the same
    built_on: tuple[tuple[str, str], ...] = ()  # (parent, reference) built on in place of its pin
    pin: str | None = None  # the inputs label of the pin, when the registry was asked
    unchanged: bool | None = None  # the pin's inputs are these: not built (None: not asked)

    def as_json(self) -> dict[str, object]:
        return {
            "digest": self.digest,
            "pin": self.pin,
            "unchanged": self.unchanged,
            "reason": self.reason or None,
        }


class BuildPlan(NamedTuple):
    """One `docker build` (see `build_argv`): what it builds, from where, and how."""

    url: str
    tag: str
    context: str  # the build context, relative to the work tree
    cache_from: tuple[str, ...] = ()
    cache_to: str = ""
    metadata: str = ""  # buildx writes the build's metadata (digests) to this file
    push: bool = False  # buildx pushes the image as it builds it
    label: str | None = None  # the inputs label's value (see `build_label`); None: no --label
    dockerfile: str = ""  # --file: the Dockerfile rebased on parents this run built (classic builder)
    contexts: tuple[tuple[str, str], ...] = ()  # buildx: (REF as written, what to build on in its place)
    platforms: tuple[str, ...] = ()  # --platform: what it builds for (IMAGE_PLATFORMS); (): the engine's
    output: str = ""  # buildx --output (`type=cacheonly`: a build that only exports its cache)


class Built(NamedTuple):
    """What an image's build and push gave, for pinning it."""

    output: tuple[str, ...] = ()  # the build's last lines
    metadata: str = ""  # its metadata file, if it wrote one
    pushed: str | None = None  # the digest the registry serves for the push
    local: LocalImage | None = None  # what the engine holds, when a step asked
    cache_to: str = ""  # the build's --cache-to
    pushed_by_build: bool = False  # the build pushed it: no `docker push`
    unchanged: bool = False  # its inputs are its pin's: not built, not pushed, the pin kept
    label: str | None = None  # the inputs label it was built with (None: none, or not built)
    # An index: (platform, the digest of the registry cache its own build wrote, "" if none).
    platform_caches: tuple[tuple[str, str], ...] = ()


class Settings(NamedTuple):
    """What a run works on, fixed before anything runs."""

    registry: str
    tag: str
    dry_run: bool
    root: Path  # the top of the git work tree, always resolved
    env: Mapping[str, str] | None = None  # for every command; None: ours


class PlatformConflict(NamedTuple):
    """A child built for platforms its parent is not built for (the subset rule)."""

    child: str
    parent: str
    missing: tuple[str, ...]  # the child's platforms the parent lacks
    offered: tuple[str, ...]  # the parent's platforms; () when it has no entry and the engine is unknown


# ---------------------------------------------------------------------------
# The pure core. The graph: validation, closure and order.


def validate_graph(graph: Mapping[str, Sequence[str]]) -> None:
    """Raises ManageImagesError if `graph` names an unknown image or has a cycle."""
    for image, dependencies in graph.items():
        unknown = [dependency for dependency in dependencies if dependency not in graph]
        if unknown:
            raise ManageImagesError(
                f"IMAGES_TO_DEPENDENCIES: {image} depends on {', '.join(unknown)}, "
                "which is not an image; add it to the graph or fix the dependency"
            )
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1]
        raise ManageImagesError(
            f"IMAGES_TO_DEPENDENCIES has a cycle: {' -> '.join(reversed(cycle))}"
        ) from None


def dependents_map(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Maps each image to the images built from it, walking `graph` alphabetically."""
    dependents: dict[str, list[str]] = {image: [] for image in sorted(graph)}
    for image in sorted(graph):
        for dependency in graph[image]:
            dependents[dependency].append(image)
    return dependents


def ordered_images_to_process(images: Sequence[str], graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The selected images and all their dependents, each after its parents.

    Reproduces the original tool's order exactly: requested images are taken
    from last to first, dependents are walked depth-first, and the post-order
    is reversed.
    """
    dependents = dependents_map(graph)
    visited: set[str] = set()
    post_order: list[str] = []

    def visit(image: str) -> None:
        if image in visited:
            return
        for dependent in dependents[image]:
            visit(dependent)
        visited.add(image)
        post_order.append(image)

    for image in reversed(images):
        visit(image)
    post_order.reverse()
    return post_order


def expand_selection(names: Sequence[str], graph: Mapping[str, Sequence[str]]) -> list[str]:
    """`all` stands for every image, sorted, as in the original."""
    if "all" in names:
        return sorted(graph)
    return list(names)


def images_help(graph: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(graph)) + " or `all`"


def unknown_image(name: str, graph: Mapping[str, Sequence[str]]) -> str:
    """The one line for an --image the graph does not have: the closest names, or every name."""
    import difflib

    names = [*sorted(graph), "all"]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        options = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
        return f"no image named {name!r}; did you mean {options}?"
    return f"no image named {name!r}; the images are {', '.join(names[:-1])}, or all"


def plan_line(selected: Sequence[str], images: Sequence[str]) -> str:
    """The run's plan, before the first image: the original's line when the
    selection brought in dependent images, and only the list when it did not."""
    if any(image not in selected for image in images):
        return f"Also processing dependent images. Will process: {list(images)}"
    return f"Will process: {list(images)}"


# ---------------------------------------------------------------------------
# Platforms: their grammar, the subset rule, and what an engine can build.


def normalize_platform(os_name: str, architecture: str, variant: str = "") -> str:
    """OS/ARCH[/VARIANT] in the one form containerd compares platforms in (its
    platforms.Normalize): lower case, `x86_64` is amd64, `aarch64` and `arm64/v8` are
    arm64, `arm` is arm/v7, `armhf` arm/v7, `armel` arm/v6, `i386` 386. Nothing is
    refused here: an index may describe a platform no one knows."""
    os_name, architecture, variant = os_name.lower(), architecture.lower(), variant.lower()
    os_name = "darwin" if os_name == "macos" else os_name
    if architecture == "i386":
        architecture, variant = "386", ""
    elif architecture in ("x86_64", "x86-64", "amd64"):
        architecture, variant = "amd64", "" if variant == "v1" else variant
    elif architecture in ("aarch64", "arm64"):
        architecture = "arm64"
        variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9"}.get(variant, variant)
    elif architecture in ("armhf", "armel"):
        architecture, variant = "arm", "v7" if architecture == "armhf" else "v6"
    elif architecture == "arm":
        variant = {"": "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
    return "/".join(part for part in (os_name, architecture, variant) if part)


def parse_platform(text: str) -> str:
    """A platform as a user writes it (`linux/arm64`, `linux/arm64/v8`, `arm64`), in the
    form of `normalize_platform`; ValueError saying what is wrong.

    Read as containerd's platforms.Parse reads it (an architecture alone is for
    linux), but stricter where its reading would depend on the machine or hide a
    typo: an OS alone (containerd adds the host's architecture) and an OS or an
    architecture it does not know are refused.
    """
    parts = text.split("/")
    example = "write OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64"
    if len(parts) > 3 or not all(_PLATFORM_PART_RE.match(part) for part in parts):
        raise ValueError(f"{text!r} is not a platform: {example}")
    if len(parts) == 1 and parts[0].lower() in KNOWN_OS:
        raise ValueError(f"{text!r} names an operating system alone: {example}")
    platform = normalize_platform(*(["linux", *parts] if len(parts) == 1 else parts))
    os_name, architecture = platform.split("/")[:2]
    if os_name not in KNOWN_OS:
        raise ValueError(f"{text!r}: {os_name!r} is no operating system containerd knows; {example}")
    if architecture not in KNOWN_ARCHITECTURES:
        raise ValueError(
            f"{text!r}: {architecture!r} is no architecture containerd knows (amd64, arm64, arm, 386, "
            f"ppc64le, s390x, riscv64, ...); {example}"
        )
    return platform


def parse_platforms(text: str) -> tuple[str, ...]:
    """A comma-separated list of platforms (--platform), each as `parse_platform` reads it,
    in order; ValueError for a bad one or one listed twice (`linux/arm64` and `linux/arm64/v8`)."""
    found: dict[str, str] = {}  # platform -> as written
    for item in (item.strip() for item in text.split(",")):
        platform = parse_platform(item)
        if platform in found:
            raise ValueError(f"{found[platform]!r} and {item!r} are both {platform}: list it once")
        found[platform] = item
    return tuple(found)


def validate_platforms(
    platforms: Mapping[str, Sequence[str]], graph: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """IMAGE_PLATFORMS with each platform in canonical form; ManageImagesError for an entry
    naming no image of `graph`, listing no platform, or one that is not a platform."""
    canonical = {}
    for image, listed in platforms.items():
        if image not in graph:
            raise ManageImagesError(
                f"IMAGE_PLATFORMS lists {image}, which is not an image of IMAGES_TO_DEPENDENCIES; "
                "fix the name or add the image to the graph"
            )
        if isinstance(listed, str) or not listed:
            raise ManageImagesError(
                f"IMAGE_PLATFORMS: {image} must list its platforms as a tuple of one or more "
                f'("linux/amd64", "linux/arm64"); to build it for the engine\'s platform, remove its entry'
            )
        try:
            canonical[image] = parse_platforms(",".join(listed))
        except ValueError as error:
            raise ManageImagesError(f"IMAGE_PLATFORMS: {image}: {error}") from None
    return canonical


def run_platforms(
    images: Sequence[str], platforms: Mapping[str, tuple[str, ...]], override: Sequence[str] | None
) -> dict[str, tuple[str, ...]]:
    """What each image is built for in a run: its IMAGE_PLATFORMS entry, or, with
    --platform, that list for every image of the run (images outside it keep theirs)."""
    run = dict(platforms)
    if override:
        run.update(dict.fromkeys(images, tuple(override)))
    return run


def platform_conflicts(
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    platforms: Mapping[str, Sequence[str]],
    engine_platform: str | None = None,
) -> list[PlatformConflict]:
    """Each child among `images` built for a platform one of its parents is not built for.

    An image without an entry in `platforms` is built for `engine_platform`. Without
    an engine (--check) that platform is unknown: a child without an entry is never
    a conflict (the run that builds it checks it), and a child with one conflicts with
    each parent without one, since nothing says that parent exists for those platforms.
    """

    def built_for(image: str) -> tuple[str, ...]:
        listed = tuple(platforms.get(image) or ())
        return listed or ((engine_platform,) if engine_platform else ())

    conflicts = []
    for child in images:
        wanted = built_for(child)
        for parent in graph[child]:
            offered = built_for(parent)
            missing = tuple(platform for platform in wanted if platform not in offered)
            if missing:
                conflicts.append(PlatformConflict(child, parent, missing, offered))
    return conflicts


def conflict_message(conflict: PlatformConflict, platforms: Mapping[str, Sequence[str]]) -> str:
    """The line that names both images of a conflict and the platforms at stake."""
    child, parent, missing = conflict.child, conflict.parent, ", ".join(conflict.missing)
    offered = ", ".join(conflict.offered)
    if child not in platforms:  # only once the engine is known: its platform is the child's
        return (
            f"{child} is built for the engine's platform, {missing} (it has no IMAGE_PLATFORMS entry), but "
            f"its parent {parent} is not ({parent}: {offered}); build it on an engine of one of {parent}'s "
            f"platforms, or list the platforms of {child} in IMAGE_PLATFORMS"
        )
    if parent in platforms:
        return (
            f"{child} is built for {missing} but its parent {parent} is not ({parent}: {offered}); add "
            f"{missing} to {parent} in IMAGE_PLATFORMS, or drop it from {child}"
        )
    alone = f"the engine's platform, {conflict.offered[0]}" if conflict.offered else "the engine's platform"
    return (
        f"{child} is built for {missing} but its parent {parent} has no IMAGE_PLATFORMS entry, so it is "
        f"built for {alone} alone; list {missing} for {parent} too"
    )


def builder_platforms(inspect_output: str) -> tuple[str, ...]:
    """The platforms `docker buildx inspect` says the builder's nodes build, canonical,
    each once (the `*` of a platform the builder was configured with dropped)."""
    found: dict[str, None] = {}
    for line in inspect_output.splitlines():
        key, colon, value = line.partition(":")
        if not colon or key.strip() != "Platforms":
            continue
        for item in value.split(","):
            parts = item.strip().rstrip("*").split("/")
            if 2 <= len(parts) <= 3 and all(parts):
                found[normalize_platform(*parts)] = None
    return tuple(found)


def first_run_line(dockerfile: bytes) -> int:
    """The line of the Dockerfile's first RUN instruction, or 0: without one, a build for
    a foreign platform runs nothing of it, so it needs no emulation."""
    for line, text in dockerfile_instructions(dockerfile):
        if text.split(None, 1)[0].upper() == "RUN":
            return line
    return 0


def build_refusal(
    image: str, wanted: Sequence[str], engine: Engine, offered: Sequence[str], run_line: int
) -> str:
    """Why `engine` cannot build IMAGE for `wanted` (canonical platforms), or "".

    `offered` is what the builder lists (`builder_platforms`): the engine's own,
    and those its binfmt handlers (QEMU) can run. `run_line` is the line of the
    Dockerfile's first RUN (`first_run_line`): without one, a foreign platform
    needs no emulation. The engine's own platform alone is always possible.
    """
    own = normalize_platform(*engine.platform.split("/"))
    listed = ", ".join(wanted)
    if not wanted or list(wanted) == [own]:
        return ""
    several = len(wanted) > 1
    what = f"several platforms ({listed})" if several else f"{listed}, not the engine's {own}"
    if engine.builder == "classic":
        return (
            f"{image} is to be built for {what}, and the classic builder builds for the engine's platform "
            "only: build with BuildKit on the containerd image store (install docker-buildx, and leave "
            "DOCKER_BUILDKIT unset or 1)"
        )
    if not engine.buildx:
        return f"{image} is to be built for {what}, and BuildKit built into this docker CLI cannot: install docker-buildx"
    if several and engine.loads() and not engine.containerd():
        return (
            f"{image} is to be built for {what}, and BuildKit's docker driver on the {engine.store} image "
            'store cannot build an index: turn on the containerd image store ("features": '
            '{"containerd-snapshotter": true} in the engine\'s daemon.json), or build on a builder of '
            "another driver (docker buildx create --name NAME --driver docker-container, then --builder NAME)"
        )
    missing = [platform for platform in wanted if platform not in offered]
    if missing and run_line:
        architecture = missing[0].split("/")[1]
        return (
            f"{image} is to be built for {missing[0]} and runs commands (RUN on line {run_line} of "
            f"{DOCKER_DIR}/{image}/Dockerfile), but the builder cannot run {missing[0]} programs (it lists "
            f"{', '.join(offered) or 'no platform'}): install QEMU's binfmt handlers (apt-get install "
            f"qemu-user-static binfmt-support, or docker run --privileged --rm tonistiigi/binfmt --install "
            f"{architecture}), or build on a {missing[0]} machine"
        )
    return ""


def index_entries(document: object) -> list[tuple[str, str]]:
    """(platform, digest) of each image an index holds, canonical; the attestation
    manifests BuildKit adds (`unknown/unknown`, annotated as such) left out."""
    entries = document.get("manifests") if isinstance(document, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        annotations = entry.get("annotations")
        if (
            isinstance(annotations, dict)
            and annotations.get(REFERENCE_TYPE_ANNOTATION) == ATTESTATION_MANIFEST
        ):
            continue
        described = entry.get("platform")
        parts = (
            [str(described.get(key) or "") for key in ("os", "architecture", "variant")]
            if isinstance(described, dict)
            else []
        )
        platform = normalize_platform(*parts) if parts and all(parts[:2]) else "unknown"
        # What the registry wrote is shown in findings and reports: as any outside text.
        found.append((outside_text(platform), str(entry.get("digest") or "")))
    return found


def pin_kind(manifest: Manifest) -> dict[str, object]:
    """What a pin is, from its manifest alone (--check --json): `index` or `manifest`, the
    media type the registry served, and an index's platforms (attestations left out, counted
    apart). An image manifest's platform is in its config, another request: null here."""
    try:
        document = registry_json(manifest.data)
    except ValueError:
        document = None
    index = manifest.media_type in INDEX_MEDIA_TYPES or (
        isinstance(document, dict) and "manifests" in document
    )
    entries = index_entries(document) if index else []
    listed = document.get("manifests") if isinstance(document, dict) else None
    return {
        "kind": "index" if index else "manifest",
        "media_type": manifest.media_type,
        "platforms": [platform for platform, _ in entries] if index else None,
        "attestations": len(listed) - len(entries) if index and isinstance(listed, list) else 0,
    }


def platform_gaps(wanted: Sequence[str], held: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """What an index holding images for `held` lacks of `wanted`, what it holds beyond
    it, and what it holds twice."""
    missing = [platform for platform in wanted if platform not in held]
    extra = [platform for platform in dict.fromkeys(held) if platform not in wanted]
    twice = [platform for platform in dict.fromkeys(held) if held.count(platform) > 1]
    return missing, extra, twice


def config_platform(config: bytes) -> str:
    """The platform an image config says its image is for, canonical ("unknown" if it says none)."""
    try:
        document = registry_json(config)
    except ValueError:
        document = None
    parts = (
        [str(document.get(key) or "") for key in ("os", "architecture", "variant")]
        if isinstance(document, dict)
        else []
    )
    return normalize_platform(*parts) if parts and all(parts[:2]) else "unknown"


def layout_configs(blobs: Mapping[str, bytes]) -> dict[str, tuple[str, bytes]]:
    """platform -> (config digest, config) of each image in the OCI layout `docker save REF`
    writes (`blobs`: its `index.json` and `blobs/sha256/HEX` files, by name). The layout
    names one image: an index (each of its images, by the platform it lists them for; the
    attestations left out) or an image manifest (by its config's platform). ValueError for
    a layout that is not that, or a blob that is missing or not its digest's bytes."""

    def blob(digest: str) -> bytes:
        data = blobs.get("blobs/" + digest.replace(":", "/", 1)) if DIGEST_RE.match(digest) else None
        if data is None or body_digest(data) != digest:
            raise ValueError(f"no blob {digest[:80]!r} in the layout")
        return data

    def config_of(manifest: str) -> tuple[str, bytes]:
        document = registry_json(blob(manifest))
        config = document.get("config") if isinstance(document, dict) else None
        digest = str(config.get("digest") or "") if isinstance(config, dict) else ""
        return digest, blob(digest)

    top = registry_json(blobs.get("index.json", b""))
    entries = top.get("manifests") if isinstance(top, dict) else None
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise ValueError("its index.json does not name one image")
    target = str(entries[0].get("digest") or "")
    document = registry_json(blob(target))
    if isinstance(document, dict) and "manifests" in document:
        found: dict[str, tuple[str, bytes]] = {}
        for platform, digest in index_entries(document):
            found.setdefault(platform, config_of(digest))
        return found
    digest, config = config_of(target)
    return {config_platform(config): (digest, config)}


def config_identity(
    built: tuple[str, bytes] | None, pinned: tuple[str, bytes] | None, same: Callable[[bytes, bytes], bool]
) -> Identity:
    """How one platform's image config compares with the pin's for that platform: `identical`
    (one digest), `same content` (as `same` says), or `differs` (also when either has none)."""
    if built is None or pinned is None:
        return "differs"
    if built[0] == pinned[0]:
        return "identical"
    return "same content" if same(built[1], pinned[1]) else "differs"


def same_view(one: bytes, other: bytes) -> bool:
    """Two image configs hold what `config_view` compares: layers, runtime config, creation
    time, author, platform (what --verify_pinned compares of a single image too)."""
    try:
        first, second = registry_json(one), registry_json(other)
    except ValueError:
        return False
    if not isinstance(first, dict) or not isinstance(second, dict):
        return False
    return config_view(first) == config_view(second)


def dropped_platforms(held: Sequence[str], platforms: Sequence[str]) -> dict[str, Identity]:
    """`differs` for each platform a pin holds (`held`) that the image is no longer built for:
    a build of `platforms` does not make that pin, so the pin is neither kept nor reproduced."""
    return {platform: "differs" for platform in held if platform not in platforms}


def overall_identity(identities: Mapping[str, Identity]) -> Identity:
    """An index compared platform by platform: it differs if one platform does, and is
    identical only if every platform is."""
    values = set(identities.values())
    if not values or "differs" in values:
        return "differs"
    return "identical" if values == {"identical"} else "same content"


# ---------------------------------------------------------------------------
# The pure core. Builders (--builder): what docker and buildx say of each, and what a
# run may ask of them.


def inspect_fields(output: str, key: str) -> list[str]:
    """The values of the `KEY: VALUE` lines of `docker buildx inspect`'s output, in order."""
    found = []
    for line in output.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() == key and value.strip():
            found.append(value.strip())
    return found


def context_endpoint(output: str) -> str:
    """The docker endpoint (its host) `docker context inspect NAME` shows as JSON, or ""."""
    import json

    try:
        host = json.loads(output)[0]["Endpoints"]["docker"]["Host"]
    except (ValueError, TypeError, KeyError, IndexError):
        return ""
    return str(host)


def endpoint_shown(endpoint: str) -> tuple[str, tuple[str, ...]]:
    """An endpoint (a context's host, a builder's node: `tcp://USER:PASSWORD@HOST:PORT`) as
    the tool may show it, without its user information, and the credentials it held (the
    password as written and decoded, and the whole `USER:PASSWORD`): docker uses them, the
    tool never prints them."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(endpoint)
    except ValueError:
        return outside_text(endpoint), ()
    userinfo, at, where = parts.netloc.rpartition("@")
    if not at:
        return outside_text(endpoint), ()
    password = userinfo.partition(":")[2]
    secrets = tuple(dict.fromkeys(filter(None, (password, urllib.parse.unquote(password), userinfo))))
    shown = urllib.parse.urlunsplit(parts._replace(netloc=where))
    return outside_text(shown, secrets if password else ()), secrets if password else ()


def buildx_builder(name: str, output: str) -> Builder:
    """NAME as `docker buildx inspect NAME` describes it. One of the `docker` driver is a
    docker context (buildx cannot make another: "additional instances of driver docker
    cannot be created"), its node's endpoint; one of another driver builds alone."""
    driver = next(iter(inspect_fields(output, "Driver")), "unknown")
    endpoints = inspect_fields(output, "Endpoint")
    if driver == "docker":
        return Builder(name, endpoints[0] if endpoints else name, driver)
    return Builder(name, "", driver, ", ".join(endpoint_shown(endpoint)[0] for endpoint in endpoints))


def buildx_engine(output: str, buildx: str, driver: str) -> Engine:
    """What a builder of another driver than `docker` builds with, from `docker buildx
    inspect --bootstrap NAME`: BuildKit through buildx, no image store, and the platform its
    first node lists first (its own)."""
    versions = inspect_fields(output, "BuildKit version") or inspect_fields(output, "Buildkit")
    platforms = builder_platforms(output)
    own = platforms[0] if platforms else Engine._field_defaults["platform"]
    return Engine("", versions[0] if versions else "?", "buildkit", "none", buildx or "?", own, driver)


def pool_refusal(names: Sequence[str], steps: Steps) -> str:
    """Why the --builder NAMES cannot serve a run of `steps`, before anything is asked, or ""."""
    twice = [name for name in dict.fromkeys(names) if names.count(name) > 1]
    if twice:
        return f"--builder {twice[0]} is given twice: name each builder once"
    bad = [name for name in names if not BUILDER_NAME_RE.match(name)]
    if bad:
        return f"--builder {bad[0]!r} is no docker context or buildx builder name (letters, digits, _.+-)"
    missing = [f"--{step}" for step in ("build", "push", "update_references") if not getattr(steps, step)]
    if len(names) > 1 and missing:
        return (
            f"{len(names)} builders need {' '.join(missing)}: each parent is pushed and pinned before its "
            "children start, on any builder, from the digest the registry serves"
        )
    if names and not steps.any():
        return "--builder goes with the steps (--pull, --build, --push, --update_references): the other modes use no engine"
    return ""


def builder_refusal(builder: Builder, steps: Steps, options: BuildOptions) -> str:
    """Why BUILDER cannot serve this run, or "": a builder that keeps no image store docker
    commands reach pushes every image as it builds it, so a run on it builds and pushes and
    asks nothing of a local image."""
    if builder.loads() or (steps.build and steps.push and not steps.pull and not options.verify_pinned):
        return ""
    return (
        f"builder {builder.describe()} keeps no image store the tool can reach: a run on it needs --build "
        "and --push (each image pushed as it is built, its digest from the registry) and takes no --pull "
        "or --verify_pinned (use a docker context for those)"
    )


def platform_mismatch(engines: Mapping[str, Engine | None]) -> str:
    """Why builders that build for different platforms cannot form one pool, or "": a child
    built on one from its parent's digest would build on another platform's image."""
    found = {name: engine.platform for name, engine in engines.items() if engine is not None}
    first = next(iter(found), "")
    other = next((name for name, platform in found.items() if platform != found[first]), "")
    if not other:
        return ""
    return (
        f"builders {first} ({found[first]}) and {other} ({found[other]}) build for different platforms: "
        "the builders of one run must build for the same one, as each image is built on its parents'"
    )


# ---------------------------------------------------------------------------
# References: matching and rewriting, on bytes so every other byte survives.


def image_url(registry: str, image: str) -> str:
    return f"{registry}/{image}"


@functools.lru_cache(maxsize=8)  # asked once per file: a thousand times in a scan
def reference_scanner(registry: str) -> re.Pattern[bytes]:
    """The one grammar of a reference to an image under `registry`, in
    Docker's: `REGISTRY/NAME`, an optional `:TAG`, an optional `@sha256:X`,
    with NAME, TAG and X as groups. Every reader of references goes through
    `find_references`, which adds the boundaries. It starts with a literal,
    so the regex engine skips ahead to each occurrence of the registry (a
    look-behind first would be tried at every byte)."""
    return re.compile(
        re.escape(f"{registry}/".encode())
        + b"("
        + _PATH_COMPONENT.encode()
        + b")(?::("
        + _TAG.encode()
        + rb"))?(?:@sha256:([0-9A-Za-z]*))?"
    )


def find_references(data: bytes, registry: str) -> Iterator[Reference]:
    """Every reference to an image under `registry` in `data`, as a whole token:
    pinned (`NAME@sha256:X`, `NAME:TAG@sha256:X`) or not (`NAME:TAG`, `NAME`).

    An empty X (`@sha256:...`, `@sha256:<digest>`) is a placeholder in prose,
    not a reference. A match that is part of a longer host or path
    (`mirror.gcr.io/...`, `x/gcr.io/...`) is not one either; `//` before it
    stays allowed, for URLs. An unpinned one ends where the grammar does: not
    before a longer path (`NAME/x`), a tag that is not one (`NAME:$TAG`) or
    another digest (`NAME@sha512:...`).
    """
    scanner = reference_scanner(registry)
    prefix = f"{registry}/".encode()
    # bytes.find skips ahead to each occurrence of the registry far faster than
    # the regex engine's own scan; the regex then reads one candidate.
    start = data.find(prefix)
    while start >= 0:
        match = scanner.match(data, start)
        reference = _reference(data, match) if match else None
        if reference:
            yield reference
            start = data.find(prefix, reference.end)
        else:
            start = data.find(prefix, start + 1)


def _reference(data: bytes, match: re.Match[bytes]) -> Reference | None:
    """The reference a scanner match is, or None if its boundaries make it none."""
    start, end = match.span()
    if start and data[start - 1] in _REFERENCE_PART and data[start - 2 : start] != b"//":
        return None
    name, tag, hexdigits = match.groups()
    if hexdigits is not None:
        return Reference(start, match.start(3), name.decode(), hexdigits, tag, end) if hexdigits else None
    if data[end : end + 1] and data[end] in _UNPINNED_CONTINUES:
        return None
    return Reference(start, -1, name.decode(), b"", tag, end)


def pinned_names(references: Iterable[Reference]) -> set[str]:
    """The NAMEs that `references` pin by digest (well formed or not): the ones a rewrite looks at."""
    return {reference.name for reference in references if reference.pinned()}


def parse_reference(text: str, registry: str) -> Reference | None:
    """`text` as one whole reference under `registry`, or None if it is not exactly one."""
    found = list(find_references(text.encode(), registry))
    if len(found) == 1 and (found[0].start, found[0].end) == (0, len(text.encode())):
        return found[0]
    return None


def digest_hexes(registry: str, digests: Mapping[str, str]) -> dict[str, bytes]:
    """image -> the 64 hex digits of its digest, each checked first."""
    return {
        image: check_digest(digest, image_url(registry, image))[len("sha256:") :].encode()
        for image, digest in digests.items()
    }


def reference_splices(references: Iterable[Reference], hexes: Mapping[str, bytes]) -> list[Splice]:
    """The splices that point each well-formed one of `references` to an image
    of `hexes` at its digits; none for a reference that already holds them."""
    return [
        (reference.hex_start, reference.hex_start + len(reference.hexdigits), hexes[reference.name])
        for reference in references
        if reference.name in hexes
        and reference.hexdigits != hexes[reference.name]  # before the regex: most already hold them
        and reference.well_formed()  # never an unpinned one
    ]


def apply_splices(data: bytes, splices: Sequence[Splice]) -> bytes:
    """`data` with each (start, end, piece) of `splices` (sorted, not overlapping) in place of data[start:end].

    The new bytes are joined from views of the old ones: one copy in all.
    """
    if not splices:
        return data
    if len(splices) == 1 and splices[0][:2] == (0, len(data)):
        return splices[0][2]
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    done = 0
    for start, end, piece in splices:
        pieces += [view[done:start], piece]
        done = end
    pieces.append(view[done:])
    return b"".join(pieces)


def _slice(data: bytes, start: int, end: int) -> bytes:
    """data[start:end], without a copy when that is all of it."""
    return data if (start, end) == (0, len(data)) else data[start:end]


def new_blocks(change: FileChange, size: int) -> Iterator[tuple[int, bytes | bytearray]]:
    """Every `size`-byte block of a patchable change's new content, in order,
    as (offset, bytes): built from the old bytes one block at a time."""
    old, splices, index = change.old, change.splices, 0
    for offset in range(0, len(old), size):
        end = min(offset + size, len(old))
        block: bytes | bytearray = old[offset:end]
        if index < len(splices) and splices[index][0] < end:
            block = bytearray(block)
            while index < len(splices) and splices[index][0] < end:
                start, stop, piece = splices[index]
                low, high = max(start, offset), min(stop, end)
                block[low - offset : high - offset] = piece[low - start : high - start]
                if stop > end:  # it goes on in the next block
                    break
                index += 1
        yield offset, block


def check_digest(digest: str, what: str) -> str:
    if not DIGEST_RE.match(digest):
        raise ManageImagesError(
            f"refusing the digest {digest!r} for {what}: expected sha256: and 64 "
            "lowercase hex digits; no file was changed"
        )
    return digest


def line_at(data: bytes, offset: int) -> int:
    """The 1-based line number of byte `offset` in `data`."""
    return data.count(b"\n", 0, offset) + 1


class LineCounter:
    """Line numbers of increasing offsets in `data`, counted on from the last one.

    Finding the lines of all matches in a file costs one pass over it,
    not one pass per match.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0
        self._line = 1

    def line_at(self, offset: int) -> int:
        if offset < self._offset:
            self._offset, self._line = 0, 1
        self._line += self._data.count(b"\n", self._offset, offset)
        self._offset = offset
        return self._line


# ---------------------------------------------------------------------------
# WORKSPACE, read as Starlark with Python's own parser.


def _line_starts(data: bytes) -> list[int]:
    """Byte offset of each line, splitting where Python's tokenizer does."""
    return [0] + [match.end() for match in _NEWLINE_RE.finditer(data)]


def _literal_span(node: ast.expr, starts: Sequence[int], data: bytes) -> tuple[int, int] | None:
    """The byte span of `node` if it is one plain string literal, else None."""
    import ast

    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return None
    if node.end_lineno != node.lineno or node.end_col_offset is None:
        return None
    # ast's column offsets are UTF-8 byte offsets within the line.
    begin = starts[node.lineno - 1] + node.col_offset
    end = starts[node.lineno - 1] + node.end_col_offset
    return (begin, end) if _PLAIN_STRING_RE.match(data[begin:end]) else None


def _rbe_rule(call: ast.Call, starts: Sequence[int], data: bytes) -> RbeRule:
    values: dict[str, str | None] = {}
    spans: dict[str, tuple[int, int] | None] = {}
    lines: dict[str, int] = {}
    problems: list[tuple[int, str]] = []
    for keyword in call.keywords:
        if keyword.arg is None:
            problems.append(
                (keyword.value.lineno, "rbe_autoconfig takes **kwargs, so its fields cannot be read exactly")
            )
        elif keyword.arg in ("registry", "repository", "digest"):
            span = _literal_span(keyword.value, starts, data)
            spans[keyword.arg] = span
            lines[keyword.arg] = keyword.value.lineno
            values[keyword.arg] = keyword.value.value if span else None  # type: ignore[attr-defined]
            if span is None:
                problems.append(
                    (
                        keyword.value.lineno,
                        f"rbe_autoconfig `{keyword.arg}` is not a plain string literal; "
                        f'write it as {keyword.arg} = "..." so the tool can read it exactly',
                    )
                )
    registry, repository = values.get("registry"), values.get("repository")
    url: str | None = f"{registry}/{repository}"
    if "registry" not in spans or "repository" not in spans:
        url = ""  # Google's default toolchain image, never ours
    elif registry is None or repository is None:
        url = None  # not plain literals: it may or may not be ours
    if "digest" not in values and not problems:
        problems.append(
            (call.lineno, 'rbe_autoconfig has no `digest = "sha256:..."`; add one so the tool can pin it')
        )
    return RbeRule(
        line=call.lineno,
        url=url,
        digest=values.get("digest"),
        digest_line=lines.get("digest", call.lineno),
        digest_span=spans.get("digest"),
        problem=problems[0][1] if problems else "",
        problem_line=problems[0][0] if problems else 0,
    )


def parse_rbe_rules(data: bytes, path: str = WORKSPACE_PATH) -> list[RbeRule]:
    """Every `rbe_autoconfig(...)` call in a WORKSPACE file, read as Starlark.

    Starlark's syntax is Python's, so `ast` finds calls, keywords and string
    literals exactly: comments and strings that merely mention the rule are
    never taken for it. A file that does not parse raises WorkspaceError.
    """
    import ast

    try:
        tree = ast.parse(data.decode("utf-8"), filename=path)
    except UnicodeDecodeError as error:
        raise WorkspaceError(
            path, line_at(data, error.start), "is not UTF-8, so it cannot be parsed"
        ) from None
    except SyntaxError as error:
        raise WorkspaceError(
            path, error.lineno or 1, f"does not parse as Starlark ({error.msg}); fix the syntax"
        ) from None
    except ValueError as error:  # a NUL byte, on some Python versions
        raise WorkspaceError(path, 1, f"does not parse as Starlark ({error})") from None
    starts = _line_starts(data)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "rbe_autoconfig"
    ]
    return [_rbe_rule(call, starts, data) for call in sorted(calls, key=lambda call: call.lineno)]


def rules_naming(rules: Sequence[RbeRule], url: str, path: str = WORKSPACE_PATH) -> list[RbeRule]:
    """The rules that pin `url`; WorkspaceError for one that might but cannot be read exactly."""
    for rule in rules:
        if rule.problem and rule.url in (url, None):
            raise WorkspaceError(path, rule.problem_line, rule.problem)
    return [rule for rule in rules if rule.url == url]


def rewrite_workspace(data: bytes, url: str, digest: str, path: str = WORKSPACE_PATH) -> tuple[bytes, int]:
    """Sets the `digest` literal of each rbe_autoconfig rule that names `url`.

    Returns the new bytes and how many rules named `url`. Only the bytes of
    that string literal change, keeping its quote character; other rules and
    other keywords (`base_container_digest`) are left alone.
    """
    check_digest(digest, url)
    rules = rules_naming(parse_rbe_rules(data, path), url, path)
    for rule in sorted(rules, key=lambda rule: rule.digest_span or (0, 0), reverse=True):
        assert rule.digest_span is not None  # rules_naming refuses a rule without one
        begin, end = rule.digest_span
        quote = data[begin : begin + 1]
        data = data[:begin] + quote + digest.encode() + quote + data[end:]
    return data, len(rules)


def workspace_loads(data: bytes, path: str) -> list[str]:
    """The files of this repository that a WORKSPACE or .bzl file at `path`
    loads: `load("//pkg:defs.bzl", ...)` is `pkg/defs.bzl`, `load(":defs.bzl", ...)`
    is beside `path`. Another repository's labels (`@name//...`) are left out,
    and so is everything when the file does not parse."""
    import ast

    try:
        tree = ast.parse(data.decode("utf-8"), filename=path)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return []
    loaded = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load"):
            continue
        if (
            not node.args
            or not isinstance(node.args[0], ast.Constant)
            or not isinstance(node.args[0].value, str)
        ):
            continue
        label = node.args[0].value.removeprefix("@")
        if label.startswith("//"):
            package, _, name = label[2:].partition(":")
        elif label.startswith(":"):
            package, name = path.rpartition("/")[0], label[1:]
        else:
            continue
        if name:
            loaded.append("/".join(part for part in (package, name) if part))
    return loaded


def workspace_findings(
    data: bytes, url: str, pinned: str | None, prod_path: str, path: str = WORKSPACE_PATH
) -> list[Finding]:
    """What is wrong with the rbe_autoconfig rule that pins `url`."""
    try:
        rules = rules_naming(parse_rbe_rules(data, path), url, path)
    except WorkspaceError as error:
        return [Finding(error.path, error.line, error.message, "workspace")]
    findings = []
    for rule in rules:
        digest = rule.digest or ""
        if not DIGEST_RE.match(digest):
            message = f"rbe_autoconfig digest {digest!r} is not a well-formed digest (sha256: and 64 lowercase hex digits)"
            findings.append(Finding(path, rule.digest_line, message, "malformed"))
        elif pinned is None:
            message = f"rbe_autoconfig pins {url}, which is not listed in {prod_path}"
            findings.append(Finding(path, rule.digest_line, message, "unlisted"))
        elif digest != pinned:
            message = f"rbe_autoconfig digest {digest[:19]} differs from {prod_path} ({pinned[:19]})"
            findings.append(Finding(path, rule.digest_line, message, "stale"))
    return findings


# ---------------------------------------------------------------------------
# prod_digests.txt: one parser, its findings, and appending a line.


def parse_prod_digests(
    data: bytes, path: str = PROD_DIGESTS_PATH, registry: str = "REGISTRY"
) -> tuple[list[ProdDigest], list[Finding]]:
    """The entries of prod_digests.txt (the first line of each URL), and what is wrong with its lines.

    Findings of kind `malformed` and `ambiguous` (one URL, two digests) make
    the file unusable for rewriting; see `usable_prod_digests`.
    """
    entries: list[ProdDigest] = []
    first: dict[str, ProdDigest] = {}
    findings = []
    # A UTF-8 byte-order mark (some editors save one) stays in the file and is no part of its first line.
    lines = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    if lines.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\0" in lines:
        message = "holds NUL bytes (it is UTF-16 text, or binary); save it as plain UTF-8 text"
        return [], [Finding(path, line_at(data, max(data.find(b"\0"), 0)), message, "malformed")]
    for number, raw in enumerate(lines.splitlines(), start=1):
        problem = encoding_problem(raw)
        if problem:
            findings.append(
                Finding(path, number, f"{problem}; save the file as plain UTF-8 text", "malformed")
            )
            continue
        text = raw.decode().strip()
        url, at, digest = text.partition("@")
        if not at or not REGISTRY_RE.match(url) or not DIGEST_RE.match(digest):
            findings.append(
                Finding(
                    path,
                    number,
                    f"malformed line {text!r}: expected {registry}/NAME@sha256:<64 lowercase hex>",
                    "malformed",
                )
            )
            continue
        earlier = first.get(url)
        if earlier is None:
            first[url] = ProdDigest(number, url, digest)
            entries.append(first[url])
        elif earlier.digest != digest:
            findings.append(
                Finding(
                    path,
                    number,
                    f"{url} is listed again with another digest than on {path}:{earlier.line}, "
                    "so its pin is ambiguous; keep the right line only",
                    "ambiguous",
                )
            )
        else:
            findings.append(
                Finding(path, number, f"duplicate line for {url} (first on line {earlier.line})", "duplicate")
            )
    return entries, findings


def encoding_problem(line: bytes) -> str:
    """Why a line of prod_digests.txt is not plain UTF-8 text, or ""."""
    try:
        text = line.decode()
    except UnicodeDecodeError as error:
        return f"the line is not UTF-8 (byte {error.start + 1} is {line[error.start]:#04x})"
    if "\ufeff" in text:
        return "the line holds a byte-order mark (U+FEFF), allowed only at the very start of the file"
    return ""


def registries_named(data: bytes) -> list[str]:
    """The registries the well-formed lines of prod_digests.txt name (the REGISTRY of
    each REGISTRY/NAME@DIGEST), each once, in the file's order."""
    entries, _ = parse_prod_digests(data)
    return list(dict.fromkeys(entry.url.rpartition("/")[0] for entry in entries if "/" in entry.url))


def registry_to_use(given: str | None, named: Sequence[str]) -> tuple[str, str]:
    """The registry a run works on, and a warning for the user ("" if none).

    The tree is the source of truth: without --registry, the one registry its
    prod_digests.txt names (DEFAULT_REGISTRY when it names none, or several).
    A --registry the tree does not name is used as asked, with a warning,
    since the tree's own references are then left alone.
    """
    if given is None:
        if len(named) > 1:
            return DEFAULT_REGISTRY, (
                f"warning: {PROD_DIGESTS_PATH} names {len(named)} registries ({', '.join(named)}); "
                f"using {DEFAULT_REGISTRY}: pass --registry to choose"
            )
        return (named[0] if named else DEFAULT_REGISTRY), ""
    if named and given not in named:
        return given, (
            f"warning: --registry {given} is not the registry {PROD_DIGESTS_PATH} names "
            f"({', '.join(named)}): the tree's references to {named[0]} are left alone; "
            "leave --registry out to work on them"
        )
    return given, ""


def registry_too_long(registry: str, graph: Mapping[str, Sequence[str]]) -> str:
    """Why REGISTRY/NAME would be longer than Docker accepts for some image, or ""."""
    longest = image_url(registry, max(graph, key=len))
    if len(longest) <= MAX_REFERENCE_NAME:
        return ""
    return (
        f"{longest!r} has {len(longest)} characters and Docker accepts at most "
        f"{MAX_REFERENCE_NAME} in a repository name"
    )


def pins_by_name(entries: Iterable[ProdDigest], registry: str) -> dict[str, str]:
    """image -> digest, for the entries under `registry`."""
    prefix = f"{registry}/"
    return {entry.url[len(prefix) :]: entry.digest for entry in entries if entry.url.startswith(prefix)}


def usable_prod_digests(data: bytes, path: str = PROD_DIGESTS_PATH) -> list[ProdDigest]:
    """The entries of prod_digests.txt; ManageImagesError for a malformed or ambiguous line."""
    entries, findings = parse_prod_digests(data, path)
    for finding in findings:
        if finding.kind in ("malformed", "ambiguous"):
            raise ManageImagesError(f"{finding}; fix it and run again")
    return entries


def prod_digest_findings(
    data: bytes, path: str, registry: str, graph: Mapping[str, Sequence[str]]
) -> tuple[dict[str, str], list[Finding]]:
    """The digest of each image listed in prod_digests.txt, and what is wrong with it.

    An image outside the graph keeps its digest, so references to it are
    still compared with its line.
    """
    entries, findings = parse_prod_digests(data, path, registry)
    digests: dict[str, str] = {}
    for entry in entries:
        name = entry.url[len(registry) + 1 :] if entry.url.startswith(f"{registry}/") else ""
        if name not in graph:
            findings.append(
                Finding(
                    path,
                    entry.line,
                    f"{entry.url} is not an image of the graph under {registry}",
                    "unknown-image",
                )
            )
        if name:
            digests[name] = entry.digest
    return digests, sorted(findings, key=lambda finding: finding.line)


def append_prod_digest(data: bytes, url: str, digest: str) -> bytes:
    """`data` with `url@digest` as a new last line, keeping the file's line ends."""
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    if data and not data.endswith(b"\n"):
        data += newline
    return data + f"{url}@{digest}".encode() + newline


# ---------------------------------------------------------------------------
# Dockerfiles and references against the graph and prod_digests.txt (--check).


def images_in_paths(paths: Iterable[str], graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The images whose build context `build_tools/docker/NAME/` holds one of `paths`."""
    prefix = f"{DOCKER_DIR}/"
    names = {
        path[len(prefix) :].split("/", 1)[0]
        for path in paths
        if path.startswith(prefix) and "/" in path[len(prefix) :]
    }
    return sorted(name for name in names if name in graph)


def repin_findings(
    changed: Iterable[str], pinned: Mapping[str, str], pinned_at_ref: Mapping[str, str], ref: str
) -> list[Finding]:
    """An image whose build context changed since `ref` must be pinned anew:
    its prod_digests.txt line must differ from the one at `ref`."""
    findings = []
    for image in changed:
        advice = f"run manage_images.py --image {image} --build --push --update_references"
        path = f"{DOCKER_DIR}/{image}/Dockerfile"
        if image not in pinned:
            message = f"{image} changed since {ref} but has no line in {PROD_DIGESTS_PATH}; {advice}"
            findings.append(Finding(path, 1, message, "not-re-pinned"))
        elif pinned[image] == pinned_at_ref.get(image):
            message = f"{image} changed since {ref} but is still pinned to {pinned[image]}; {advice}"
            findings.append(Finding(path, 1, message, "not-re-pinned"))
    return findings


def dockerfile_instructions(data: bytes) -> list[tuple[int, str]]:
    """Each instruction with its first line, continuations joined, comments dropped."""
    instructions: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and parts):
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1] if continued else stripped)
        if not continued:
            text = " ".join(part for part in parts if part)
            if text:
                instructions.append((start, text))
            parts = []
    if parts:
        instructions.append((start, " ".join(parts)))
    return instructions


def _instruction_sources(keyword: str, words: Sequence[str]) -> list[tuple[str, str]]:
    """The (instruction, image) pairs an instruction takes from elsewhere."""
    if keyword == "FROM":
        arguments = [word for word in words if not word.startswith("--")]
        return [("FROM", arguments[0])] if arguments else []
    if keyword in ("COPY", "ADD"):
        return [("COPY --from", word[len("--from=") :]) for word in words if word.startswith("--from=")]
    if keyword == "RUN":
        return [
            ("RUN --mount", option[len("from=") :])
            for word in words
            if word.startswith("--mount=")
            for option in word[len("--mount=") :].split(",")
            if option.startswith("from=")
        ]
    return []


def registry_parents(data: bytes, registry: str) -> list[ParentRef]:
    """The images a Dockerfile pulls from `registry` (FROM, COPY --from, RUN --mount from=).

    A stage name never holds a `/`, so a source under `registry/` is always
    an image, never an earlier stage.
    """
    parents: list[ParentRef] = []
    for line, text in dockerfile_instructions(data):
        keyword, *words = text.split()
        for instruction, source in _instruction_sources(keyword.upper(), words):
            if source.startswith(f"{registry}/"):
                reference = parse_reference(source, registry)
                if reference is None:
                    # No reference by the grammar (`NAME:$TAG`): unpinned, named as far as it reads.
                    name = re.match(_PATH_COMPONENT, source[len(registry) + 1 :])
                    parents.append(ParentRef(line, instruction, source, name.group() if name else source, ""))
                else:
                    digest = f"sha256:{reference.hexdigits.decode()}" if reference.pinned() else ""
                    parents.append(ParentRef(line, instruction, source, reference.name, digest))
    return parents


def dockerfile_findings(
    image: str, path: str, data: bytes | None, graph: Mapping[str, Sequence[str]], registry: str
) -> list[Finding]:
    """What is wrong with one image's Dockerfile against the graph."""
    if data is None:
        return [
            Finding(
                path, 1, f"{image} has no Dockerfile: add one or remove {image} from IMAGES_TO_DEPENDENCIES"
            )
        ]
    findings = []
    parents = registry_parents(data, registry)
    used = set()
    for parent in parents:
        used.add(parent.image)
        if parent.image not in graph:
            findings.append(
                Finding(
                    path,
                    parent.line,
                    f"{parent.instruction} {parent.ref}: {parent.image} is not an image of the graph",
                )
            )
        elif parent.image not in graph[image]:
            findings.append(
                Finding(
                    path,
                    parent.line,
                    f"{parent.instruction} {parent.image}: IMAGES_TO_DEPENDENCIES does not list {parent.image} "
                    f"as a dependency of {image}; add it there or stop using it",
                )
            )
        if not DIGEST_RE.match(parent.digest):
            findings.append(
                Finding(
                    path,
                    parent.line,
                    f"{parent.instruction} {parent.ref} is not pinned by digest, so --update_references "
                    f"cannot see it; use {image_url(registry, parent.image)}@sha256:<digest>",
                )
            )
    for dependency in graph[image]:
        if dependency not in used:
            findings.append(
                Finding(
                    path,
                    1,
                    f"IMAGES_TO_DEPENDENCIES says {image} depends on {dependency}, but this Dockerfile "
                    f"never uses {image_url(registry, dependency)}; fix the graph or the Dockerfile",
                )
            )
    return findings


def is_documentation(path: str) -> bool:
    """Documentation names images unpinned on purpose (`*.md`, `*.rst`, text files but prod_digests.txt)."""
    return path.endswith(DOCUMENTATION_SUFFIXES) and path != PROD_DIGESTS_PATH


def may_be_allowed_unpinned(path: str, references: Iterable[Reference]) -> bool:
    """True if `references` (a file's) name an image unpinned where only git's attribute
    `manage-images-allow-unpinned` can allow it: outside documentation."""
    return not is_documentation(path) and any(not reference.pinned() for reference in references)


def reference_findings(
    files: Mapping[str, bytes],
    registry: str,
    images: Iterable[str],
    prod_digests: Mapping[str, str],
    prod_path: str,
    graph: Mapping[str, Sequence[str]],
    found: Mapping[str, Sequence[Reference]] | None = None,
    covered: Container[tuple[str, str]] = (),
    workspace: str = WORKSPACE_PATH,
) -> list[Finding]:
    """References (and the rule in `workspace`, the WORKSPACE Bazel reads) that
    disagree with prod_digests.txt, and references that are not pinned; `found`
    holds each file's references if the caller has them already, `covered` the
    (path, reference) of each unpinned Dockerfile parent, a finding of its own
    already.

    With every image selected, references to images outside the graph are
    compared too, so a stale pin of an image the graph dropped is seen.
    """
    selected = set(images)
    everything = selected == set(graph)
    findings = []
    for path in sorted(files):
        data = files[path]
        if path == prod_path:
            continue
        lines = LineCounter(data)
        references = found[path] if found is not None else find_references(data, registry)
        for reference in references:
            name = reference.name
            if name not in selected and not (everything and name not in graph):
                continue
            if reference.pinned():
                finding = _reference_finding(registry, reference, prod_digests, prod_path, graph)
            elif (path, data[reference.start : reference.end].decode()) in covered:
                continue
            else:
                finding = _unpinned_finding(path, data, reference, registry)
            if finding:
                findings.append(Finding(path, lines.line_at(reference.start), *finding))
        if path == workspace and RBE_IMAGE in selected:
            url = image_url(registry, RBE_IMAGE)
            findings += workspace_findings(data, url, prod_digests.get(RBE_IMAGE), prod_path, workspace)
    return findings


def _shown_name(registry: str, reference: Reference) -> str:
    """`REGISTRY/NAME`, or `REGISTRY/NAME:TAG` for a tagged reference."""
    tag = f":{reference.tag.decode()}" if reference.tag is not None else ""
    return f"{registry}/{reference.name}{tag}"


def _reference_finding(
    registry: str,
    reference: Reference,
    prod_digests: Mapping[str, str],
    prod_path: str,
    graph: Mapping[str, Sequence[str]],
) -> tuple[str, FindingKind] | None:
    """What is wrong with one pinned reference (message and kind), or None. Its tag
    says nothing: the digest alone decides what Docker runs."""
    pinned = prod_digests.get(reference.name, "")
    if pinned[len("sha256:") :].encode() == reference.hexdigits and DIGEST_RE.match(pinned):
        return None  # the common case, told before any message is made
    name, hexdigits, shown_name = (
        reference.name,
        reference.hexdigits.decode(),
        _shown_name(registry, reference),
    )
    if not reference.well_formed():
        return (
            f"{shown_name}@sha256:{hexdigits} is not a well-formed digest (sha256: and 64 lowercase hex digits)",
            "malformed",
        )
    if name not in prod_digests:
        return f"{shown_name} is referenced but not listed in {prod_path}", "unlisted"
    if prod_digests[name] != f"sha256:{hexdigits}":
        outside = "" if name in graph else f" ({name} is not an image of the graph)"
        message = (
            f"{shown_name} is pinned to sha256:{hexdigits[:12]}, but {prod_path} "
            f"says {prod_digests[name][:19]}{outside}"
        )
        return message, "stale"
    return None


def _unpinned_finding(
    path: str, data: bytes, reference: Reference, registry: str
) -> tuple[str, FindingKind] | None:
    """An unpinned reference is a finding, except in documentation or on a line marked as allowed."""
    if is_documentation(path):
        return None
    line_start = data.rfind(b"\n", 0, reference.start) + 1
    line_end = data.find(b"\n", reference.end)
    if ALLOW_UNPINNED.encode() in data[line_start : line_end if line_end >= 0 else len(data)]:
        return None
    text = data[reference.start : reference.end].decode()
    message = (
        f"{text} is not pinned by digest; pin it as {image_url(registry, reference.name)}@sha256:<digest> "
        f"or mark the line with a comment `{ALLOW_UNPINNED}`"
    )
    return message, "unpinned"


def referenced_images(
    found: Mapping[str, Sequence[Reference]], workspace: bytes | None, url: str
) -> set[str]:
    """The images that something other than prod_digests.txt or documentation refers to, in any
    form: `found` maps each file to its references; `workspace` pins `url` if a rule names it."""
    names = {
        reference.name
        for path, references in found.items()
        if path != PROD_DIGESTS_PATH and not is_documentation(path)
        for reference in references
    }
    if workspace is not None:
        with contextlib.suppress(WorkspaceError):
            if rules_naming(parse_rbe_rules(workspace), url):
                names.add(RBE_IMAGE)
    return names


def checklist_findings(
    images: Iterable[str],
    registry: str,
    prod_digests: Mapping[str, str] | None,
    referenced: Iterable[str],
    dockerfiles: Mapping[str, bytes | None],
) -> list[Finding]:
    """The new-image checklist for each image: a prod_digests.txt line, and a reference outside
    it (unless its Dockerfile says `# manage-images: allow-unreferenced`). `prod_digests` is None
    when the file cannot be read (a finding of its own)."""
    findings = []
    named = set(referenced)
    advice = "manage_images.py --image {} --build --push --update_references"
    for image in images:
        path, url = f"{DOCKER_DIR}/{image}/Dockerfile", image_url(registry, image)
        if prod_digests is not None and image not in prod_digests:
            message = f"{url} has no line in {PROD_DIGESTS_PATH}; run {advice.format(image)}, which adds it"
            findings.append(Finding(path, 1, message, "unlisted"))
        dockerfile = dockerfiles.get(image)
        if image not in named and dockerfile is not None and ALLOW_UNREFERENCED.encode() not in dockerfile:
            message = (
                f"nothing outside {PROD_DIGESTS_PATH} refers to {url} (no Dockerfile builds on it, no CI "
                f"script or WORKSPACE rule runs it): refer to it by digest where it is used, or add a "
                f"comment `# {ALLOW_UNREFERENCED}` to this Dockerfile"
            )
            findings.append(Finding(path, 1, message, "unreferenced"))
    return findings


def folder_findings(folders: Iterable[str], graph: Mapping[str, Sequence[str]]) -> list[Finding]:
    """Every folder of build_tools/docker with a Dockerfile is an image of the graph."""
    return [
        Finding(
            f"{DOCKER_DIR}/{folder}/Dockerfile",
            1,
            f"{folder} has a Dockerfile but is not in IMAGES_TO_DEPENDENCIES: add it there with the "
            "images it is built from, or remove the folder",
            "unknown-image",
        )
        for folder in sorted(folders)
        if folder not in graph
    ]


# ---------------------------------------------------------------------------
# What a build reads: the .dockerignore as docker reads it, the Dockerfile's
# sources, and the one digest of an image's inputs.


def go_clean(path: str) -> str:
    """Go's filepath.Clean on Linux: empty and `.` parts dropped, `..` resolved as far as it goes."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".." or not rooted:
            parts.append(part)
    return ("/" if rooted else "") + "/".join(parts) or "."


def dockerignore_rules(data: bytes) -> tuple[IgnoreRule, ...]:
    """The rules of a .dockerignore, read as moby's ignorefile.ReadAll and
    patternmatcher.New read it: a UTF-8 BOM dropped; a line starting with `#`
    a comment; white space trimmed (Go's); `!` an exception; each pattern
    cleaned with filepath.Clean, its leading `/` dropped, then trimmed and
    cleaned again with its `!`. Raises ValueError for what docker refuses (a
    lone `!`, a malformed pattern, a line too long) and for the few patterns
    this tool cannot match exactly as Go's regexp does."""
    rules = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) >= SCAN_LINE_MAX - 1:
            raise ValueError(f"line {number} is longer than docker reads")
        line = raw.removesuffix(b"\r").decode("utf-8", "surrogateescape")
        line = line.removeprefix("\ufeff") if number == 1 else line
        if line.startswith("#"):
            continue
        line = line.strip(GO_SPACE)
        if not line:
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip(GO_SPACE) if exception else line
        if pattern:
            pattern = go_clean(pattern)
            pattern = pattern[1:] if len(pattern) > 1 and pattern.startswith("/") else pattern
        pattern = go_clean((("!" if exception else "") + pattern).strip(GO_SPACE))
        if pattern == "!":
            raise ValueError(f'line {number}: "!" alone is an illegal exclusion pattern')
        exception = pattern.startswith("!")
        rules.append(ignore_rule(pattern[1:] if exception else pattern, exception, number))
    return tuple(rules)


def ignore_rule(pattern: str, exception: bool, number: int = 0) -> IgnoreRule:
    """The rule of one cleaned pattern, compiled as patternmatcher's Pattern.compile does:
    `**` at the start, alone at the end, or anywhere (any number of folders), `*` and
    `?` within one name, `\\` escaping the next character, `[...]` a class."""
    if not _glob_well_formed(pattern):
        raise ValueError(f"line {number}: {pattern!r} is not a valid pattern (filepath.Match)")
    regex, at, position = "^", 0, 0
    kind: IgnoreKind = "exact"
    while at < len(pattern):
        char, at = pattern[at], at + 1
        if char == "*" and pattern[at : at + 1] == "*":
            at += 2 if pattern[at + 1 : at + 2] == "/" else 1
            if at < len(pattern):
                regex += "(.*/)?"
            elif kind != "exact":
                regex += ".*"
            kind = (
                "suffix"
                if position == 0
                else "prefix"
                if kind == "exact" and at == len(pattern)
                else "regexp"
            )
        elif char in "*?":
            regex += "[^/]*" if char == "*" else "[^/]"
            kind = "regexp"
        elif char in GO_REGEXP_META:
            regex += "\\" + char
        elif char == "\\":
            escaped = pattern[at : at + 1]
            if escaped.isalnum() or not escaped.isascii():
                raise ValueError(f"line {number}: {pattern!r} escapes {escaped!r}, which Go reads otherwise")
            regex, kind, at = regex + "\\" + escaped, "regexp", at + 1
        else:
            regex += char
            kind = "regexp" if char in "[]" else kind
        position += 1
    return IgnoreRule(
        pattern, exception, kind, _compiled(regex, pattern, number) if kind == "regexp" else None
    )


def _compiled(regex: str, pattern: str, number: int) -> re.Pattern[str]:
    """`regex` (Go's syntax, as patternmatcher writes it) compiled by Python's re, which
    reads that subset the same way; a POSIX class (`[[:alpha:]]`), which it does not
    know, or what neither compiles, is refused."""
    import warnings

    if re.search(r"\[:[A-Za-z]+:\]", regex):
        raise ValueError(f"line {number}: {pattern!r} uses a POSIX character class")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Python warns of sets like `[[`, which Go reads as Python does
            return re.compile(regex + r"\Z")
    except re.error as error:
        raise ValueError(f"line {number}: {pattern!r} is not a valid pattern ({error})") from None


def _glob_well_formed(pattern: str) -> bool:
    """Whether Go's filepath.Match accepts `pattern` (patternmatcher.New asks it): every
    `\\` escapes a character, every `[` class is closed, and each range is a-b."""
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\":
            if at + 1 >= len(pattern):
                return False
            at += 2
        elif char == "[":
            at = _class_end(pattern, at + 1)
            if at < 0:
                return False
        else:
            at += 1
    return True


def _class_end(pattern: str, at: int) -> int:
    """Where the class whose `[` ends at `at` ends (after its `]`), or -1 if Go refuses it."""
    if pattern[at : at + 1] == "^":
        at += 1
    ranges = 0
    while not (pattern[at : at + 1] == "]" and ranges):
        at = _class_char(pattern, at)
        if at >= 0 and pattern[at] == "-":
            at = _class_char(pattern, at + 1)
        if at < 0:
            return -1
        ranges += 1
    return at + 1


def _class_char(pattern: str, at: int) -> int:
    """After one character of a class at `at` (Go's getEsc), or -1: it must be there, not `-`
    or `]`, an escape must escape something, and more of the pattern must follow."""
    if at >= len(pattern) or pattern[at] in "-]":
        return -1
    if pattern[at] == "\\":
        at += 1
    if at >= len(pattern) or "\udc80" <= pattern[at] <= "\udcff":  # not UTF-8
        return -1
    return at + 1 if at + 1 < len(pattern) else -1


def rule_matches(rule: IgnoreRule, path: str) -> bool:
    """Whether one rule matches `path` itself (patternmatcher's Pattern.match)."""
    if rule.kind == "exact":
        return path == rule.pattern
    if rule.kind == "prefix":
        return path.startswith(rule.pattern[:-2])
    if rule.kind == "suffix":
        suffix = rule.pattern[2:]
        return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
    assert rule.regex is not None
    return rule.regex.match(path) is not None


def ignored(
    rules: Sequence[IgnoreRule], path: str, parent: tuple[bool, ...] = ()
) -> tuple[bool, tuple[bool, ...]]:
    """Whether `path` is excluded, and which rules matched it (for its children), as
    patternmatcher's MatchesUsingParentResults decides: the last rule that matches the path
    or, without `parent` (the rules its folder matched), one of its folders, decides; a rule
    its folder matched matches it too; an exception is tried only on an excluded path."""
    excluded = False
    matched = [False] * len(rules)
    folders = path.split("/")[:-1]
    for index, rule in enumerate(rules):
        match = bool(parent) and parent[index]
        if not match:
            if rule.exception != excluded:
                continue
            match = rule_matches(rule, path)
            if not match and not parent:
                match = any(
                    rule_matches(rule, "/".join(folders[: depth + 1])) for depth in range(len(folders))
                )
        matched[index] = match
        if match:
            excluded = not rule.exception
    return excluded, tuple(matched)


def walks_into(rules: Sequence[IgnoreRule], path: str, builder: str) -> bool:
    """Whether docker still looks inside the excluded folder `path` for what an exception
    includes again. The classic builder's CLI (moby's archive.TarWithOptions) does when an
    exception starts with `path/`; BuildKit (fsutil's filter) also with that exception's
    trailing `/*` or `/**` left out, and always when an exception has a wildcard elsewhere."""
    exceptions = [rule.pattern for rule in rules if rule.exception]
    if builder == "buildkit":
        if any(_has_glob(pattern) for pattern in exceptions):
            return True
        exceptions = [_without_trailing_glob(pattern) for pattern in exceptions]
    return any(f"{pattern}/".startswith(f"{path}/") for pattern in exceptions)


def _without_trailing_glob(pattern: str) -> str:
    return pattern.removesuffix("/**").removesuffix("/*")


def _has_glob(pattern: str) -> bool:
    return any(char in "*[]?^\\" for char in _without_trailing_glob(pattern))


def inputs_digest(
    dockerfile: bytes, entries: Iterable[ContextEntry], options: Iterable[tuple[str, str]]
) -> str:
    """The value of the inputs label: `v1:sha256:HEX`, where HEX is the sha256 of these
    fields, each written as a netstring (its length in decimal, `:`, its bytes, `,`):

    1. `manage_images inputs 1` (INPUTS_VERSION: a new one never equals an old label);
    2. `dockerfile`, then the bytes of the Dockerfile as built (every parent pinned by
       digest; a parent this run built in place of its pin named as it was built on);
    3. for each entry of the build context, in the byte order of its path: its kind
       (`file`, `link`, `dir`, or `parent` for an excluded folder sent only for what it
       holds), its permission bits in octal, its path (the name's own bytes), and a
       file's sha256 in hex or a link's target (empty for a folder);
    4. for each build option that changes the result, sorted: its name and its value
       (`build-arg` and NAME=VALUE once per argument, `attestations`, `platform`, ...).

    Owners, times and extended attributes are not inputs: docker's classic CLI sends
    every file as root's, BuildKit's cache ignores times, and COPY makes files root's."""
    import hashlib

    digest = hashlib.sha256()

    def field(value: str | bytes) -> None:
        data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s," % (len(data), data))

    field(f"manage_images inputs {INPUTS_VERSION}")
    field("dockerfile")
    field(dockerfile)
    for entry in sorted(entries, key=lambda entry: os.fsencode(entry.path)):
        for value in (entry.kind, f"{entry.mode:o}", entry.path, entry.payload):
            field(value)
    for name, value in sorted(options):
        field(name)
        field(value)
    return f"v{INPUTS_VERSION}:sha256:{digest.hexdigest()}"


def unknown_sources(data: bytes, registry: str) -> str:
    """Why a build of this Dockerfile may change although none of its bytes do, or "": an
    image it takes (FROM, COPY --from, RUN --mount from=, `# syntax=`) not pinned by digest
    or named through a variable, or an ADD of a URL without --checksum."""
    for line in data.decode("utf-8", "replace").splitlines():
        directive = _DIRECTIVE_RE.match(line.strip())
        if directive is None:
            break
        if directive.group(1).lower() == "syntax" and not _PINNED_SOURCE_RE.search(directive.group(2)):
            return f"its frontend `# syntax={directive.group(2)}` is not pinned by digest"
    stages: set[str] = set()
    for _, text in dockerfile_instructions(data):
        keyword, *words = text.split()
        keyword = keyword.upper()
        for instruction, source in _instruction_sources(keyword, words):
            why = _source_problem(instruction, source, stages, registry)
            if why:
                return why
        if keyword == "FROM" and len(words) >= 3 and words[-2].upper() == "AS":
            stages.add(words[-1].lower())
        if keyword == "ADD" and not any(word.startswith("--checksum=") for word in words):
            remote = [word.strip('[",') for word in words[:-1] if _REMOTE_SOURCE_RE.match(word.strip('[",'))]
            if remote:
                return f"ADD {remote[0]} fetches a URL, whose bytes are not in the context"
    return ""


def _source_problem(instruction: str, source: str, stages: Container[str], registry: str) -> str:
    if "$" in source:
        return f"{instruction} {source} names its image through a variable"
    if source.lower() in stages or (instruction == "FROM" and source.lower() == "scratch"):
        return ""
    if instruction != "FROM" and source.isdigit():
        return ""  # a stage by its number
    if _PINNED_SOURCE_RE.search(source):
        return ""
    owner = "image of the graph" if source.startswith(f"{registry}/") else "external image"
    return f"{instruction} {source}: an {owner} not pinned by digest"


def rebased_dockerfile(data: bytes, registry: str, parents: Mapping[str, str]) -> bytes:
    """`data` with each pinned reference to an image of `parents` pointing at the reference
    `parents` gives it: `URL@sha256:...` puts its digest in place of the old one (the bytes
    --update_references would write), `URL:TAG` (an image this run built and did not push)
    takes the whole reference's place."""
    references = list(find_references(data, registry))
    pinned = {image: ref.partition("@")[2] for image, ref in parents.items() if "@" in ref}
    splices = reference_splices(references, digest_hexes(registry, pinned))
    splices += [
        (reference.start, reference.end, parents[reference.name].encode())
        for reference in references
        if reference.name in parents and reference.name not in pinned and reference.well_formed()
    ]
    return apply_splices(data, sorted(splices))


# ---------------------------------------------------------------------------
# Views: the graph as text, dot or Mermaid; a file change as a diff.


def graph_edges(images: Sequence[str], graph: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(parent, child) pairs among `images`, in the graph's declaration order."""
    selected = set(images)
    return [
        (parent, child)
        for child in graph
        if child in selected
        for parent in graph[child]
        if parent in selected
    ]


def render_graph(images: Sequence[str], graph: Mapping[str, Sequence[str]], fmt: str) -> str:
    """The graph of `images` as an indented tree (`text`), Graphviz (`dot`) or Mermaid."""
    edges = graph_edges(images, graph)
    connected = {image for edge in edges for image in edge}
    alone = [image for image in graph if image in set(images) and image not in connected]
    if fmt == "dot":
        lines = ["digraph images {"]
        lines += [f'  "{image}";' for image in alone]
        lines += [f'  "{parent}" -> "{child}";' for parent, child in edges]
        return "\n".join(lines + ["}"]) + "\n"
    if fmt == "mermaid":
        lines = ["graph TD"] + [f"  {image}" for image in alone]
        lines += [f"  {parent} --> {child}" for parent, child in edges]
        return "\n".join(lines) + "\n"
    return _render_tree(images, edges)


def _render_tree(images: Sequence[str], edges: Sequence[tuple[str, str]]) -> str:
    """Each root, then its children indented below it; an image with two parents is shown once."""
    children: dict[str, list[str]] = {image: [] for image in images}
    for parent, child in edges:
        children[parent].append(child)
    roots = [image for image in images if not any(child == image for _, child in edges)]
    lines: list[str] = []
    seen: set[str] = set()

    def show(image: str, depth: int) -> None:
        parents = [parent for parent, child in edges if child == image]
        also = f" (from {', '.join(parents)})" if len(parents) > 1 else ""
        if image in seen:
            lines.append(f"{'  ' * depth}{image}{also} (see above)")
            return
        seen.add(image)
        lines.append(f"{'  ' * depth}{image}{also}")
        for child in sorted(children[image]):
            show(child, depth + 1)

    for root in sorted(roots):
        show(root, 0)
    return "\n".join(lines) + "\n"


def unified_diff(path: str, old: bytes, new: bytes) -> str:
    import difflib

    return (
        "".join(
            difflib.unified_diff(
                old.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                new.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                fromfile=f"a/{path}",
                tofile=f"b/{path}",
            )
        )
        .encode("utf-8", "surrogateescape")
        .decode("utf-8", "replace")
    )


# ---------------------------------------------------------------------------
# Commands: pure argv builders, and what a failed one's output means.


def pull_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "pull", f"{url}:{tag}")


def pull_digest_argv(url: str, digest: str) -> tuple[str, ...]:
    return ("docker", "pull", f"{url}@{digest}")


def options_argv(options: BuildOptions) -> tuple[str, ...]:
    """The flags `docker build` takes as the user gave them, the same on every engine: they
    change what a build gives, so they are inputs of every image too (see `image_inputs`)."""
    return tuple(word for argument in options.build_arg for word in ("--build-arg", argument))


def build_argv(
    plan: BuildPlan, engine: Engine | None = None, options: BuildOptions | None = None
) -> tuple[str, ...]:
    """`docker build` as this engine needs it (None: the classic builder's).

    Through buildx, BuildKit's default attestations are turned off unless
    asked for (on the containerd store they make every build a new index),
    the build's metadata (its digests) is written to `plan.metadata`, and
    `--push` pushes the image from the build itself. BuildKit built into an
    older CLI takes inline cache as a build argument. `--platform` only for an
    image with platforms of its own: the others are built as they always were.
    """
    options = options or BuildOptions()
    argv = ["docker", "build", "--tag", f"{plan.url}:{plan.tag}"]
    if plan.label is not None:
        argv += ["--label", f"{INPUTS_LABEL}={plan.label}"]
    argv += options_argv(options)
    if plan.platforms:
        argv += ["--platform", ",".join(plan.platforms)]
    buildx = engine is not None and bool(engine.buildx)
    if buildx and not options.attestations:
        argv += ["--provenance=false", "--sbom=false"]
    if buildx and plan.metadata:
        argv += ["--metadata-file", plan.metadata]
    if buildx and plan.push:
        argv.append("--push")
    if buildx and plan.output:
        argv += ["--output", plan.output]
    for name, target in plan.contexts:
        argv += ["--build-context", f"{name}=docker-image://{target}"]
    if plan.dockerfile:
        argv += ["--file", plan.dockerfile]
    for source in plan.cache_from:
        argv += ["--cache-from", source]
    if plan.cache_to and buildx:
        argv += ["--cache-to", plan.cache_to]
    elif plan.cache_to == "type=inline":
        argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    return (*argv, plan.context)


def started_command(
    argv: Sequence[str], engine: Engine | None, env: Mapping[str, str]
) -> tuple[tuple[str, ...], Mapping[str, str]]:
    """What is started for the command `argv` run with `env`: a `docker build` that docker
    would hand to the buildx plugin `docker info` named starts that plugin itself, with what
    docker adds (BUILDX_BUILDER set to docker's context unless set: `docker build` builds on
    the context's own builder, whatever `docker buildx use` chose). Docker would start three
    processes for it (itself, the plugin for its metadata twice over, then the plugin): the
    same build, about 0.1 s of CPU less per image. Lines about the command show `argv`,
    which is what a user would type."""
    if not (engine and engine.buildx_path and tuple(argv[:2]) == ("docker", "build")):
        return tuple(argv), env
    extra = {} if "BUILDX_BUILDER" in env else {"BUILDX_BUILDER": engine.context or "default"}
    return (engine.buildx_path, "build", *argv[2:]), {**env, **extra}


def platform_flag(wanted: Sequence[str], engine: Engine | None) -> tuple[str, ...]:
    """What a build's `--platform` lists: `wanted`, the platforms the image is built for; ()
    when that is the engine's own platform alone, so that such a build keeps the argv (and
    the cache keys) it always had."""
    own = normalize_platform(*(engine.platform if engine else Engine._field_defaults["platform"]).split("/"))
    return () if list(wanted) in ([], [own]) else tuple(wanted)


def cache_export(engine: Engine | None, url: str, tag: str, push: bool, platform: str = "") -> str:
    """The `--cache-to` of a build: the cache a cold engine of the same kind reads back.

    BuildKit on the containerd store, and a builder of another driver than `docker`
    (see `Engine.registry_cache`), writes a registry cache beside the image
    when it is pushed (its config stays free of cache metadata); BuildKit on a
    graph-driver store can only write inline cache (the docker driver exports
    nothing else there); the classic builder needs none. `platform`: the cache
    of one platform of an index (see `platform_cache_builds`).
    """
    if engine is None or engine.builder != "buildkit":
        return ""
    if engine.registry_cache():
        # A registry that fails the export (down, or refusing) fails the push, not the build.
        ref = f"{url}:{build_cache_tag(tag, platform)}"
        return f"type=registry,ref={ref},mode=max,ignore-error=true" if push and engine.buildx else ""
    return "type=inline"


def build_cache_tag(tag: str, platform: str = "") -> str:
    """The tag the registry cache of the last build pushed as TAG (of its image for `platform`,
    when it is an index) is written to (a valid tag)."""
    suffix = ".cache" + (f"-{platform.replace('/', '-')}" if platform else "")
    return f"{tag[: 128 - len(suffix)]}{suffix}"


def pinned_cache_tag(digest: str) -> str:
    """The tag of the registry cache kept beside the image `digest` (`sha256-HEX.cache`)."""
    return f"{digest.replace(':', '-')}.cache"


def go_bool(value: str, name: str) -> bool:
    """`value` read as Go's strconv.ParseBool reads it (docker reads DOCKER_BUILDKIT so)."""
    if value not in GO_BOOLS:
        raise ManageImagesError(f"{name}={value!r} is not a boolean: set it to 1 or 0, or unset it")
    return GO_BOOLS[value]


def engine_from(version: str, info: str, buildkit: str | None) -> Engine:
    """The engine described by `docker version` and `docker info` (`--format '{{json .}}'`),
    with the DOCKER_BUILDKIT docker sees (None or "" when unset).

    Since Docker 23 the CLI builds with BuildKit through the buildx plugin
    when the plugin is usable, and falls back to the classic builder when it
    is not; an older CLI builds with the classic builder unless
    DOCKER_BUILDKIT is true, then with the BuildKit built into it.
    """
    import json

    try:
        versions = json.loads(version)
        client = str(versions["Client"]["Version"])
        server_facts = versions.get("Server") or {}
        platform = _platform(server_facts.get("Os") or "linux", server_facts.get("Arch") or "amd64", "")
        facts = json.loads(info)
        server = str(facts.get("ServerVersion") or "")
        status = facts.get("DriverStatus") or []
        client_info = facts.get("ClientInfo") or {}
        plugins = client_info.get("Plugins") or []
        context = str(client_info.get("Context") or "")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ManageImagesError(
            "cannot read `docker version` and `docker info` as JSON; check the docker client and run again"
        ) from None
    store = "containerd" if CONTAINERD_SNAPSHOTTER in status else str(facts.get("Driver") or "unknown")
    buildx, buildx_path = next(
        (
            (str(plugin.get("Version") or "?"), str(plugin.get("Path") or ""))
            for plugin in plugins
            if isinstance(plugin, dict) and plugin.get("Name") == "buildx" and not plugin.get("Err")
        ),
        ("", ""),
    )
    wanted = go_bool(buildkit, "DOCKER_BUILDKIT") if buildkit else None
    major = re.match(r"\d+", client)
    if not major or int(major.group()) < BUILDX_DEFAULT_SINCE:
        return Engine(client, server, "buildkit" if wanted else "classic", store, platform=platform)
    if wanted is False or (not buildx and wanted is None):
        return Engine(client, server, "classic", store, platform=platform)
    if not buildx:
        raise ManageImagesError(
            "DOCKER_BUILDKIT is set but docker finds no usable buildx plugin: install docker-buildx "
            "(or put it in $DOCKER_CONFIG/cli-plugins/), or unset DOCKER_BUILDKIT"
        )
    return Engine(
        client, server, "buildkit", store, buildx, platform, buildx_path=buildx_path, context=context
    )


def _nonzero(config: object) -> dict[str, object]:
    """The runtime config's fields that are set (docker shows the others as "", null or false)."""
    if not isinstance(config, dict):
        return {}
    return {
        key: config[key] for key in RUNTIME_CONFIG_KEYS if config.get(key) not in (None, "", False, [], {}, 0)
    }


def _platform(os_name: object, architecture: object, variant: object) -> str:
    return "/".join(str(part) for part in (os_name, architecture, variant) if part)


def config_view(config: Mapping[str, object]) -> dict[str, object]:
    """What an image is, from its config document: platform, every layer (diff IDs), the
    runtime config, creation time and author. BuildKit's cache record and the build history
    are not in it, so the view of a cold rebuild that hit the cache on every step is the pin's."""
    rootfs = config.get("rootfs")
    return {
        "platform": _platform(config.get("os"), config.get("architecture"), config.get("variant")),
        "layers": list(rootfs.get("diff_ids") or []) if isinstance(rootfs, dict) else [],
        "config": _nonzero(config.get("config")),
        "created": config.get("created") or "",
        "author": config.get("author") or "",
    }


def inspect_view(document: Mapping[str, object]) -> dict[str, object]:
    """`config_view` of a local image, from `docker image inspect` (which shows no config bytes)."""
    rootfs = document.get("RootFS")
    return {
        "platform": _platform(document.get("Os"), document.get("Architecture"), document.get("Variant")),
        "layers": list(rootfs.get("Layers") or []) if isinstance(rootfs, dict) else [],
        "config": _nonzero(document.get("Config")),
        "created": document.get("Created") or "",
        "author": document.get("Author") or "",
    }


def same_config(one: bytes, other: bytes) -> bool:
    """Two image configs hold the same content: equal as JSON once BuildKit's cache record is
    left out (so neither that record, nor key order, nor white space tells them apart)."""

    def content(data: bytes) -> object:
        document = registry_json(data)
        if isinstance(document, dict):
            document.pop(CACHE_RECORD_KEY, None)
        return document

    try:
        return bool(content(one) == content(other))
    except ValueError:
        return one == other


def identity_of(local: LocalImage, manifest_digest: str, config_digest: str, config: bytes) -> Identity:
    """How the local image compares with the one the registry serves as `manifest_digest`
    (whose config for the local image's platform is `config`, of digest `config_digest`):
    `identical` (the same manifest or the same config bytes), `same content` (see
    `config_view`), or `differs`."""
    if local.id == manifest_digest or local.config_digest == config_digest:
        return "identical"
    try:
        document = registry_json(config)
    except ValueError:
        return "differs"
    if isinstance(document, dict) and config_view(document) == local.view:
        return "same content"
    return "differs"


def tag_argv(source: str, target: str) -> tuple[str, ...]:
    return ("docker", "tag", source, target)


ENGINE_VERSION_ARGV = ("docker", "version", "--format", "{{json .}}")
ENGINE_INFO_ARGV = ("docker", "info", "--format", "{{json .}}")


def image_json_argv(ref: str) -> tuple[str, ...]:
    return ("docker", "image", "inspect", "--format", "{{json .}}", ref)


def is_loopback_registry(registry: str) -> bool:
    host = registry.split("/", 1)[0]
    return is_loopback_name(host[1 : host.find("]")] if host.startswith("[") else host.split(":", 1)[0])


def is_loopback_name(name: str) -> bool:
    """Whether the host `name` (no port, no brackets) is this machine's loopback."""
    import ipaddress

    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name
        return False


def push_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "push", f"{url}:{tag}")


def inspect_many_argv(refs: Sequence[str]) -> tuple[str, ...]:
    """One `docker image inspect` for many images: a line of JSON for each one found."""
    return ("docker", "image", "inspect", "--format", "{{json .}}", *refs)


def docker_names(url: str) -> set[str]:
    """The names docker lists the repository `url` under in RepoTags and RepoDigests:
    it shortens Docker Hub repositories (`docker.io/library/x` -> `x`)."""
    return {url, url.removeprefix("docker.io/"), url.removeprefix("docker.io/library/")}


def inspected_among(output: str, url: str, tag: str) -> dict[str, object] | None:
    """The document of url:tag in the output of `inspect_many_argv`, or None if it is not there."""
    import json

    wanted = {f"{name}:{tag}" for name in docker_names(url)}
    for line in output.splitlines():
        try:
            document: object = json.loads(line)
        except ValueError:
            continue
        if not isinstance(document, dict):
            continue
        tags = document.get("RepoTags")
        if isinstance(tags, list) and wanted.intersection(tags):
            return document
    return None


def git_argv(root: Path, *args: str) -> tuple[str, ...]:
    """`git ARGS` in the work tree `root`, with the options no user configuration overrides."""
    return ("git", *GIT_OPTIONS, "-C", str(root), *args)


def git_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of every git call: `environ` without the variables that
    would redirect git to another repository, and git's messages in English
    (the C locale passes file names through as bytes)."""
    env = {name: value for name, value in environ.items() if name not in GIT_REPOSITORY_VARIABLES}
    env["LC_ALL"] = "C"
    return env


def registry_grep_pattern(registry: str) -> str:
    """The Perl regex `git grep -P` finds `REGISTRY/` with, in UTF-8 (ASCII)
    text and in UTF-16 text of either byte order (the name's bytes with NULs
    between them), every byte escaped."""
    needle = f"{registry}/".encode()
    ascii_form = "".join(f"\\x{byte:02x}" for byte in needle)
    utf16_form = "\\x00".join(f"\\x{byte:02x}" for byte in needle)
    return f"{ascii_form}|{utf16_form}"


def grep_threads(cpus: int) -> int:
    """How many threads `git grep` searches the work tree with, for `cpus` CPUs this
    process may run on. Git's default is one per CPU of the machine, but its threads
    take turns on one lock to look up each file's attributes (the binary check), so
    one more keeps every CPU busy (100,000 files, 2 CPUs: 0.46 s with 3, 0.52 s with
    git's 2); on one CPU a second thread only waits (0.61 s with 1, 0.90 s with 2)."""
    return 1 if cpus <= 1 else cpus + 1


def git_failure(stderr: bytes) -> str:
    """What git's own messages say went wrong: its `error:` and `fatal:` lines,
    joined; "" when it said nothing but warnings (or traces)."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    said = [" ".join(line.split()) for line in lines if line.startswith(("error:", "fatal:"))]
    return "; ".join(dict.fromkeys(said))


def gcloud_argv(registry: str) -> tuple[str, ...]:
    host = registry.split("/", 1)[0]
    if host == "gcr.io":
        return ("gcloud", "auth", "configure-docker")
    return ("gcloud", "auth", "configure-docker", host)


def is_google_registry(registry: str) -> bool:
    return bool(GOOGLE_REGISTRY_RE.match(registry.split("/", 1)[0]))


def diagnose(argv: Sequence[str], output: Sequence[str], registry: str) -> str:
    """What a failed docker command's last lines of output mean, and what to do."""
    if not argv or argv[0] != "docker":
        return ""
    text = "\n".join(output)
    host = registry.split("/", 1)[0]
    if _NO_ENGINE_RE.search(text):
        return NO_ENGINE_HINT
    if tuple(argv[1:2]) == ("build",) and _STEP_FAILED_RE.search(text):
        return ""  # a step of the build failed: what it printed ("Permission denied", ...) is its own
    if tuple(argv[1:2]) in (("push",), ("pull",)) or (tuple(argv[1:2]) == ("build",) and "--push" in argv):
        if _REFUSED_RE.search(text):
            action = (
                "`gcloud auth configure-docker`" if is_google_registry(registry) else f"`docker login {host}`"
            )
            return f"the registry {host} refused the request (authentication): run {action} and try again"
        if _UNREACHABLE_RE.search(text):
            return f"the registry {host} is unreachable: check that it is up and that --registry is right"
    return ""


# ---------------------------------------------------------------------------
# The scheduler and the summary.


class Placed(NamedTuple):
    """Where an image of a run starts, and how it got there."""

    builder: str = ""  # "": the engine DOCKER_HOST or docker's current context names
    waited: float = 0.0  # seconds it was ready and waited for a free builder, in all
    retried: str = ""  # why its previous attempt failed, when a builder fault makes it start again


class Dispatcher:
    """The scheduler's decisions, with no thread and no clock of its own: which ready image
    starts next, on which builder, and what a builder's fault does. Readiness is graphlib's
    get_ready()/done() protocol: a failed image is never done, so its dependents never
    become ready.

    Among the ready images the earliest in `order` starts first, so one builder with one
    slot follows `order` exactly. Each builder has `slots` slots. An image goes to a free
    builder that built one of its parents (the first parent's first: its cache holds the
    parent's layers), else to the free builder with the most free slots, the first named
    among equals. After a failure no new image starts unless `keep_going`. A builder that
    could not be reached under an image (a fault) gets nothing more; the image starts
    again, once, on another builder, when one has a free slot or with `keep_going`; else
    it fails.
    """

    def __init__(
        self,
        order: Sequence[str],
        graph: Mapping[str, Sequence[str]],
        builders: Sequence[str] = ("",),
        slots: int = 1,
        keep_going: bool = False,
    ) -> None:
        self.position = {image: index for index, image in enumerate(order)}
        self._graph = graph
        self._sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
            {image: [parent for parent in graph[image] if parent in self.position] for image in order}
        )
        self._sorter.prepare()
        self._ready: dict[str, float] = {}  # image -> since when it waits for a builder
        self.free = dict.fromkeys(builders, slots)  # builder -> free slots; a builder at fault is gone
        self.built_by: dict[str, str] = {}
        self.waited: dict[str, float] = {}
        self.retries: dict[str, str] = {}  # image -> why its first attempt failed
        self.keep_going = keep_going
        self.failed = False

    def starts(self, now: float, stopped: bool = False) -> list[tuple[str, str]]:
        """The images to start now, each with the builder whose slot it takes."""
        for image in self._sorter.get_ready():
            self._ready[image] = now
        if stopped or (self.failed and not self.keep_going):
            return []
        chosen = []
        for image in sorted(self._ready, key=self.position.__getitem__):
            builder = self._builder_for(image)
            if builder is not None:
                self.free[builder] -= 1
                self.waited[image] = self.waited.get(image, 0.0) + now - self._ready.pop(image)
                chosen.append((image, builder))
        return chosen

    def _builder_for(self, image: str) -> str | None:
        free = [builder for builder, count in self.free.items() if count > 0]
        preferred = [self.built_by[parent] for parent in self._graph[image] if parent in self.built_by]
        return next((builder for builder in preferred if builder in free), None) or max(
            free, key=self.free.__getitem__, default=None
        )

    def placed(self, image: str, builder: str) -> Placed:
        return Placed(builder, self.waited.get(image, 0.0), self.retries.get(image, ""))

    def finished(self, image: str, builder: str, done: bool, fault: str = "", now: float = 0.0) -> bool:
        """IMAGE's attempt on BUILDER is over (`fault`: why the builder could not be reached
        under it); True when the image is to start again (see the class)."""
        if fault:
            self.free.pop(builder, None)
            # After a failure nothing new starts (unless keep_going): nor does a retry.
            again = self.keep_going or (not self.failed and any(self.free.values()))
            if image not in self.retries and self.free and again:
                self.retries[image] = fault
                self._ready[image] = now
                return True
        elif builder in self.free:
            self.free[builder] += 1
        if done:
            self.built_by[image] = builder
            self._sorter.done(image)
        else:
            self.failed = True
        return False


def run_graph(
    order: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    jobs: int,
    keep_going: bool,
    work: Callable[[str, str], T],
    finish: Callable[[str, T], str | None],
    stopped: Callable[[], bool] = lambda: False,
    on_start: Callable[[str, int, Placed], None] = lambda image, number, placed: None,
    clock: Callable[[], float] = time.monotonic,
    on_finish: Callable[[ImageResult], None] = lambda item: None,
    on_tick: Callable[[], None] = lambda: None,
    builders: Sequence[str] = ("",),
) -> dict[str, ImageResult]:
    """Processes `order` so that each image starts once every dependency of it in the run
    has finished, on a builder with one of its `jobs` slots free (see `Dispatcher`).

    `work(image, builder)` runs in a worker thread (the docker commands); `finish(image,
    value)` runs here, in the calling thread, with what `work` returned (the reference
    rewrites), before any dependent starts, so file edits never overlap; it returns the
    image's digest. An image whose work raised BuilderFault may start again: `finish` runs
    once, for the attempt that worked. `stopped()` true (an interruption) starts nothing
    new. Images that finish together are finished in the run's order.
    """
    import concurrent.futures

    dispatcher = Dispatcher(order, graph, builders, jobs, keep_going)
    results: dict[str, ImageResult] = {}
    started: dict[str, float] = {}
    running: dict[concurrent.futures.Future[T], tuple[str, str]] = {}
    retrying: dict[str, ImageResult] = {}  # a faulted attempt, until its image starts again
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs * len(builders)) as pool:
        while True:
            for image, builder in dispatcher.starts(clock(), stopped()):
                started[image] = clock()
                on_start(image, list(started).index(image) + 1, dispatcher.placed(image, builder))
                running[pool.submit(work, image, builder)] = (image, builder)
            if not running:
                break
            done, _ = concurrent.futures.wait(
                running, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
            )
            on_tick()
            for future in sorted(done, key=lambda future: dispatcher.position[running[future][0]]):
                image, builder = running.pop(future)
                item = _finished(image, future, finish, clock() - started[image], len(results))
                item = item._replace(**dispatcher.placed(image, builder)._asdict())
                fault = str(item.error) if isinstance(item.error, BuilderFault) else ""
                if dispatcher.finished(image, builder, item.result == "done", fault, clock()):
                    retrying[image] = item
                else:
                    results[image] = item
                    on_finish(item)
    # A retry that never started (no builder left, or a stop) fails as its attempt did.
    for image, item in retrying.items():
        if image not in results:
            results[image] = item
            on_finish(item)
    return _with_the_rest(order, graph, results)


def by_image(values: Mapping[str, T]) -> Callable[[str, str], T]:
    """Work that gives IMAGE's value, wherever it runs."""
    return lambda image, builder: values[image]


def _finished(
    image: str,
    future: concurrent.futures.Future[T],
    finish: Callable[[str, T], str | None],
    seconds: float,
    rank: int,
) -> ImageResult:
    """The result of an image whose work is over: `finish` ran, or something failed."""
    try:
        digest = finish(image, future.result())
    except Exception as error:  # any failure fails this image only
        if not isinstance(error, ManageImagesError):
            error = ManageImagesError(f"{image}: {unexpected(error)}")
        return ImageResult(image, "failed", seconds, error=error, finished=rank)
    return ImageResult(image, "done", seconds, digest, finished=rank)


def _with_the_rest(
    order: Sequence[str], graph: Mapping[str, Sequence[str]], results: Mapping[str, ImageResult]
) -> dict[str, ImageResult]:
    """Every image of `order`, in order: those that never started are skipped
    (a parent failed or was skipped) or not started."""
    complete: dict[str, ImageResult] = {}
    for image in order:
        if image in results:
            complete[image] = results[image]
            continue
        blocked = any(
            complete[parent].result in ("failed", "skipped") for parent in graph[image] if parent in complete
        )
        complete[image] = ImageResult(image, "skipped" if blocked else "not started")
    return complete


def refused(
    results: Mapping[str, ImageResult], files: Mapping[str, Sequence[str]], error: ManageImagesError
) -> dict[str, ImageResult]:
    """The results once a write for all images at once failed: each done image
    with a file in it failed with `error`; the others stand."""
    return {
        image: item._replace(result="failed", error=error)
        if item.result == "done" and files.get(image)
        else item
        for image, item in results.items()
    }


def format_summary(
    results: Mapping[str, ImageResult],
    steps: Sequence[str],
    wall: float,
    dry_run: bool = False,
    notes: Mapping[str, str] | None = None,
) -> str:
    """One line per image: result, short digest, seconds, (with --builder, the builder it
    ran on and the seconds it waited for one,) steps (and a note, such as `reproduced`,
    when any image has one); then the wall time.

    In a dry run an image that went through is `planned`, never `done`.
    """
    notes = notes or {}
    width = max([len(image) for image in results] + [5])
    builders = max([len(item.builder) for item in results.values() if item.builder] + [0])
    step_text = ", ".join(steps) or "-"
    label = {"done": "planned"} if dry_run else {}
    lines = [
        "Summary (dry run: nothing was run or changed):" if dry_run else "Summary:",
        f"  {'image':<{width}}  {'result':<11}  {'digest':<19}  {'seconds':>8}  "
        + (f"{'builder':<{max(builders, 7)}}  {'waited':>8}  " if builders else "")
        + "steps"
        + (f"{' ' * max(0, len(step_text) - 5)}  note" if notes else ""),
    ]
    counts: dict[str, int] = {}
    for item in results.values():
        result = label.get(item.result, item.result)
        counts[result] = counts.get(result, 0) + 1
        digest = item.digest[:19] if item.digest else "-"
        ran = item.result in ("done", "failed")
        seconds = f"{item.seconds:7.1f}s" if ran else "       -"
        place = (
            f"{item.builder or '-':<{max(builders, 7)}}  {f'{item.waited:7.1f}s' if ran else '       -'}  "
        )
        note = f"  {notes[item.image]}" if item.image in notes else ""
        lines.append(
            f"  {item.image:<{width}}  {result:<11}  {digest:<19}  {seconds}  "
            f"{place if builders else ''}{step_text}{note}"
        )
    tally = ", ".join(f"{count} {result}" for result, count in counts.items())
    lines.append(f"Total wall time: {wall:.1f}s ({tally})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Progress: time left, the terminal view, a failed image's log.


def resolve_progress(choice: str, terminal: bool, term: str) -> str:
    """The --progress mode a run uses: `auto` is `tty` on a terminal whose TERM is not `dumb`."""
    if choice != "auto":
        return choice
    return "tty" if terminal and term != "dumb" else "plain"


def expected_costs(
    images: Sequence[str], steps: Sequence[str], history: Mapping[str, Mapping[str, float]]
) -> dict[str, float] | None:
    """Seconds each image should take for `steps`, from the durations its steps
    took last time; a step an image has no record of counts as the median of
    the others' records of it. None when no image has a record of any step."""
    medians: dict[str, float] = {}
    for step in steps:
        known = sorted(record[step] for record in history.values() if step in record)
        if known:
            middle = len(known) // 2
            medians[step] = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
    if not medians:
        return None
    return {
        image: sum(history.get(image, {}).get(step, medians.get(step, 0.0)) for step in steps)
        for image in images
    }


def parse_durations(data: bytes) -> dict[str, dict[str, float]]:
    """The records of a durations.json (image -> step -> seconds); ValueError saying what is
    wrong with one the tool did not write: not JSON, nested too deep, another shape, a
    duration that is no number of seconds from 0 to DURATION_MAX (NaN, 1e999, a string)."""
    import json

    try:
        # Integers as floats: a 100,000-digit one is then too big, not a conversion error;
        # NaN and Infinity become floats that no duration is.
        document = json.loads(data, parse_int=float, parse_constant=float)
    except RecursionError:
        raise ValueError("it nests deeper than any record") from None
    except ValueError:
        raise ValueError("it is not JSON") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, dict):
        raise ValueError("it holds no `images` object")
    records: dict[str, dict[str, float]] = {}
    for image, steps in images.items():
        if not isinstance(steps, dict):
            raise ValueError(f"the record of {cut(repr(image), 60)} is not an object")
        for step, seconds in steps.items():
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, float)
                or not 0 <= seconds <= DURATION_MAX
            ):
                raise ValueError(
                    f"the {cut(repr(step), 60)} of {cut(repr(image), 60)} is no number of seconds "
                    f"from 0 to {DURATION_MAX:.0f}"
                )
            records.setdefault(image, {})[step] = seconds
    return records


def remaining_images(
    order: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    finished: Iterable[str],
    failed: Iterable[str],
    running: Iterable[str],
    keep_going: bool,
) -> list[str]:
    """The images of `order` that may still run (the running ones included):
    not finished, not built on a failed image, and, after a failure without
    `keep_going`, only those already running."""
    finished, failed, running = set(finished), set(failed), set(running)
    if failed and not keep_going:
        return [image for image in order if image in running]
    blocked = set(failed)
    for image in order:
        if any(parent in blocked for parent in graph[image]):
            blocked.add(image)
    return [image for image in order if image not in finished and image not in blocked]


def estimate_left(
    remaining: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    costs: Mapping[str, float],
    jobs: int,
    elapsed: Mapping[str, float] | None = None,
) -> float:
    """Seconds until the last image of `remaining` would finish if each took its cost.

    It runs the scheduler on paper: an image starts, in the order of
    `remaining`, once its parents among them have finished and one of `jobs`
    slots is free; an image in `elapsed` is running already and needs its cost
    less that many seconds. With enough jobs this is the longest remaining path
    through the graph; with fewer, images also wait for a slot.
    """
    elapsed = elapsed or {}
    position = {image: index for index, image in enumerate(remaining)}
    ends: dict[str, float] = {}
    running = [
        (max(costs[image] - seconds, 0.0), position[image], image)
        for image, seconds in elapsed.items()
        if image in position
    ]
    waiting = [image for image in remaining if image not in elapsed]
    now = 0.0
    while running or waiting:
        for image in list(waiting):
            if len(running) >= jobs:
                break
            if all(parent in ends for parent in graph[image] if parent in position):
                waiting.remove(image)
                running.append((now + costs[image], position[image], image))
        if not running:  # only images whose parents can never finish: nothing more runs
            break
        running.sort()
        now, _, image = running.pop(0)
        ends[image] = now
    return now


def format_duration(seconds: float) -> str:
    """`45s`, `12m05s`, `2h07m`."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_left(seconds: float) -> str:
    """The estimate as a person reads it: `~45s left`, `~12m left`, `~2h07m left`."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"~{max(whole, 1)}s left"
    if whole < 3600:
        return f"~{int(whole / 60 + 0.5)}m left"
    return f"~{format_duration(whole + 30)} left"


def char_width(char: str) -> int:
    """The columns a terminal gives `char`: 2 for a wide one (CJK, most emoji), 0 for a
    combining mark, else 1."""
    import unicodedata

    if unicodedata.combining(char) or unicodedata.category(char) == "Me":
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text: str) -> int:
    """The columns `text` (printable, on one line) takes on a terminal."""
    return len(text) if text.isascii() else sum(map(char_width, text))


def fit(text: str, width: int) -> str:
    """`text` on one terminal line of at most `width` columns (wide characters count
    two): control characters as spaces, cut with `...` when wider."""
    if not text.isascii() or not text.isprintable():
        text = "".join(char if char.isprintable() else " " for char in text)
    if text_width(text) <= width:
        return text
    room = max(width - 3, 0)
    if not text.isascii():
        widths = list(itertools.accumulate(map(char_width, text)))
        room = bisect.bisect_right(widths, room)
    return text[:room] + "..."[: max(width, 0)]


class Running(NamedTuple):
    """An image the terminal view shows: its step, when it started, its output's last line,
    and where it runs (see `Placed`)."""

    image: str
    step: str
    started: float
    last: str
    builder: str = ""
    waited: float = 0.0


def start_place(placed: Placed) -> str:
    """What a line about an image's start says of its builder: ` on NAME`, and the time it
    waited for one when it is a second or more; "" without --builder."""
    if not placed.builder:
        return ""
    waited = f", after waiting {format_duration(placed.waited)} for a builder" if placed.waited >= 1 else ""
    return f" on {placed.builder}{waited}"


class ViewState(NamedTuple):
    """What the terminal view shows at one moment."""

    total: int
    done: int
    failed: int
    running: tuple[Running, ...]
    started: float  # the run's start, on the same clock
    left: float | None  # the estimate, if there is one
    name_width: int  # the longest image name of the run
    unchanged: int = 0  # of the done, those unchanged (inputs of the pin): not built


def render_view(state: ViewState, now: float, columns: int, rows: int, colour: bool = False) -> list[str]:
    """The terminal view's lines: a header with the counts, the elapsed time
    and the time left, then one line per running image (its step, elapsed
    time and last line of output), each cut to `columns` - 1 (a full line
    would leave the cursor at the edge, and a narrower terminal would rewrap
    it) and, with `rows`, at most `rows` - 1 lines in all."""
    width = max(columns - 1, 1)
    waiting = state.total - state.done - state.failed - len(state.running)
    header = (
        f"[{state.done + state.failed}/{state.total}] {state.done} done"
        + (f" ({state.unchanged} unchanged (inputs of the pin))" if state.unchanged else "")
        + f", {len(state.running)} running, "
        f"{state.failed} failed, {waiting} left | {format_duration(now - state.started)} elapsed"
        + (f" | {format_left(state.left)}" if state.left is not None else "")
    )
    bold, red, dim, cyan, reset = (
        ("\x1b[1m", "\x1b[31m", "\x1b[2m", "\x1b[36m", "\x1b[0m") if colour else [""] * 5
    )
    header = fit(header, width)
    if colour and state.failed:
        header = header.replace(f", {state.failed} failed", f", {red}{state.failed} failed{reset}{bold}", 1)
    lines = [f"{bold}{header}{reset}"]
    shown_running = state.running[: max(rows - 2, 1)]
    places = [start_place(Placed(item.builder, item.waited)).removeprefix(" on ") for item in shown_running]
    place_width = max(map(len, places), default=0)
    for item, place in zip(shown_running, places):
        head = (
            f"  {item.image:<{state.name_width}}  {f'{place:<{place_width}}  ' if place_width else ''}"
            f"{item.step:<17}  {format_duration(now - item.started):>6}  "
        )
        line = fit(head + item.last, width)
        if colour:
            cut = min(len(line), len(head))
            name_end = 2 + len(item.image)
            line = f"  {cyan}{line[2:name_end]}{reset}{line[name_end:cut]}{dim}{line[cut:]}{reset}"
        lines.append(line)
    if len(state.running) > len(shown_running):
        lines[-1] = fit(f"  ... and {len(state.running) - len(shown_running) + 1} more running", width)
    return lines


def failure_tail(image: str, log: str, tail: Sequence[str]) -> str:
    """What follows the summary for a failed image: its log, and that log's last lines."""
    return "\n".join(
        [
            f"{image} failed; the last {counted(len(tail), 'line')} of its log, {log}:",
            *(f"  {line}" for line in tail),
        ]
    )


# ---------------------------------------------------------------------------
# Side effects, 1: what the user sees: whole lines from any thread, a run's logs,
# its progress and the terminal view.


class Console:
    """Prints whole lines, never interleaved, from any thread.

    The one place the tool writes its output: when standard output cannot be
    written (closed, a pipe whose reader left, a full disk), the run stops as
    a Unix tool's does, its commands stopped and nothing half-written, and the
    output is dropped from then on. Standard error (`name`) is only where the
    tool explains itself: when it cannot be written, its lines are dropped
    and the run goes on, its exit code (and --json report) still saying how
    it went, as Unix tools treat their standard error.

    In the terminal view it also keeps a block of live lines below what it
    printed: each line printed goes above the block, which is redrawn under it.
    """

    def __init__(self, out: TextIO | None, name: str = "standard output") -> None:
        self._out = out  # None: the stream was closed when the tool started
        self.name = name
        # Under any locale (Latin-1, ASCII): a character it cannot encode is printed as an escape.
        reconfigure = getattr(out, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
        # Reentrant: a signal handler may print while the main thread prints.
        self._lock = threading.RLock()
        self.lost = False
        self._writing: tuple[int, int] | None = None  # (thread, count) of the write under way
        self._count = 0
        self._block: list[str] = []  # the live lines, as written (colours included)
        self._lengths: list[int] = []  # their lengths on screen, to erase them after a resize

    @property
    def stream(self) -> TextIO | None:
        return self._out

    def size(self) -> tuple[int, int]:
        """The terminal's columns and rows now (80 by 24 when it is not a terminal)."""
        try:
            size = os.get_terminal_size(self._out.fileno()) if self._out is not None else None
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            size = None
        return (size.columns or 80, size.lines or 24) if size is not None else (80, 24)

    def columns(self) -> int:
        """The terminal's width now (80 when it is not a terminal)."""
        return self.size()[0]

    def line(self, text: str = "", prefix: str = "", wait: bool = True) -> None:
        """Prints `text` as whole lines, above the live block if there is one; with
        `wait` false (a signal handler, which must not wait for another thread),
        from a thread of its own if another thread is printing."""
        if not self._lock.acquire(blocking=wait):
            threading.Thread(target=self.line, args=(text, prefix), daemon=True).start()
            return
        try:
            text = printable(text, SECRETS.forms())
            body = "".join(f"{prefix}{part}\n" for part in (text.split("\n") if text else [""]))
            # One write: a line-buffered terminal stream makes a system call per write.
            self.write(f"{self._erasing()}{body}{self._drawing()}")
        finally:
            self._lock.release()

    def show(self, block: Sequence[str], lengths: Sequence[int], columns: int | None = None) -> None:
        """Replaces the live block (lines cut to the terminal's width, `columns`
        if the caller just read it; `lengths` are their widths on screen); an
        empty block leaves none and the cursor shown."""
        with self._lock:
            hide = "\x1b[?25l" if block and not self._block else ""  # no cursor jumping about the block
            show = "\x1b[?25h" if self._block and not block else ""
            erase = self._erasing(columns)
            self._block, self._lengths = list(block), list(lengths)
            self.write(f"{erase}{hide}{self._drawing()}{show}")

    def _erasing(self, columns: int | None = None) -> str:
        if not self._lengths:
            return ""
        # A terminal that got narrower rewraps each line over more rows. Each row is erased
        # on its own, from the bottom up: erasing "to the end of the screen" from its top-left
        # corner (where a view as tall as the screen starts) is clearing the screen, which
        # tmux and others first scroll into their history: frames would pile up there.
        columns = columns or self.columns()
        rows = sum(max(1, -(-length // columns)) for length in self._lengths)
        return "\r" + "\x1b[1A\x1b[2K" * rows

    def _drawing(self) -> str:
        return "".join(f"{line}\n" for line in self._block)

    def write(self, text: str) -> None:
        with self._lock:
            if self.lost:
                return
            self._count += 1
            previous, self._writing = self._writing, (threading.get_ident(), self._count)
            try:
                if self._out is None:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                self._out.write(text)
                self._out.flush()
            except (OSError, ValueError) as error:  # ValueError: the stream was closed
                self._give_up(error)
            finally:
                self._writing = previous

    def unblock_after_stop(self, number: int) -> None:
        """Once the run is stopping, a write that stays blocked (nobody reads the
        output: a full pipe) must not hold the stop up: after a second its
        output goes to /dev/null, and signal `number` wakes the blocked write,
        which then ends."""

        def watch() -> None:
            seen = None
            while True:
                time.sleep(0.5)
                writing = self._writing
                if writing is not None and writing == seen and self._out is not None:
                    self.lost = True
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(os.open(os.devnull, os.O_WRONLY), self._out.fileno())
                    signal.pthread_kill(writing[0], number)
                    return
                seen = writing

        threading.Thread(target=watch, daemon=True).start()

    def _give_up(self, error: OSError | ValueError) -> None:
        self.lost = True
        number = error.errno if isinstance(error, OSError) else errno.EBADF
        if self._out is not None:
            # Whatever is still buffered goes nowhere, so the interpreter's
            # last flush cannot fail with a traceback.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._out.fileno())
        if self.name != "standard output":
            return
        if number == errno.EPIPE:  # the reader left (`| head -1`): stop quietly, as SIGPIPE would
            CHILDREN.stop(128 + signal.SIGPIPE, "standard output is a pipe its reader closed; stopped")
        else:
            CHILDREN.stop(1, f"cannot write to standard output: {os.strerror(number or errno.EIO)}; stopped")


_errors: list[Console] = []  # the console of standard error, made at the first line


def error_console() -> Console:
    """The console of standard error (see Console: a standard error that cannot
    be written drops the lines, and the run goes on)."""
    if not _errors or _errors[0].stream is not sys.stderr:
        _errors[:] = [Console(sys.stderr, "standard error")]
    return _errors[0]


def error_line(text: str) -> None:
    """Prints `text` on standard error, as whole lines."""
    error_console().line(text)


class RunLogs:
    """A run's folder of logs, one file per image holding every line about it
    (each command and its whole output), and the step durations of past runs
    beside the folders (`durations.json`). Only the newest KEEP_RUNS folders
    are kept."""

    def __init__(self, base: Path, folder: Path) -> None:
        self.base = base
        self.folder = folder
        self._files: dict[str, TextIO] = {}
        self._lock = threading.Lock()
        self.lost = False  # a write failed (a full disk): the run goes on without its logs
        self._warned = False  # about durations.json

    @classmethod
    def create(cls, base: Path) -> RunLogs:
        """Makes this run's folder under `base`, removing the oldest runs' folders."""
        import shutil

        base.mkdir(parents=True, exist_ok=True)
        runs = sorted(entry for entry in os.listdir(base) if RUN_FOLDER_RE.match(entry))
        for old in runs[: max(len(runs) - (KEEP_RUNS - 1), 0)]:
            shutil.rmtree(base / old, ignore_errors=True)
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        for attempt in range(1, 100):
            folder = base / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                folder.mkdir()
                break
            except FileExistsError:  # a run of this process in the same second
                continue
        return cls(base, folder)

    def path(self, image: str) -> Path:
        return self.folder / f"{image}.log"

    def write(self, image: str, text: str) -> None:
        """Appends `text` (one or more lines) to the image's log. A log that cannot be written
        (a full disk) is one warning, and the run goes on without its logs: they only record it."""
        try:
            with self._lock:
                if self.lost:
                    return
                log = self._files.get(image)
                if log is None:
                    log = self._files[image] = open(
                        self.path(image), "a", encoding="utf-8", errors="backslashreplace", buffering=1
                    )
            log.write(f"{printable(text, SECRETS.forms())}\n")
        except ValueError:  # another thread lost the logs and closed this one meanwhile
            if not self.lost:
                raise
        except OSError as error:
            self._lose(error)

    def _lose(self, error: OSError) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
            for log in self._files.values():
                with contextlib.suppress(OSError):
                    log.close()
            self._files.clear()
        error_line(
            f"warning: cannot write the logs in {shown(str(self.folder))}: {error.strerror}; the run goes "
            "on, its logs stop here (pass --log_dir DIR with room to keep them)"
        )

    def tail(self, image: str, count: int = TAIL_LINES) -> list[str]:
        """The last `count` lines of the image's log."""
        try:
            with open(self.path(image), encoding="utf-8", errors="replace") as log:
                return list(collections.deque((line.rstrip("\n") for line in log), maxlen=count))
        except OSError:
            return []

    def close(self) -> None:
        try:
            with self._lock:
                while self._files:
                    self._files.popitem()[1].close()
        except OSError as error:  # what a full disk left in a buffer
            self._lose(error)

    def history(self) -> dict[str, dict[str, float]]:
        """image -> step -> seconds it took last time; {} when there is no record. A record
        the tool did not write (corrupt, hostile) is ignored with a warning: it only feeds
        the time-left estimate, and this run's durations replace it."""
        path = self.base / DURATIONS_NAME
        try:
            return parse_durations(read_small(path, DURATIONS_MAX_BYTES))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            if not self._warned:
                self._warned = True
                why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                error_line(
                    f"warning: ignoring {shown(str(path))}: {why}; it only feeds the time-left "
                    "estimate, and this run's durations replace it"
                )
            return {}

    def record(self, durations: Mapping[str, Mapping[str, float]]) -> None:
        """Keeps the durations of the steps this run completed as each image's last ones."""
        import json

        history = self.history()
        for image, steps in durations.items():
            history.setdefault(image, {}).update({step: round(seconds, 3) for step, seconds in steps.items()})
        path = self.base / DURATIONS_NAME
        temporary = temporary_beside(path)
        try:
            temporary.write_text(
                json.dumps({"schema": 1, "images": history}, indent=1, sort_keys=True) + "\n"
            )
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)


class Progress:
    """Where a run's lines about its images go (--progress), and what the
    terminal view and the time-left estimate know: each image's start, step,
    last line of output and step durations.

    `plain` prints each line as it comes (today's output); `tty` keeps the
    last line for the view and prints only the lines about no image; `quiet`
    prints none. Every line about an image also goes to its log.
    """

    def __init__(self, mode: str = "plain", colour: bool = False, logs: RunLogs | None = None) -> None:
        self.mode = mode
        self.colour = colour
        self.logs = logs
        self.log_base: Path | None = None  # where showing_progress makes this run's logs
        self.costs: dict[str, float] | None = None  # expected seconds per image, from the history
        self.durations: dict[str, dict[str, float]] = {}  # image -> step -> seconds, this run
        self._order: list[str] = []
        self._graph: Mapping[str, Sequence[str]] = {}
        self._schedule = Schedule()
        self._started = time.monotonic()
        self._running: dict[str, Running] = {}
        self._step_started: dict[str, float] = {}
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self._kept: set[str] = set()  # unchanged (inputs of the pin): not built
        self._estimate: tuple[float, float] | None = None  # (seconds left, when), until the next event
        self.version = 0  # changes at each start, step and finish: the view redraws at once
        self._position: dict[str, int] = {}
        self._name_width = 5
        self._lock = threading.Lock()

    def plan(
        self,
        order: Sequence[str],
        graph: Mapping[str, Sequence[str]],
        schedule: Schedule,
        steps: Sequence[str],
    ) -> None:
        """The run about to start; the history (if any) gives the images' expected costs."""
        self._order, self._graph, self._schedule = list(order), graph, schedule
        self._position = {image: index for index, image in enumerate(order)}
        self._name_width = max([len(image) for image in order] + [5])
        self._started = time.monotonic()
        if self.logs is not None:
            self.costs = expected_costs(order, steps, self.logs.history())

    def start(self, image: str, placed: Placed | None = None) -> None:
        placed = placed or Placed()
        with self._lock:
            self._running[image] = Running(image, "", time.monotonic(), "", placed.builder, placed.waited)
            self._estimate = None
            self.version += 1

    def begin(self, image: str, step: str) -> None:
        """IMAGE starts STEP; the step it was in, if another, is complete."""
        with self._lock:
            item = self._running.get(image)
            if item is None or (item.step == step and image in self._step_started):
                return
            self._close_step(image, item.step)
            self._running[image] = item._replace(step=step)
            self._step_started[image] = time.monotonic()
            self.version += 1

    def end(self, image: str) -> None:
        """IMAGE's current step is complete."""
        with self._lock:
            item = self._running.get(image)
            if item is not None:
                self._close_step(image, item.step)

    def _close_step(self, image: str, step: str) -> None:
        began = self._step_started.pop(image, None)
        if began is not None and step:
            self.durations.setdefault(image, {})[step] = time.monotonic() - began

    def finish(self, item: ImageResult) -> None:
        with self._lock:
            self._running.pop(item.image, None)
            self._step_started.pop(item.image, None)
            (self._done if item.result == "done" else self._failed).add(item.image)
            self._estimate = None
            self.version += 1

    def keep(self, image: str) -> None:
        """IMAGE is unchanged (inputs of the pin): it is not built."""
        with self._lock:
            self._kept.add(image)
            self.version += 1

    def output(self, image: str, text: str) -> None:
        """A line about IMAGE (tty mode keeps the last one for the view)."""
        with self._lock:
            item = self._running.get(image)
            if item is not None:  # shown at the view's next redraw, within a second
                self._running[image] = item._replace(last=text.rsplit("\n", 1)[-1])

    def left(self) -> float | None:
        """Seconds the rest of the run should take, or None without a history."""
        with self._lock:
            return self._left(time.monotonic())

    def _left(self, now: float) -> float | None:
        if self.costs is None:
            return None
        # Between two events the estimate only counts down: work it out anew
        # after each start or finish, and every 5 s otherwise (an image that
        # runs past its record then holds it up).
        if self._estimate is not None and now - self._estimate[1] < 5.0:
            return max(self._estimate[0] - (now - self._estimate[1]), 0.0)
        remaining = remaining_images(
            self._order, self._graph, self._done, self._failed, self._running, self._schedule.keep_going
        )
        elapsed = {image: now - item.started for image, item in self._running.items()}
        left = estimate_left(remaining, self._graph, self.costs, self._schedule.slots(), elapsed)
        self._estimate = (left, now)
        return left

    def state(self) -> ViewState:
        with self._lock:
            now = time.monotonic()
            running = tuple(sorted(self._running.values(), key=lambda item: self._position[item.image]))
            return ViewState(
                len(self._order),
                len(self._done),
                len(self._failed),
                running,
                self._started,
                self._left(now),
                self._name_width,
                len(self._kept),
            )


class LiveView:
    """--progress tty: the view below the console's lines, redrawn by `tick`
    (which the scheduler's thread calls between its waits, so the view costs
    no thread and no wake-up of its own) at most every REDRAW_SECONDS, and only
    when a start, a step or a finish changed it, or at the clock's next second
    (which also shows the images' last lines and catches a resized terminal)."""

    def __init__(self, console: Console, progress: Progress) -> None:
        self._console = console
        self._progress = progress
        self._drawn: tuple[int, int] | None = None
        self._at = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._at < REDRAW_SECONDS:
            return
        seen = (self._progress.version, int(now))
        if seen != self._drawn:
            self.draw()
            self._drawn, self._at = seen, now

    def draw(self) -> None:
        columns, rows = self._console.size()
        state, now = self._progress.state(), time.monotonic()
        lines = render_view(state, now, columns, rows, colour=self._progress.colour)
        lines = [without_secrets(line, SECRETS.forms()) for line in lines]  # its own escapes stay
        self._console.show(lines, [text_width(_ESCAPE_RE.sub("", line)) for line in lines], columns)

    def close(self) -> None:
        """Erases the view, leaving the screen as the lines printed made it."""
        self._console.show([], [])


# ---------------------------------------------------------------------------
# Side effects, 2: running commands: the children in flight, a stop, deadlines
# and output read in bounded lines.


class Children:
    """The commands the tool runs and its registry requests in flight, from every
    thread, and the request to stop the run.

    Process-wide by nature, as signals and standard output are: a signal
    handler or a failed write must reach every running command. So there is
    one, CHILDREN, and `main` starts each run with a clean one. `stop` sends
    SIGTERM to each command (its whole process group when it has its own
    session) and SIGKILL after STOP_GRACE seconds to any that is still there;
    it cuts each request that only reads at once, and one that writes (a PUT)
    after the same grace, so that the run can still say whether it took
    effect. No command or request starts after it, and no wait goes on.
    """

    def __init__(self) -> None:
        # Reentrant: a signal handler may stop the run while its thread starts a command.
        self._lock = threading.RLock()
        self._running: dict[subprocess.Popen[bytes], bool] = {}  # process -> has a session of its own
        self._requests: set[Exchange] = set()
        self._stopped = threading.Event()
        self.code = 0  # the run's exit code once stopped: 128 + N for signal N
        self.reason = ""  # the line to print about the stop ("" for none)

    def reset(self) -> None:
        with self._lock:
            self._running.clear()
            self._requests.clear()
            self._stopped.clear()
            self.code, self.reason = 0, ""

    @property
    def stopping(self) -> bool:
        return self.code != 0

    def start(self, argv: Sequence[str], own_session: bool, **options: object) -> subprocess.Popen[bytes]:
        """Starts a command (unless the run is stopping), known to `stop` until `done`."""
        import subprocess

        with self._lock:
            if self.stopping:
                raise ManageImagesError(f"stopped before running `{format_command(argv)}`")
            try:
                process: subprocess.Popen[bytes] = subprocess.Popen(
                    argv,
                    start_new_session=own_session,
                    **options,  # type: ignore[call-overload]
                )
            except FileNotFoundError:
                raise _missing_tool(argv[0]) from None
            self._running[process] = own_session
        return process

    def done(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.pop(process, None)

    def begin(self, request: Exchange) -> None:
        """Tracks a registry request (unless the run is stopping) until `end`."""
        with self._lock:
            if self.stopping:
                raise ManageImagesError(f"stopped before {request.method} {request.url}")
            self._requests.add(request)

    def end(self, request: Exchange) -> None:
        with self._lock:
            self._requests.discard(request)

    def sleep(self, seconds: float, what: str) -> None:
        """Waits `seconds`, unless the run stops first: then raises, so that `what` never starts."""
        if self._stopped.wait(seconds) or self.stopping:
            raise ManageImagesError(f"stopped before {what}")

    def stop(self, code: int, reason: str) -> None:
        """Stops the run: the first call's code and reason are the run's."""
        with self._lock:
            if not self.stopping:
                self.code, self.reason = code, reason
            running = list(self._running.items())
            requests = list(self._requests)
        self._stopped.set()
        self._signal(running, signal.SIGTERM)
        for request in requests:
            if not request.writes:
                request.cut("stop")
        if running or requests:
            timer = threading.Timer(STOP_GRACE, self._kill, (running, requests))
            timer.daemon = True
            timer.start()

    def _kill(
        self, running: Sequence[tuple[subprocess.Popen[bytes], bool]], requests: Iterable[Exchange]
    ) -> None:
        self._signal(running, signal.SIGKILL)
        for request in requests:
            request.cut("stop")

    def _signal(self, running: Sequence[tuple[subprocess.Popen[bytes], bool]], number: int) -> None:
        for process, own_session in running:
            if process.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if own_session:
                    os.killpg(process.pid, number)
                else:
                    os.kill(process.pid, number)

    def wait(self, timeout: float = STOP_GRACE + 5) -> None:
        """Returns once no command runs (or after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return
            time.sleep(0.02)


CHILDREN = Children()


def occupy_closed_descriptors() -> None:
    """Opens /dev/null on standard input, output or error if one is closed
    (`>&-`), so no file the tool opens can take its number and receive what
    is printed; `sys.stdout` stays None, and the Console stops the run at
    its first line."""
    for number in (0, 1, 2):
        try:
            os.fstat(number)
        except OSError:
            descriptor = os.open(os.devnull, os.O_RDWR)
            if descriptor != number:
                os.dup2(descriptor, number)
                os.close(descriptor)


def _missing_tool(name: str) -> ManageImagesError:
    hints = {
        "docker": "install Docker (https://docs.docker.com/engine/install/) and try again",
        "git": "install git and try again",
    }
    return ManageImagesError(f"`{name}` not found on PATH: {hints.get(name, 'install it')}")


def capped_lines(stream: IO[bytes], limit: int) -> Iterator[bytes]:
    """The lines of `stream`, each cut to its first `limit` bytes: a command that prints
    an endless line costs no more memory than one line of `limit` bytes."""
    while line := stream.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
        yield line


class Runner:
    """Runs the side-effecting commands of a run and prints its lines.

    It holds the console, the running child processes and the stop flag. In a
    dry run a command is only printed.
    """

    def __init__(
        self,
        settings: Settings,
        console: Console,
        report: Report,
        prefix_output: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.console = console
        self.report = report
        self.prefix_output = prefix_output
        self.progress = progress or Progress()
        self.notes: dict[str, str] = {}  # image -> what the summary notes about it
        self.planned_files: dict[str, list[str]] = {}  # image -> files its update changes (or would)
        self.written_files: dict[str, list[str]] = {}  # image -> files its update did change
        self.identities: dict[str, Identity] = {}  # image -> how it compares with its pin
        # image -> platform -> how it compares with its pin, for an image built for several
        self.platform_identities: dict[str, dict[str, Identity]] = {}
        self.inputs: dict[str, Inputs] = {}  # image -> what its build read, and its pin's
        # Without --update_references, the images of the run its dependents are built on, and
        # what each dependent builds on in place of the pin its Dockerfile names.
        self.rebasing: frozenset[str] = frozenset()
        self.built_on: dict[str, str] = {}  # image -> URL@DIGEST or URL:TAG
        self.engine: Engine | None = None  # what builds, when a step needs to know
        # What each image is built for (`run_platforms`); an image without an entry: the engine's.
        self.platforms: Mapping[str, tuple[str, ...]] = {}
        self.selected: Sequence[str] = ()  # the images asked for, before their dependents were added
        # --builder: each builder, and the engine found on it; `on` sends a view of this runner there.
        self.builders: dict[str, Builder] = {}
        self.engines: dict[str, Engine | None] = {}
        self.builder = ""  # the builder this runner's docker commands go to ("": DOCKER_HOST's engine)
        self.home = settings  # the run's own settings, for the registry (one client for all builders)

    def say(self, text: str, image: str = "") -> None:
        """Prints a line, prefixed with `[IMAGE] ` when images run in parallel
        (--progress plain; tty shows an image's last line in the view, quiet
        none), and adds a line about an image to its log."""
        progress = self.progress
        if image and progress.logs is not None:
            progress.logs.write(image, text)
        if progress.mode == "plain" or (progress.mode == "tty" and not image):
            self.console.line(text, f"[{image}] " if self.prefix_output and image else "")
        elif image and progress.mode == "tty":
            progress.output(image, text)

    def begin(self, image: str, step: str) -> None:
        """IMAGE starts STEP (for the view, and for the durations it records)."""
        self.progress.begin(image, step)

    def note(self, image: str, text: str) -> None:
        """Adds `text` to the image's note in the summary (each image is one thread's)."""
        self.notes[image] = f"{self.notes[image]}; {text}" if image in self.notes else text

    def registry(self) -> RegistryClient:
        """The run's registry client (one per run; see `registry_client`)."""
        return registry_client(self.home)

    def on(self, builder: str) -> Runner:
        """This runner with every docker command and question sent to BUILDER (see
        `Builder.environ`), all else shared: the console, the progress, and what the run
        learns of each image (each image is one thread's). Itself for ""."""
        if not builder:
            return self
        import copy

        view = copy.copy(self)
        view.settings = self.home._replace(env=self.builders[builder].environ(self.home.env or os.environ))
        view.engine, view.builder = self.engines.get(builder), builder
        return view

    def scratch(self) -> Path:
        """A folder of this run's own (build metadata), removed by `run_steps` at the end."""
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"manage_images.{os.getpid()}"
        if not self.settings.dry_run:
            folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def run(self, argv: Sequence[str], image: str = "", interactive: bool = False) -> list[str]:
        """Runs a side-effecting command, streaming its merged output line by line;
        returns its last lines (none in a dry run).

        Each command gets a session of its own, so a Ctrl-C reaches this tool
        alone, which then stops it; an `interactive` one (gcloud may ask a
        question) keeps the terminal instead.
        """
        where = f" on {self.builder}" if self.builder and tuple(argv[:1]) == ("docker",) else ""
        self.say(f"Running{where}: `{format_command(argv)}`", image)
        if self.settings.dry_run:
            return []
        import subprocess

        env = os.environ if self.settings.env is None else self.settings.env
        started, env = started_command(argv, self.engine, env)
        # An interactive command shares our process group: it is signalled alone, never its group.
        process = CHILDREN.start(
            started,
            not interactive,
            cwd=self.settings.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=None if interactive else subprocess.DEVNULL,
        )
        tail: collections.deque[str] = collections.deque(maxlen=20)
        try:
            assert process.stdout is not None  # stdout=PIPE
            # A build prints whatever its steps print: data, never escapes for our terminal.
            # (At most 4 bytes a character in UTF-8.)
            for raw in capped_lines(process.stdout, 4 * OUTPUT_LINE_MAX):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                line = outside_text(text, SECRETS.forms(), OUTPUT_LINE_MAX)
                tail.append(line)
                self.say(line, image)
            returncode = process.wait()
        finally:
            CHILDREN.done(process)
        if returncode != 0:
            raise CommandError(argv, returncode, diagnose(argv, tail, self.settings.registry))
        return list(tail)


def capture_bytes(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    each: Callable[[bytes], None] | None = None,
    stdin: Callable[[IO[bytes]], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Runs a read-only command (also in a dry run) and returns its output as bytes, within
    `timeout` seconds (COMMAND_TIMEOUT unless given); with `each`, every NUL-terminated
    record of its standard output is handed to `each` as soon as it is read, while the
    command runs on (and the output returned holds none). With `stdin` (and `each`), its
    standard input is a pipe, handed to `stdin` as the command starts: whoever holds it
    writes to it, from any thread, and closes it."""
    import subprocess

    timeout = COMMAND_TIMEOUT if timeout is None else timeout
    pipe = subprocess.PIPE
    assert stdin is None or each is not None  # communicate() would close the pipe at once
    process = CHILDREN.start(
        argv,
        False,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else pipe,
        stdout=pipe,
        stderr=pipe,
    )
    try:
        if stdin is not None:
            assert process.stdin is not None  # stdin=PIPE
            stdin(process.stdin)
        if each is None:
            stdout, stderr = process.communicate(timeout=timeout)
        else:
            stdout, stderr = b"", _records(process, each, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        if each is None:  # else `_records` has killed and waited for it (its input is closed)
            process.communicate()
        raise ManageImagesError(
            f"`{format_command(argv)}` did not finish within {timeout} s; "
            "check what holds it up (a lock, a network file system) and run again"
        ) from None
    finally:
        CHILDREN.done(process)
    if process.returncode < 0:  # killed by signal N: 128 + N, wherever it runs
        raise CommandError(argv, process.returncode)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _records(process: subprocess.Popen[bytes], each: Callable[[bytes], None], timeout: float) -> bytes:
    """Hands `each` every NUL-terminated record of the process's standard output
    as it comes, gathers its standard error and waits for the process to end;
    returns its standard error. Raises subprocess.TimeoutExpired after
    `timeout` seconds in all, counted from when its standard input, if a
    pipe, is closed (until then it waits for questions, not on itself); on
    any error the process is killed first."""
    import selectors
    import subprocess

    assert process.stdout is not None and process.stderr is not None
    deadline, errors, rest, asked = time.monotonic() + timeout, [], b"", False
    try:
        with selectors.DefaultSelector() as selector:
            for stream in (process.stdout, process.stderr):
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                asking = process.stdin is not None and not process.stdin.closed
                if asking or asked:  # looked at again each second at most; then from its close
                    deadline = time.monotonic() + timeout
                asked = asking
                ready = selector.select(min(deadline - time.monotonic(), 1.0))
                if not ready and not asking and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(process.args, timeout)
                for key, _ in ready:
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is process.stderr:
                        errors.append(chunk)
                    else:
                        *records, rest = (rest + chunk).split(b"\0")
                        for record in records:
                            each(record)
        if rest:  # a last record without its NUL
            each(rest)
        process.wait(max(deadline - time.monotonic(), 0))
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()
        process.stderr.close()
    return b"".join(errors)


def capture(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a read-only command (also in a dry run) and returns its output as text."""
    import subprocess

    result = capture_bytes(argv, cwd, env, timeout)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


# ---------------------------------------------------------------------------
# Side effects, 3: reading git: the repository, its index, what changed since a
# revision, which registry the tree names.


def git(
    root: Path,
    *args: str,
    each: Callable[[bytes], None] | None = None,
    stdin: Callable[[IO[bytes]], None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Runs a read-only git command in `root`, asked as `git_argv` and `git_environment`
    say (`each`, `stdin`: as `capture_bytes` hands them the output's records and the input;
    git fed questions on its input then writes its answers a block at a time, not each
    at once: GIT_FLUSH=0)."""
    env = git_environment(os.environ)
    if stdin is not None:
        env["GIT_FLUSH"] = "0"
    return capture_bytes(git_argv(root, *args), env=env, each=each, stdin=stdin)


def find_repo_root(start: Path) -> Path:
    """The top of the git work tree holding `start`, whatever GIT_DIR says;
    git's own refusal (a repository owned by another user) passed on with its fix."""
    result = git(start, "rev-parse", "--show-toplevel", "--absolute-git-dir")
    if result.returncode != 0:
        raise ManageImagesError(repository_refusal(str(start), result.stderr))
    top, git_dir = (os.fsdecode(line) for line in result.stdout.split(b"\n")[:2])
    for name, found in (("GIT_DIR", git_dir), ("GIT_WORK_TREE", top)):
        value = os.environ.get(name)
        if value is not None and os.path.realpath(value) != os.path.realpath(found):
            error_line(
                f"warning: ignoring {name}={shown(value)}: the tool works on the repository at "
                f"{shown(top)} (--repo_root, or the one holding the current folder)"
            )
    return Path(top)


def repository_refusal(start: str, stderr: bytes) -> str:
    """The one line for git refusing to find a repository from `start`."""
    text = stderr.decode("utf-8", "replace")
    if "not a git repository" in text:
        return f"{shown(start)} is not inside a git work tree: run from the repository or pass --repo_root"
    reason = git_failure(stderr).replace("fatal: ", "") or " ".join(text.split()) or "no reason given"
    fixes = [line.strip() for line in text.splitlines() if line.strip().startswith("git config ")]
    fix = f"if you trust it, run `{fixes[0]}` (or run as its owner)" if fixes else "fix that and run again"
    return f"git refuses to work in {shown(start)}: {reason}; {fix}"


def git_output(
    root: Path,
    *args: str,
    ok: tuple[int, ...] = (0,),
    shown_as: str = "",
    each: Callable[[bytes], None] | None = None,
    stdin: Callable[[IO[bytes]], None] | None = None,
) -> bytes:
    """What a git command prints on stdout (`shown_as`: the command as an error
    names it; with `each`, its records go to `each` as it prints them instead;
    `stdin` as `capture_bytes` says).

    git's exit status decides, and its `error:` and `fatal:` lines: `git
    grep` reports a file it cannot read only with one, and still exits 0, and
    a file it skipped must not be missed. Warnings (line ends that
    `core.autocrlf` would change) and traces (GIT_TRACE) are not failures.
    """
    result = git(root, *args, each=each, stdin=stdin)
    failure = git_failure(result.stderr)
    if result.returncode not in ok or failure:
        said = failure or " ".join(result.stderr.decode("utf-8", "replace").split())
        raise ManageImagesError(
            f"`{shown_as or format_command(('git', *args))}` failed in {shown(str(root))}: "
            f"{said or f'exit code {result.returncode}'}; fix the cause and run again"
        )
    return result.stdout


def git_lines(root: Path, *args: str, ok: tuple[int, ...] = (0,), shown_as: str = "") -> list[str]:
    """The NUL-separated paths a git command prints, as str that round-trip to the bytes."""
    output = git_output(root, *args, ok=ok, shown_as=shown_as)
    return [os.fsdecode(path) for path in output.split(b"\0") if path]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: `taskset`, a container's
    cpuset), or the machine's where the system does not say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS; a sandbox that refuses the call
        return os.cpu_count() or 1


def grep_registry(
    root: Path, registry: str, *options: str, each: Callable[[str], None] = lambda path: None
) -> list[str]:
    """The tracked files that name `REGISTRY/`, in UTF-8 or UTF-16 text or in
    binary data, populated submodules included (`options`: `--cached`); each
    is also handed to `each` as soon as git names it, while git greps on (the
    caller's work on the first files overlaps git's on the rest; it is lost
    if git then fails)."""
    args = ("grep", *options, "-l", "-z", "--no-color", "--no-textconv", "--recurse-submodules")
    what = format_command(("git", *args, "-e", f"{registry}/"))
    args += ("--threads", str(grep_threads(usable_cpus())))
    named: list[str] = []

    def found(record: bytes) -> None:
        if record:
            named.append(os.fsdecode(record))
            each(named[-1])

    try:
        pattern = registry_grep_pattern(registry)
        git_output(root, *args, "-P", "-e", pattern, "--", ok=(0, 1), shown_as=what, each=found)
        return named
    except ManageImagesError as error:
        if "Perl-compatible" not in str(error):
            raise
    error_line("warning: this git cannot search with Perl regexes (PCRE), so UTF-16 files are not searched")
    git_output(root, *args, "-F", "-e", f"{registry}/", "--", ok=(0, 1), shown_as=what, each=found)
    return named


# An index entry of `git ls-files -v -z` marked skip-worktree (S, s) or assume-unchanged (lower case).
_MARKED_RE = re.compile(rb"(?<![^\0])([Sa-z]) ([^\0]+)")


def index_marks(root: Path, named: Sequence[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """The tracked files marked skip-worktree (a sparse checkout hides them),
    those marked assume-unchanged, and which of `named` git tracks, from one
    listing of the index (filtered as bytes: decoding 100,000 names to keep
    none costs more than the git call)."""
    listing = git_output(root, "ls-files", "-v", "-z")
    sparse: list[str] = []
    assumed: list[str] = []
    # Each entry is a tag, a space, the path and a NUL; a tag other than H
    # marks it. Counting the entries tagged H is one pass, where the regex
    # is many: most indexes mark nothing.
    if listing.count(b"\0H ") + listing.startswith(b"H ") != listing.count(b"\0"):
        for tag, path in _MARKED_RE.findall(listing):
            (sparse if tag in b"Ss" else assumed).append(os.fsdecode(path))
    return sparse, assumed, [path for path in named if _lists(listing, os.fsencode(path))]


def _lists(listing: bytes, path: bytes) -> bool:
    """True if `git ls-files -v -z` output holds an entry for `path`, whatever its tag."""
    needle = b" " + path + b"\0"
    at = listing.find(needle)
    while at >= 0:
        if at == 1 or (at > 1 and listing[at - 2] == 0):  # the space after an entry's tag
            return True
        at = listing.find(needle, at + 1)
    return False


def changed_images(root: Path, ref: str, graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The images whose build context differs between `ref` and the work tree:
    committed or not, added, deleted or renamed files, untracked ones included,
    git-ignored ones too (docker sends them: git cannot tell whether they
    changed, so they count as a change). A fixed number of git calls,
    whatever the number of images."""
    verified = git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if verified.returncode != 0:
        raise UsageError(
            f"--changed_since: git knows no revision {ref!r} in {shown(str(root))}; fetch it or fix the name"
        )
    folder = f"{DOCKER_DIR}/"
    diff = ("diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "--no-color", "-z")
    paths = git_lines(root, *diff, ref, "--", folder)
    paths += git_lines(root, "ls-files", "--others", "-z", "--", folder)
    return images_in_paths(paths, graph)


def prod_digests_at(root: Path, ref: str, registry: str) -> dict[str, str]:
    """image -> digest, as prod_digests.txt said at `ref` (empty if it had none)."""
    result = git(root, "cat-file", "blob", f"{ref}:{PROD_DIGESTS_PATH}")
    if result.returncode != 0:
        return {}
    return pins_by_name(parse_prod_digests(result.stdout, PROD_DIGESTS_PATH, registry)[0], registry)


class UnpinnedAllowed:
    """Which paths git gives the attribute `manage-images-allow-unpinned` (.gitattributes),
    asked of one `git check-attr --stdin` as the run comes upon each: git reads its index
    (15 ms for 100,000 files) and answers while `git grep` goes on, not after it. No git
    call when nothing is asked. `close` ends the questions, `allowed` waits for the answer."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._asked: set[str] = set()
        self._fields: list[str] = []  # path, attribute, value (set, unset, unspecified or a string)
        self._pipe: IO[bytes] | None = None
        self._started = threading.Event()
        self._closed = False
        self._answer: Callable[[], bytes] | None = None

    def ask(self, paths: Iterable[str]) -> None:
        with self._lock:
            if self._closed:  # the check ended (it failed): git is never started again
                return
            new = [path for path in dict.fromkeys(paths) if path not in self._asked]
            if not new:
                return
            self._asked.update(new)
            if self._answer is None:
                self._answer = in_background(self._run)
                self._started.wait()
            if self._pipe is not None:
                try:  # buffered: git gets the questions a block at a time, the last ones at close
                    self._pipe.write(b"".join(os.fsencode(path) + b"\0" for path in new))
                except (OSError, ValueError):  # git ended early: `allowed` raises what it said
                    self._end_input()

    def __enter__(self) -> UnpinnedAllowed:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        """No more questions: git answers the last ones and ends (also when the run failed)."""
        with self._lock:
            self._closed = True
            self._end_input()

    def allowed(self) -> set[str]:
        """The paths asked that git sets the attribute for (to `set` or `true`)."""
        self.close()
        if self._answer is None:
            return set()
        self._answer()
        fields = self._fields
        return {fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] in ("set", "true")}

    def _run(self) -> bytes:
        def record(field: bytes) -> None:
            self._fields.append(os.fsdecode(field))

        def started(pipe: IO[bytes]) -> None:
            self._pipe = pipe
            self._started.set()

        try:
            args = ("check-attr", "--stdin", "-z", ALLOW_UNPINNED_ATTRIBUTE)
            return git_output(self._root, *args, each=record, stdin=started)
        finally:
            self._started.set()  # when git could not be started, too

    def _end_input(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None


def dockerfile_folders(root: Path) -> list[str]:
    """The folders of build_tools/docker that hold a Dockerfile."""
    folder = root / DOCKER_DIR
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(folder) if (Path(entry.path) / "Dockerfile").is_file())


def path_problem(root: Path, relative: str, cache: dict[str, str] | None = None) -> str:
    """Why the tracked file `relative` must not be read or written, or "".

    Every folder on the way and the file itself must be real (no symbolic
    link), so no write can land outside the work tree; the file must be a
    regular file (a FIFO would hang a read). A missing file is no problem.
    """
    cache = {} if cache is None else cache
    parts, base = relative.split("/"), os.fspath(root)  # a str: the scan asks this for a thousand files
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if prefix not in cache:
            try:
                mode = os.lstat(f"{base}/{prefix}").st_mode
            except FileNotFoundError:
                cache[prefix] = ""
                return ""
            except NotADirectoryError:
                mode = 0
            if stat.S_ISLNK(mode):
                cache[prefix] = (
                    f"{shown(prefix)} is a symbolic link, and the tool never reads or writes through one"
                )
            elif depth < len(parts) and not stat.S_ISDIR(mode):
                cache[prefix] = f"{shown(prefix)} is not a folder"
            elif depth == len(parts) and not stat.S_ISREG(mode):
                cache[prefix] = "it is not a regular file"
            else:
                cache[prefix] = ""
        if cache[prefix]:
            return cache[prefix]
    return ""


def tree_registries(root: Path) -> list[str]:
    """The registries the work tree's prod_digests.txt names; none when it is missing,
    unreadable, or reached through a symbolic link."""
    if path_problem(root, PROD_DIGESTS_PATH):
        return []
    try:
        return registries_named((root / PROD_DIGESTS_PATH).read_bytes())
    except OSError:
        return []


def resolve_registry(given: str | None, root: Path, graph: Mapping[str, Sequence[str]]) -> str:
    """The registry of the run (see `registry_to_use`); its warning, if any, on standard error."""
    registry, warning = registry_to_use(given, tree_registries(root))
    if warning:
        error_line(warning)
    too_long = registry_too_long(registry, graph)
    if too_long:
        raise UsageError(
            f"{PROD_DIGESTS_PATH} names the registry {registry}, but {too_long}; pass --registry"
        )
    return registry


# ---------------------------------------------------------------------------
# Side effects, 4: a build's context as docker sends it, read from disk.


def context_entries(folder: Path) -> list[ContextEntry]:
    """What docker sends of the build context `folder` (see `context_sent`), the same for
    every builder. Raises ValueError when that cannot be told: the classic builder and
    BuildKit would send other files (`walks_into`), or `context_sent` cannot read it."""
    sent = context_sent(folder)
    buildkit = {path: entry for path, entry in sent["buildkit"].items() if entry.kind != "parent"}
    if sent["classic"] != buildkit:
        differ = sorted(set(sent["classic"]).symmetric_difference(buildkit))
        raise ValueError(
            f"the classic builder and BuildKit would send other files for its .dockerignore "
            f"({shown(differ[0])})"
        )
    return list(sent["buildkit"].values())


def context_sent(folder: Path) -> dict[str, dict[str, ContextEntry]]:
    """What each builder (`classic`, `buildkit`) sends of the build context `folder` (the
    Dockerfile's folder), read from the file system: path -> entry for every file, link
    and folder its .dockerignore does not exclude (see `dockerignore_rules`, `ignored`),
    tracked by git or not, and, for BuildKit, the excluded folders it sends for what they
    hold. Raises ValueError for a .dockerignore, folder or file that cannot be read, a
    FIFO, socket or device, and a `Dockerfile.dockerignore` (BuildKit reads it in place
    of .dockerignore; the classic builder does not)."""
    if os.path.lexists(folder / "Dockerfile.dockerignore"):
        raise ValueError(
            "it has a Dockerfile.dockerignore, which BuildKit reads and the classic builder does not"
        )
    try:
        ignore = (folder / ".dockerignore").read_bytes()
    except FileNotFoundError:
        ignore = b""
    except OSError as error:
        raise ValueError(f"cannot read its .dockerignore: {error.strerror}") from None
    rules = dockerignore_rules(ignore)
    sent: dict[str, dict[str, ContextEntry]] = {"classic": {}, "buildkit": {}}
    _walk_context(folder, "", rules, (), frozenset(sent), (), sent)
    return sent


def _walk_context(
    folder: Path,
    relative: str,
    rules: Sequence[IgnoreRule],
    parent: tuple[bool, ...],
    builders: frozenset[str],
    above: tuple[ContextEntry, ...],
    sent: Mapping[str, dict[str, ContextEntry]],
) -> None:
    """Adds to `sent` what each of `builders` (those that walk the folder `relative`) sends
    of it. `above`: the excluded folders over it, which BuildKit sends once something in
    them is sent; `parent`: the rules the folder matched."""
    try:
        names = sorted(os.listdir(folder / relative))
    except OSError as error:
        raise ValueError(f"cannot list {shown(relative or '.')}: {error.strerror}") from None
    for name in names:
        path = f"{relative}/{name}" if relative else name
        excluded, matched = ignored(rules, path, parent)
        try:
            mode = os.lstat(folder / path).st_mode
        except OSError as error:
            raise ValueError(f"cannot read {shown(path)}: {error.strerror}") from None
        if not excluded:
            entry = _context_entry(folder / path, path, mode)
            for builder in builders:
                sent[builder][path] = entry
            if "buildkit" in builders:
                sent["buildkit"].update((item.path, item) for item in above)
            if stat.S_ISDIR(mode):
                _walk_context(folder, path, rules, matched, builders, (), sent)
        elif stat.S_ISDIR(mode):
            walking = frozenset(builder for builder in builders if walks_into(rules, path, builder))
            folder_above = ContextEntry(path, "parent", stat.S_IMODE(mode), "")
            if walking:
                _walk_context(folder, path, rules, matched, walking, (*above, folder_above), sent)


def _context_entry(path: Path, relative: str, mode: int) -> ContextEntry:
    """One sent entry: a file with its content's sha256, a link with its target, a folder."""
    import hashlib

    bits = stat.S_IMODE(mode)
    if stat.S_ISDIR(mode):
        return ContextEntry(relative, "dir", bits, "")
    if stat.S_ISLNK(mode):
        return ContextEntry(relative, "link", bits, os.fsdecode(os.readlink(path)))
    if not stat.S_ISREG(mode):
        raise ValueError(f"{shown(relative)} is a FIFO, socket or device, which this tool does not read")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(BLOCK), b""):
                digest.update(block)
    except OSError as error:
        raise ValueError(f"cannot read {shown(relative)}: {error.strerror}") from None
    return ContextEntry(relative, "file", bits, digest.hexdigest())


# ---------------------------------------------------------------------------
# Side effects, 5: the scan: the files that name the registry, looked at while
# git greps on.


def in_background(call: Callable[[], T]) -> Callable[[], T]:
    """Starts `call` in a thread of its own (it waits on child processes) and
    returns the function that waits for it: its result, or its error raised."""
    outcome: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # raised by whoever waits
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()

    def wait() -> T:
        thread.join()
        if errors:
            raise errors[0]
        return outcome[0]

    return wait


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    """Runs each call in a thread of its own; their results in order, or the
    first call's error (a later call is then left to finish on its own)."""
    waits = [in_background(call) for call in calls]
    return [wait() for wait in waits]


def scan_tree(root: Path, registry: str, unpinned: UnpinnedAllowed | None = None) -> TreeScan:
    """The tracked files that name `registry` (see TreeScan); each small file whose
    references `may_be_allowed_unpinned` is asked of `unpinned` as git greps on."""
    special = (WORKSPACE_PATH, WORKSPACE_BAZEL_PATH, PROD_DIGESTS_PATH)
    # Independent git calls at once: the listing reads only the index, the
    # grep every file; each file it names is looked at while it greps on.
    listing = in_background(lambda: index_marks(root, special))
    cache: dict[str, str] = {}
    candidates, skipped, untouched = [], [], []
    folders: dict[str, str] = {}
    heads: dict[str, bytes] = {}
    found: dict[str, list[Reference]] = {}
    marked: list[set[str]] = []

    def look_at(path: str, listed: bool) -> None:
        if not marked:
            marked.append(set(listing()[1]))
        problem = path_problem(root, path, cache)
        if problem:
            skipped.append((path, problem))
            return
        finding = untouched_file(root, path, registry, folders, path in marked[0], heads)
        if finding is not None:
            untouched.append(finding)
        elif listed:
            candidates.append(path)
            if path in heads:  # its references are found while git greps on, too
                found[path] = list(find_references(heads[path], registry))
                if unpinned is not None and may_be_allowed_unpinned(path, found[path]):
                    unpinned.ask([path])

    named = set(grep_registry(root, registry, each=lambda path: look_at(path, True)))
    sparse_list, assumed, tracked_list = listing()
    for path in assumed:
        if path not in named:
            look_at(path, False)
    hidden: list[str] = []
    sparse = set(sparse_list)
    if sparse:
        # git grep skips what a sparse checkout hides; read the index instead.
        in_index = grep_registry(root, registry, "--cached")
        hidden = [path for path in in_index if path in sparse]
    tracked = frozenset(tracked_list) - sparse
    problems = {path: why for path in special if (why := special_problem(root, path, tracked, cache))}
    # Bazel reads WORKSPACE.bazel when it exists; a link from it to WORKSPACE makes WORKSPACE the file.
    bazel = root / WORKSPACE_BAZEL_PATH
    linked = os.path.islink(bazel) and os.path.realpath(bazel) == os.path.realpath(root / WORKSPACE_PATH)
    used = not linked and (WORKSPACE_BAZEL_PATH in tracked or os.path.lexists(bazel))
    workspace = WORKSPACE_BAZEL_PATH if used else WORKSPACE_PATH
    return TreeScan(
        tuple(candidates),
        tuple(skipped),
        tuple(hidden),
        tracked,
        problems,
        tuple(untouched),
        workspace,
        heads,
        found,
    )


def special_problem(root: Path, relative: str, tracked: Container[str], cache: dict[str, str]) -> str:
    """Why WORKSPACE, WORKSPACE.bazel or prod_digests.txt, present, cannot be used, or ""."""
    problem = path_problem(root, relative, cache)
    if not problem and relative not in tracked and (root / relative).exists():
        problem = "git does not track it, and the tool edits tracked files only"
    return problem


def submodule_of(root: Path, relative: str, folders: dict[str, str]) -> str:
    """The submodule (a folder holding `.git`) whose work tree holds `relative`, or ""."""
    parts, base = relative.split("/")[:-1], os.fspath(root)
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if prefix not in folders:
            folders[prefix] = prefix if os.path.lexists(f"{base}/{prefix}/.git") else ""
        if folders[prefix]:
            return folders[prefix]
    return ""


def untouched_file(
    root: Path,
    relative: str,
    registry: str,
    folders: dict[str, str],
    assumed: bool,
    heads: dict[str, bytes] | None = None,
) -> Finding | None:
    """Why a tracked regular file that may name the registry is never rewritten
    (it is in a submodule, marked assume-unchanged, binary or UTF-16), or None.

    An assume-unchanged file `git grep` did not list may still name it in the
    work tree (git greps its staged copy): it is read to know. A file that is
    none of these and shorter than the bytes read to tell is kept in `heads`,
    whole: --check reads it from there.
    """
    submodule = submodule_of(root, relative, folders)
    if submodule:
        message = (
            f"it is in the submodule {shown(submodule)}, and the tool never writes inside a submodule; "
            "update it in that repository, then commit the new submodule commit here"
        )
        return Finding(relative, 1, message, "submodule")
    if assumed:
        data = (root / relative).read_bytes()
        needle = f"{registry}/".encode()
        if needle not in data and b"\0".join(bytes([byte]) for byte in needle) not in data:
            return None
        message = (
            "git marks it assume-unchanged, so git would never see the tool's change to it; run "
            f"`git update-index --no-assume-unchanged {shown(relative)}`, then run again"
        )
        return Finding(relative, 1, message, "assume-unchanged")
    head = read_head(f"{os.fspath(root)}/{relative}", BINARY_PEEK)
    # UTF-16: a byte-order mark, or text whose every other byte is mostly NUL.
    if (
        head.startswith((b"\xff\xfe", b"\xfe\xff"))
        or max(head[::2].count(0), head[1::2].count(0)) * 8 > len(head) * 3
    ):
        message = "it is UTF-16 text, which the tool cannot rewrite byte for byte; save it as UTF-8"
        return Finding(relative, 1, message, "encoding")
    if b"\0" in head:
        message = (
            f"git takes it for binary data (a NUL byte in its first {BINARY_PEEK} bytes), which the tool "
            "never rewrites (a digest inside may be covered by a checksum); update it by hand"
        )
        return Finding(relative, 1, message, "binary")
    if heads is not None and len(head) < BINARY_PEEK:
        heads[relative] = head
    return None


# ---------------------------------------------------------------------------
# Side effects, 6: the repository lock, and files read whole, by their head or in
# pieces of whole lines.


class RepositoryLock:
    """The lock every run that changes files holds, in the git directory.

    Like git's `index.lock`, one run at a time; unlike it, the lock is an
    flock(), which the kernel releases when its holder dies, however it dies,
    so a killed run never blocks the next. The file names the holder (for the
    message a second run prints) and the temporary files it is writing, which
    the next run removes when the holder was killed before it could.
    """

    def __init__(self, path: Path, descriptor: int, header: str) -> None:
        self.path = path
        self._descriptor = descriptor
        self._header = header

    @classmethod
    def acquire(cls, root: Path, command: str, console: Console) -> RepositoryLock:
        path = root / os.fsdecode(git_output(root, "rev-parse", "--git-path", LOCK_NAME).rstrip(b"\n"))
        while True:
            descriptor = _open_lock(path)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_lock(descriptor)[0] or "a process that is starting"
                os.close(descriptor)
                if isinstance(error, BlockingIOError):
                    raise ManageImagesError(
                        f"another manage_images.py run holds the repository lock {path} ({holder}); "
                        f"wait for it to finish and run again (if no such process runs, delete {path})"
                    ) from None
                raise ManageImagesError(f"cannot lock {path}: {error.strerror}") from None
            try:
                same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its holder deleted it as we opened it: take a new one
                break
            os.close(descriptor)
        holder, temporaries = _read_lock(descriptor)
        if holder:
            removed = 0
            for temporary in temporaries:
                if TEMPORARY_RE.match(temporary.name):
                    try:
                        temporary.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
            console.line(
                f"A run that was killed left {path} ({holder}); removed the {removed} temporary "
                "files it was writing. Its files each hold their old or their new content."
            )
        lock = cls(path, descriptor, f"pid {os.getpid()}: {command}\n")
        try:
            lock.record(())
        except ManageImagesError:
            lock.release()
            raise
        return lock

    def record(self, temporaries: Iterable[Path]) -> None:
        """Notes the temporary files about to be written, before they exist; one line when
        it cannot (a full disk), before any of them is written."""
        text = self._header + "".join(f"{os.fsencode(path).hex()}\n" for path in temporaries)
        try:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, text.encode(), 0)
        except OSError as error:
            raise ManageImagesError(
                f"cannot write the repository lock {shown(str(self.path))}: {error.strerror}; make room "
                "there (or fix its permissions) and run again; the files it was to change are as they were"
            ) from None

    def release(self) -> None:
        try:
            os.unlink(self.path)
        finally:
            os.close(self._descriptor)


def _open_lock(path: Path) -> int:
    """The lock file, opened (made if need be) for reading and writing: never through a
    symbolic link, nor a file that is no lock (a FIFO, a device, a file linked elsewhere),
    since it is written over."""
    try:
        descriptor = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644
        )
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise ManageImagesError(
                f"cannot create the repository lock {shown(str(path))}: {error.strerror}; every run that "
                "changes files takes it in the git directory, so run as a user who may write there "
                "(the checkout's owner) or fix its permissions"
            ) from None
        descriptor = -1
    found = os.fstat(descriptor) if descriptor >= 0 else None
    if found is None or not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        if descriptor >= 0:
            os.close(descriptor)
        raise ManageImagesError(
            f"the repository lock {shown(str(path))} is no lock this tool made (a symbolic link, a FIFO, a "
            "device or a file with other names), and writing it would write there; remove it and run again"
        )
    return descriptor


def _read_lock(descriptor: int) -> tuple[str, list[Path]]:
    """The holder a lock file names, and the temporary files it lists (none from a file
    bigger than LOCK_MAX_BYTES: the tool never writes one)."""
    data = bytearray()
    while len(data) <= LOCK_MAX_BYTES and (chunk := os.pread(descriptor, 65536, len(data))):
        data += chunk
    if len(data) > LOCK_MAX_BYTES:
        data = data.partition(b"\n")[0]
    header, *rest = data.decode("utf-8", "replace").splitlines() or [""]
    temporaries = []
    for line in rest:
        try:
            temporaries.append(Path(os.fsdecode(bytes.fromhex(line))))
        except ValueError:
            continue
    return cut(header, ERROR_MAX), temporaries


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`; ValueError when it is no regular file (a FIFO
    would hang the read, a device never end it) or holds more than `limit` bytes."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ValueError("it is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it is bigger than {limit} bytes")
    return data


def read_head(path: Path | str, size: int) -> bytes:
    """The first `size` bytes of a file (all of a shorter one), without a
    buffered file object: the scan reads a thousand heads per run."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = b""
        while len(head) < size:
            chunk = os.read(descriptor, size - len(head))
            if not chunk:
                break
            head += chunk
        return head
    finally:
        os.close(descriptor)


def _pieces(descriptor: int, size: int) -> Iterator[tuple[bytes, int]]:
    """The file's bytes in pieces of whole lines (each ends with a newline, but
    the last), each about `size` bytes or one line, as (bytes, end): the piece
    is bytes[:end], one read at its offset, and what follows `end` starts the
    next piece, read again from there (no piece is copied). A big file is never
    whole in memory, and no reference spans two pieces (its grammar holds no
    newline, and a newline before it is a boundary, as the start of a piece is)."""
    # A small file is read in one piece of its size: a read of `size` bytes
    # would first allocate all of them.
    size = min(size, max(os.fstat(descriptor).st_size + 1, 1 << 12))
    offset, want = 0, size
    while True:
        chunk = os.pread(descriptor, want, offset)
        if not chunk:
            return
        end = chunk.rfind(b"\n") + 1
        if len(chunk) < want and not os.pread(descriptor, 1, offset + len(chunk)):
            end = len(chunk)  # the end of the file: its last line needs no newline
        elif not end:  # a line longer than `want`: read more of it
            want *= 2
            continue
        yield chunk, end
        offset, want = offset + end, size


def _newlines(descriptor: int, start: int, end: int) -> int:
    """How many newlines the file holds between offsets `start` and `end`, read again."""
    count = 0
    while start < end:
        block = os.pread(descriptor, min(BIG_FILE, end - start), start)
        if not block:
            break
        count += block.count(b"\n")
        start += len(block)
    return count


def referencing_pieces(path: Path, registry: str) -> Iterator[tuple[int, bytes, list[Reference]]]:
    """The pieces of a file (`_pieces`) that hold a reference, each with the
    number of its first line and its references (the bytes may go on past the
    piece, with no reference of it there). Lines are counted only as
    far as the last such piece (the bytes between two of them are read
    again to count theirs), so a big file costs what one read of it does."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        line, counted, offset = 1, 0, 0  # `line` is the number of the line starting at `counted`
        for piece, end in _pieces(descriptor, BIG_FILE):
            references = [
                reference for reference in find_references(piece, registry) if reference.start < end
            ]
            if references:
                line += _newlines(descriptor, counted, offset)
                yield line, piece, references
                line, counted = line + piece.count(b"\n", 0, end), offset + end
            offset += end
    finally:
        os.close(descriptor)


def read_file(path: Path) -> bytes:
    """A whole file's bytes; the one place files are read for rewriting (tests count the calls)."""
    return path.read_bytes()


class TrackedFiles:
    """The bytes of the files one run reads for rewriting, each read from disk
    once, and which images each candidate names, found in one pass over it."""

    def __init__(self, root: Path, scan: TreeScan, registry: str) -> None:
        self.root = root
        self.scan = scan
        self.registry = registry
        self._contents: dict[str, bytes] = {}
        self._references: dict[str, list[Reference]] = {}
        self._naming: dict[str, list[str]] | None = None

    def read(self, relative: str) -> bytes:
        if relative not in self._contents:
            path = self.root / relative
            self._contents[relative] = read_file(path) if path.is_file() else b""
        return self._contents[relative]

    def read_by_the_scan(self) -> None:
        """Takes the files the scan read whole (`TreeScan.heads`) as read now:
        for a run that rewrites them as soon as it has scanned (--only_references),
        a second read would only be later. What changes on disk meanwhile is
        caught when the files are replaced, as for any read."""
        for relative, data in self.scan.heads.items():
            self._contents.setdefault(relative, data)
            if relative in self.scan.found:
                self._references.setdefault(relative, list(self.scan.found[relative]))

    def written(self, relative: str, data: bytes) -> None:
        """Records what the run wrote, so later images start from it."""
        self._contents[relative] = data
        self._references.pop(relative, None)

    def reread(self, relative: str) -> None:
        """Forgets what the run knew of a file that changed on disk: it is read again, and what it names found anew."""
        self._contents.pop(relative, None)
        self._references.pop(relative, None)
        if self._naming is not None:
            for paths in self._naming.values():
                if relative in paths:
                    paths.remove(relative)
            if relative in self.scan.candidates:
                for name in pinned_names(self.references(relative)):
                    self._naming.setdefault(name, []).append(relative)

    def references(self, relative: str) -> list[Reference]:
        """The references in a file as the run last read or wrote it, found once."""
        if relative not in self._references:
            self._references[relative] = list(find_references(self.read(relative), self.registry))
        return self._references[relative]

    def naming(self, image: str) -> list[str]:
        """The candidates with a reference that pins `image` (`find_references`).

        A rewrite changes digests, never names, so the index built on the
        first call holds for the whole run.
        """
        if self._naming is None:
            self._naming = {}
            for path in self.scan.candidates:
                for name in pinned_names(self.references(path)):
                    self._naming.setdefault(name, []).append(path)
        return self._naming.get(image, [])


# ---------------------------------------------------------------------------
# Side effects, 7: writing files all or nothing: staged beside their targets,
# replaced, read back, put back on a failure.


def unwritable_reason(path: str, folders: dict[str, bool] | None = None) -> str | None:
    """Why `path` must not be replaced, or None (`folders`: which folders are writable, as found).

    A file without any write bit is taken as read-only even for root, who could
    otherwise replace it; an immutable file or a read-only folder fails access().
    A str, not a Path: a rewrite asks this for a thousand files.
    """
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):  # as Path.exists
            raise
        mode = None
    if mode is not None and (mode & 0o222 == 0 or not os.access(path, os.W_OK)):
        return "it is read-only"
    folders, parent = {} if folders is None else folders, os.path.dirname(path)
    if parent not in folders:
        folders[parent] = os.access(parent, os.W_OK | os.X_OK)
    if not folders[parent]:
        return f"its folder {shown(parent)} is not writable"
    return None


def temporary_beside(path: Path) -> Path:
    return path.with_name(f".manage_images.{os.urandom(6).hex()}.tmp")


class Edits:
    """File changes gathered for one image, applied together once all are known.

    Edits with a parent read through the parent's pending changes and, with
    `merge`, hand theirs to it: a run that writes once (--only_references)
    gathers each image's edits that way, keeping a failed image's out.
    """

    def __init__(self, files: TrackedFiles, parent: Edits | None = None) -> None:
        self.files = files
        self.parent = parent
        self._changes: dict[str, FileChange] = {}

    def read(self, relative: str) -> bytes:
        if relative in self._changes:
            return self._changes[relative].new()
        return self.parent.read(relative) if self.parent else self.files.read(relative)

    def edit(self, relative: str, transform: Callable[[bytes], bytes]) -> None:
        current = self.read(relative)
        old = self._changes[relative].old if relative in self._changes else current
        self._changes[relative] = FileChange.whole(relative, old, transform(current))

    def references(self, relative: str) -> list[Reference]:
        """The references in the file as this Edits reads it; those on disk are found once per run."""
        if relative in self._changes:
            return list(find_references(self.read(relative), self.files.registry))
        return self.parent.references(relative) if self.parent else self.files.references(relative)

    def patch(self, relative: str, splices: Sequence[Splice]) -> None:
        """Puts `splices` (offsets into the file as this Edits reads it) in the file."""
        if relative in self._changes:  # seldom (prod_digests.txt): on top of the pending content
            self.edit(relative, lambda data: apply_splices(data, splices))
        else:
            self._changes[relative] = FileChange(relative, self.read(relative), tuple(splices))

    def naming(self, image: str) -> list[str]:
        """Files with a pending edit whose new content holds a reference that pins `image`."""
        own = [path for path in self._changes if image in pinned_names(self.references(path))]
        inherited = self.parent.naming(image) if self.parent else []
        return own + [path for path in inherited if path not in own]

    def changes(self) -> list[FileChange]:
        return [change for change in self._changes.values() if change.changed()]

    def merge(self) -> None:
        """Hands every pending change to the parent."""
        assert self.parent is not None
        for path, change in self._changes.items():
            if path in self.parent._changes:
                change = FileChange.whole(path, self.parent._changes[path].old, change.new())
            self.parent._changes[path] = change


def _write_new(
    path: Path, change: FileChange, mode: int, base: Path | None = None, like: Path | None = None
) -> None:
    """Creates `path` holding exactly the change's new content, with `mode`, on disk (fsync).

    A big file whose change is patchable (a digest rewrite) is copied from
    `base` by the kernel (copy_file_range, as cp does) and its splices are
    written over the copy; reading the copy back must then give the new
    content, or it is written whole. Its new content is never built whole.
    With `like`, the file it is to replace, it gets that file's owner, group,
    mode, ACL and extended attributes, or it raises OSError naming the one it
    could not keep.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        patched = (
            base is not None
            and len(change.old) >= BIG_FILE
            and change.patchable()
            and _copy_and_patch(descriptor, base, change)
        )
        if not patched:
            os.ftruncate(descriptor, 0)
            data = change.new()
            view, written = memoryview(data), 0
            while written < len(view):
                written += os.write(descriptor, view[written : written + (1 << 24)])
        os.fsync(descriptor)
        if like is None:
            os.fchmod(descriptor, mode)
        else:  # which sets the mode, after the owner
            _keep_metadata(descriptor, like)
    finally:
        os.close(descriptor)


def _attributes(path: Path | int) -> list[str]:
    """The extended attributes (the ACL among them) a file has; none where the file system keeps none."""
    try:
        return os.listxattr(path, follow_symlinks=False) if isinstance(path, Path) else os.listxattr(path)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _keep_metadata(descriptor: int, source: Path) -> None:
    """Gives the open new file what made `source` the user's: owner and group
    (which only root, or a member of the group, may set), mode, ACL
    (`system.posix_acl_access`, which also sets the group's bits of the mode)
    and every other extended attribute, in that order (a chown clears the
    set-user-ID bit and file capabilities). Raises OSError naming what it
    could not keep; a group never ends up with more permissions than it had."""
    old = os.stat(source, follow_symlinks=False)
    new = os.fstat(descriptor)
    if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
        try:
            os.fchown(descriptor, old.st_uid, old.st_gid)
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot keep its owner and group (uid {old.st_uid}, gid {old.st_gid}): {error.strerror}; "
                "run as its owner, or as root",
            ) from None
    os.fchmod(descriptor, stat.S_IMODE(old.st_mode))
    names = _attributes(source)
    for name in set(_attributes(descriptor)) - set(names):  # a default ACL the folder gave it
        os.removexattr(descriptor, name)
    for name in names:
        try:
            os.setxattr(descriptor, name, os.getxattr(source, name, follow_symlinks=False))
        except OSError as error:
            what = "ACL" if name.startswith("system.posix_acl") else f"extended attribute {name}"
            raise OSError(error.errno, f"cannot keep its {what}: {error.strerror}") from None
    mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
    if mode != stat.S_IMODE(old.st_mode):
        raise OSError(errno.EPERM, f"cannot keep its mode {stat.S_IMODE(old.st_mode):o} (it became {mode:o})")


def _copy_and_patch(descriptor: int, base: Path, change: FileChange) -> bool:
    """Copies `base` into `descriptor` in the kernel and writes the change's
    splices over it; True if the result then reads back as the new content."""
    size = len(change.old)
    try:
        with open(base, "rb") as source:
            copied = 0
            while copied < size:
                count = os.copy_file_range(source.fileno(), descriptor, size - copied, copied, copied)
                if count == 0:
                    return False
                copied += count
    except OSError:  # no copy_file_range here, or across file systems: write it whole
        return False
    for start, _, piece in change.splices:
        os.pwrite(descriptor, piece, start)
    # `base` may have changed since it was read: the copy must be exactly the new content.
    return all(os.pread(descriptor, BLOCK, offset) == block for offset, block in new_blocks(change, BLOCK))


class Staged(NamedTuple):
    """A file about to be replaced: its change, the target, the temporary file
    holding the new content, the name the old file keeps until the commit is
    over, and whether there was an old file."""

    change: FileChange
    target: Path
    temporary: Path
    backup: Path
    existed: bool


def _each(call: Callable[[Staged], T], staged: Sequence[Staged]) -> list[T]:
    """`call` on every staged file, results in order; by a few threads when there
    are many (their fsyncs and folder locks then overlap: 1,000 files take a
    third of the time), each given a run of neighbouring files (a task per file
    costs the main thread more than the calls do)."""
    if len(staged) < 8:
        return [call(item) for item in staged]
    import concurrent.futures

    size = -(-len(staged) // 16)
    runs = [staged[start : start + size] for start in range(0, len(staged), size)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(runs)) as pool:
        done = pool.map(lambda run: [call(item) for item in run], runs)
        return [result for results in done for result in results]


def _stage_all(staged: Sequence[Staged], umask: int) -> list[tuple[FileChange, OSError]]:
    """Writes every temporary file; the failures, in order."""

    def stage(item: Staged) -> OSError | None:
        try:
            mode = item.target.stat().st_mode & 0o7777 if item.existed else 0o666 & ~umask
            _write_new(item.temporary, item.change, mode, item.target, item.target if item.existed else None)
        except OSError as error:
            return error
        return None

    errors = _each(stage, staged)
    return [(item.change, error) for item, error in zip(staged, errors) if error is not None]


def _holds(path: Path, data: bytes) -> bool:
    """True if the file at `path` holds exactly `data` (read in blocks, never whole;
    a small file in one read of its size, without a buffered file object)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(descriptor).st_size != len(data):
            return False
        offset = 0
        while True:
            block = os.read(descriptor, min(BLOCK * 16, len(data) - offset + 1))
            if not block:
                return offset == len(data)
            # bytes to bytes: a memcmp (bytes to a memoryview compares byte by byte: 1.7 ms a MiB)
            if block != data[offset : offset + len(block)]:
                return False
            offset += len(block)
    finally:
        os.close(descriptor)


def _replace(item: Staged) -> OSError | None:
    """Puts the new file in place, keeping the old one as `backup` (a hard link,
    else a copy of what the change was computed from, once it is checked to
    hold it); a file that did not exist is linked into place, so one created
    meanwhile is never overwritten. The error, or None."""
    change, target, temporary, backup, existed = item
    try:
        if not existed:
            os.link(temporary, target)
            os.unlink(temporary)
            return None
        try:
            os.link(target, backup, follow_symlinks=False)
        except OSError:  # no hard links here (or an append-only file, which the rename refuses)
            if not _holds(target, change.old):
                raise FileExistsError(errno.EEXIST, "it changed on disk") from None
            _write_new(backup, FileChange.whole(change.path, b"", change.old), 0o600, like=target)
        os.replace(temporary, target)
    except OSError as error:
        return error
    return None


def _replace_and_check(item: Staged) -> tuple[OSError | None, bool]:
    """`_replace`, then whether the old file (now the backup) still held what
    the change was computed from: one pass of the threads over the files."""
    error = _replace(item)
    return error, error is None and (not item.existed or _holds(item.backup, item.change.old))


def _put_back(replaced: Sequence[Staged]) -> list[str]:
    """Puts every old file back; the paths that could not be (their old content kept as the backup)."""
    failed = []
    for item in reversed(replaced):
        try:
            if item.existed:
                os.replace(item.backup, item.target)
            else:
                os.unlink(item.target)
        except OSError:
            failed.append(item.change.path)
    return failed


def write_all_or_nothing(root: Path, changes: Sequence[FileChange], lock: RepositoryLock | None) -> None:
    """Replaces every changed file, or none of them.

    Each new content is first written to a temporary file beside its target
    (its name recorded in the lock first, so a killed run's leftovers are
    found); only once all are written are they renamed over their targets.
    Any failure while writing removes the temporary files and changes nothing.
    """
    cache: dict[str, str] = {}
    folders: dict[str, bool] = {}
    base = os.fspath(root).rstrip("/")  # the root `/` too: its files are `/NAME`, not `//NAME`
    for change in changes:
        problem = path_problem(root, change.path, cache)
        reason = unwritable_reason(f"{base}/{change.path}", folders) if not problem else None
        if problem or reason:
            advice = "fix that" if problem else "make it writable"
            raise ManageImagesError(
                f"cannot write {shown(change.path)}: {problem or reason}; {advice} and run again "
                "(no file was changed for this image)"
            )
    umask = os.umask(0)
    os.umask(umask)
    staged = [
        Staged(change, path, temporary_beside(path), temporary_beside(path), path.exists())
        for change, path in ((change, root / change.path) for change in changes)
    ]
    if lock is not None:
        lock.record(name for item in staged for name in (item.temporary, item.backup))
    kept: set[Path] = set()
    committed = False
    try:
        failures = _stage_all(staged, umask)
        if failures:
            change, error = failures[0]
            raise ManageImagesError(
                f"cannot write {shown(change.path)}: {error.strerror}; no file was changed for this image, "
                "fix the cause and run again"
            )
        _commit(staged, kept)
        committed = True
    finally:
        _each(lambda item: _discard(item, kept, committed), staged)
    if lock is not None:
        # The files are written: the list only tells a killed run's successor what to remove.
        with contextlib.suppress(ManageImagesError):
            lock.record(())


def _discard(item: Staged, kept: Container[Path], committed: bool) -> None:
    """Removes the temporary file of `item` (none once committed: it was renamed
    into place) and its backup, unless kept. Run by a few threads (`_each`): a
    thousand unlinks one after the other cost as much as the renames."""
    if not committed:
        item.temporary.unlink(missing_ok=True)
    if item.backup not in kept:
        item.backup.unlink(missing_ok=True)


def _commit(staged: Sequence[Staged], kept: set[Path]) -> None:
    """Renames every temporary file over its target; then each old file must
    still hold what its change was computed from (the disk is the truth: an
    edit saved while the tool ran is never written over). On any failure
    every file of the image is put back; the backup of one that cannot be
    is added to `kept`, and named."""
    outcomes = _each(_replace_and_check, staged)
    replaced = [item for item, (error, _) in zip(staged, outcomes) if error is None]
    failed = [(item, error) for item, (error, _) in zip(staged, outcomes) if error is not None]
    moved = [item.change.path for item, error in failed if isinstance(error, FileExistsError)]
    if not failed:
        moved = [item.change.path for item, (_, held) in zip(staged, outcomes) if not held]
    if not failed and not moved:
        return
    stuck = _put_back(replaced)
    if stuck:
        backups = {item.change.path: item.backup for item in replaced if item.change.path in stuck}
        kept.update(backups.values())
        raise ManageImagesError(
            f"cannot put back {shown(stuck[0])} after a failed write: its old content is in "
            f"{shown(str(backups[stuck[0]]))}; move it back by hand"
        )
    if moved:
        raise ChangedOnDisk(moved)
    item, error = failed[0]
    raise ManageImagesError(
        f"cannot replace {shown(item.change.path)}: {error.strerror}{_replace_hint(error)}; every file of "
        "this image was put back as it was, fix the cause and run again"
    )


def _replace_hint(error: OSError) -> str:
    if error.errno == errno.EPERM:
        return " (an append-only or immutable file? see `lsattr`)"
    if error.errno in (errno.EBUSY, errno.EXDEV):
        return " (a mount point, such as a file bind-mounted there, cannot be replaced)"
    return ""


# ---------------------------------------------------------------------------
# The registry's HTTP API (the OCI distribution spec): credentials as docker
# finds them, its auth flows, and manifests read and written byte for byte.


class RegistryError(ManageImagesError):
    """A registry request failed: one line saying what, which registry, and what to do."""


class Manifest(NamedTuple):
    """A manifest exactly as the registry serves it."""

    media_type: str  # the Content-Type the registry answered
    data: bytes  # the exact bytes
    digest: str  # "sha256:<hex>" of data


class Credentials(NamedTuple):
    """What docker would send to one registry; never printed (the repr hides the secrets)."""

    username: str
    password: str
    identity_token: str  # an OAuth2 refresh token (docker login's `identitytoken`)
    source: str  # where they came from, for messages: a config file or a helper

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"

    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the password, its Basic form (user:password in base64, as
        in config.json's `auth`), the identity token."""
        basic = basic_credentials(self.username, self.password) if self.password else ""
        return (self.password, basic, self.identity_token)


class Answer(NamedTuple):
    """One HTTP answer: its status, headers and body."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    url: str = ""  # where it came from: the last of the request's redirects


def split_url(url: str) -> tuple[str, str]:
    """(registry host, repository) of an image URL, split the way docker splits a name:
    the first component is a host only if it has a `.` or a `:` or is `localhost`."""
    first, slash, rest = url.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", url
    if first in ("docker.io", "index.docker.io"):
        return "docker.io", rest if "/" in rest else f"library/{rest}"
    return first, rest


def split_reference(ref: str) -> tuple[str, str]:
    """(image URL, tag or digest) of `URL@DIGEST` or `URL:TAG`."""
    url, at, digest = ref.partition("@")
    if at:
        return url, digest
    head, colon, tag = ref.rpartition(":")
    if colon and "/" not in tag:
        return head, tag
    return ref, DEFAULT_TAG


def api_host(host: str) -> str:
    """Where the API of the registry `host` is served (Docker Hub's is not at docker.io)."""
    return "registry-1.docker.io" if host == "docker.io" else host


def credentials_key(host: str) -> str:
    """The key docker files the credentials of `host` under (config.json, credential helpers)."""
    return DOCKER_HUB_CREDENTIALS if host == "docker.io" else host


def hostname_of(key: str) -> str:
    """An `auths` key as docker compares it: scheme and path dropped (`https://h:5000/v1/` -> `h:5000`)."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def login_hint(host: str) -> str:
    if is_google_registry(host):
        return "run `gcloud auth configure-docker` (and `gcloud auth login`)"
    return "run `docker login`" if host == "docker.io" else f"run `docker login {host}`"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of a `WWW-Authenticate` header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        name.lower(): quoted if quoted or not bare else bare
        for name, quoted, bare in re.findall(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', rest)
    }
    return scheme.lower(), params


def docker_config_path(env: Mapping[str, str]) -> Path:
    """docker's config.json: in $DOCKER_CONFIG, else in ~/.docker."""
    folder = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME") or Path.home()) / ".docker")
    return Path(folder) / "config.json"


def auths_credentials(auths: object, host: str, source: str) -> Credentials | None:
    """The credentials of an `auths` entry for `host` (base64 `auth`, `identitytoken`), or None."""
    import base64
    import binascii

    if not isinstance(auths, dict):
        return None
    wanted = hostname_of(credentials_key(host))
    for key, entry in auths.items():
        if not isinstance(key, str) or hostname_of(key) != wanted or not isinstance(entry, dict):
            continue
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            username, colon, password = decoded.partition(":")
            if not colon:
                raise RegistryError(
                    f"{source}: the `auth` of {key} is not base64 of user:password; {login_hint(host)} again"
                )
        token = str(entry.get("identitytoken") or "")
        if username or password or token:
            return Credentials(username, password, token, source)
    return None


def helper_credentials(output: bytes, helper: str) -> Credentials:
    """The answer of `docker-credential-NAME get` (`{"Username": ..., "Secret": ...}`)."""
    try:
        answer = registry_json(output)
        username, secret = str(answer["Username"]), str(answer["Secret"])  # type: ignore[index]
    except (ValueError, TypeError, KeyError):
        raise RegistryError(
            f"`{helper} get` did not answer the credential helper protocol (JSON with Username and "
            "Secret); check the helper"
        ) from None
    if username == "<token>":  # docker's marker for an identity token
        return Credentials("", "", secret, helper)
    return Credentials(username, secret, "", helper)


def retry_delay(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1`: the registry's Retry-After (seconds or an
    HTTP date), else an exponential back-off; never more than RETRY_AFTER_MAX. A Retry-After
    that names no time (NaN, garbage, a date out of range) counts as none."""
    import email.utils
    import math

    seconds = math.nan
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError, OSError, IndexError):
                pass
    if math.isnan(seconds):
        seconds = 0.5 * 2.0 ** (attempt - 1)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def registry_json(data: bytes) -> object:
    """`data` as JSON. Anything else is a ValueError, a nesting deeper than Python's parser
    goes (its RecursionError) included: what a registry sends is not trusted to be sane."""
    import json

    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def in_clear(url: str) -> bool:
    """Whether a request to `url` crosses the network in clear: not HTTPS, and not to loopback."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() != "https" and not is_loopback_registry(parts.netloc.rpartition("@")[2])


def is_url(url: str) -> bool:
    """Whether `url` (absolute or relative) is one urllib can follow: its host (an IPv6 address
    in brackets too) and its port (a number up to 65535) read."""
    import urllib.parse

    try:
        return urllib.parse.urlsplit(url).port != -1  # reading the port raises for a bad one
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url`, the port made explicit: what credentials are given for."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme, -1)


def proxy_for(url: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The proxy docker's client would send a request to `url` through, and the variable that
    names it; None for none. As Go's net/http (golang.org/x/net/http/httpproxy): HTTPS_PROXY
    for HTTPS, HTTP_PROXY for HTTP, upper case first; a value without a scheme is http://;
    NO_PROXY lists the hosts reached directly (`uses_proxy`), and loopback is never proxied."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    variable = {"http": "HTTP_PROXY", "https": "HTTPS_PROXY"}.get(parts.scheme.lower())
    if variable is None:
        return None
    name = variable if env.get(variable) else variable.lower()
    proxy = env.get(name, "")
    port = str(origin(url)[2])
    if not proxy or not uses_proxy(
        parts.hostname or "", port, env.get("NO_PROXY") or env.get("no_proxy") or ""
    ):
        return None
    if is_url(proxy) and urllib.parse.urlsplit(proxy).scheme.lower() not in ("http", "https", "socks5"):
        proxy = f"http://{proxy}"
    return proxy, name


def uses_proxy(host: str, port: str, no_proxy: str) -> bool:
    """Whether a request to HOST:PORT goes through a proxy, NO_PROXY being `no_proxy`: not for
    localhost and loopback addresses, nor for `*`, an address in a listed CIDR range, a listed
    address, a listed domain (`example.com` and `.example.com` both match its subdomains, the
    first also itself), each with an optional `:port`."""
    import ipaddress

    host = host.strip().lower()
    if is_loopback_name(host):
        return False
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    entries = (entry.strip().lower() for entry in no_proxy.split(","))
    return not any(_no_proxy_matches(entry, host, port, address) for entry in entries if entry)


def _no_proxy_matches(
    entry: str, host: str, port: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> bool:
    import ipaddress

    if entry == "*":
        return True
    if "/" in entry:
        try:
            return address is not None and address in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    name, wanted = entry, ""
    if entry.startswith("[") and "]:" in entry:
        name, _, wanted = entry[1:].partition("]:")
    elif entry.count(":") == 1:
        name, _, wanted = entry.partition(":")
    if not name or wanted not in ("", port):
        return False
    try:
        listed = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:  # an address matches only that address
        return address == listed
    suffix = name[1:] if name.startswith("*.") else name
    return host.endswith(suffix if suffix.startswith(".") else f".{suffix}") or host == suffix


def pick_platform(index: object, platform: str, what: str) -> str:
    """The digest of the image manifest for `platform` (`os/arch[/variant]`) in an index."""
    wanted = platform.split("/")
    entries = index.get("manifests") if isinstance(index, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        described = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(described, dict):
            continue
        offered = [str(described.get(key) or "") for key in ("os", "architecture", "variant")]
        found.append("/".join(filter(None, offered)))
        if offered[:2] == wanted[:2] and (len(wanted) < 3 or offered[2] in ("", wanted[2])):
            return check_digest(str(entry.get("digest")), what)
    raise RegistryError(
        f"{what} is an index without a {platform} image (it has: {', '.join(found) or 'none'})"
    )


def body_digest(data: bytes) -> str:
    import hashlib

    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def registry_said(answer: Answer) -> str:
    """The registry's own words about a failed request (the spec's `errors` list), shortened."""
    try:
        errors = registry_json(answer.body)["errors"]  # type: ignore[index]
        said = "; ".join(f"{error.get('code', '')}: {error.get('message', '')}" for error in errors[:2])
    except (ValueError, TypeError, KeyError, AttributeError):
        said = ""
    return " ".join(outside_text(said, SECRETS.forms()).split())


class Exchange:
    """One registry request in flight, its redirects included. `cut` ends it at once,
    wherever it waits (to connect, in TLS, for an answer or the rest of one), by shutting
    its sockets down: at REGISTRY_DEADLINE, or when the run stops (see Children)."""

    def __init__(self, host: str, method: str, url: str) -> None:
        self.host, self.method, self.url = host, method, url
        self.writes = method == "PUT"  # the tool's one request that changes the registry
        self.proxy = ""  # the proxy of the current hop, as messages name it ("" for none)
        self.reason = ""  # why it was cut: "stop" or "deadline" ("" while it is not)
        # Reentrant: a signal handler may cut it in the thread that is attaching a socket.
        self._lock = threading.RLock()
        self._sockets: list[socket.socket] = []  # duplicates: the same sockets once TLS wraps them
        self._timer = threading.Timer(REGISTRY_DEADLINE, self.cut, ("deadline",))
        self._timer.daemon = True

    def __enter__(self) -> Exchange:
        CHILDREN.begin(self)
        self._timer.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._timer.cancel()
        CHILDREN.end(self)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def cut(self, reason: str) -> None:
        import socket

        with self._lock:
            self.reason = self.reason or reason
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def connect(
        self, address: tuple[str, int], timeout: float | None, source_address: object = None
    ) -> socket.socket:
        """socket.create_connection, each socket known before it connects, so that a cut
        ends the connect too."""
        import socket

        failure = OSError(f"{address[0]} has no address")
        for family, kind, protocol, _, where in socket.getaddrinfo(*address, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, protocol)
            try:
                with self._lock:
                    if self.reason:
                        raise TimeoutError(f"cut ({self.reason})")
                    self._sockets.append(sock.dup())
                sock.settimeout(timeout)
                sock.connect(where)
                return sock
            except OSError as error:
                sock.close()
                failure = error
        raise failure

    def failure(self, error: Exception) -> OSError:
        """What a failure on the way to the server is: the proxy's, when there is one."""
        if self.proxy and not self.reason:
            return ProxyFailure(self.proxy, error)
        return error if isinstance(error, OSError) else OSError(str(error))


class ProxyFailure(OSError):
    """No way through the proxy (refused, timed out, its CONNECT answer not 200 or not HTTP)."""

    def __init__(self, proxy: str, reason: Exception) -> None:
        said = getattr(reason, "strerror", None) or str(reason)
        super().__init__(outside_text(said, SECRETS.forms(), 200) or type(reason).__name__)  # a proxy's words
        self.proxy = proxy


class RegistryClient:
    """Speaks the registry HTTP API as docker does: credentials from docker's config, the
    Basic and Bearer token flows, TLS with certs.d, plain HTTP only on loopback, proxies
    from the environment, retries. Credentials never cross the network in clear; every
    request has a deadline and every answer a size limit; a stop of the run ends them.

    Thread-safe: images promoted in parallel share one client (and its tokens).

    What a digest names never changes, so within a run a digest the registry
    served, and the manifest and config bytes read by digest (each checked
    against its digest), are asked for once; tags are asked every time.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._config_path = docker_config_path(self._env)
        self._certs_d = Path(self._env.get(CERTS_D_ENV) or CERTS_D)
        self._lock = threading.RLock()
        self._config: dict[str, object] | None = None
        self._credentials: dict[str, Credentials | None] = {}
        self._bases: dict[str, str] = {}  # host -> "https://host" or, on loopback, "http://host"
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}
        self._authorizations: dict[tuple[str, str], str] = {}  # (host, scope) -> Authorization
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._helper_failures: dict[tuple[str, str], RegistryError] = {}  # (helper, host) -> why
        self._served: set[tuple[str, str]] = set()  # (url, digest) the registry served
        self._by_digest: dict[tuple[str, str], Manifest | bytes] = {}  # manifests and blobs read

    # --- the public operations ----------------------------------------------

    def served_digest(self, url: str, reference: str) -> str | None:
        """The digest the registry serves for `reference` (a tag or a digest): one HEAD; None on 404."""
        if (url, reference) in self._served:
            return reference
        host, repository = split_url(url)
        answer = self._call("HEAD", host, repository, f"manifests/{reference}", "pull")
        if answer.status == 404:
            return None
        self._expect(answer, (200,), host, f"HEAD of {url}{_separator(reference)}{reference}")
        digest = answer.headers.get("docker-content-digest")
        if digest is None:  # the header is optional in the spec: hash the bytes instead
            return self.get_manifest(url, reference).digest
        name = f"{url}{_separator(reference)}{reference}"
        digest = check_digest(digest, f"{name} (Docker-Content-Digest of {host})")
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(_other_digest(host, f"HEAD of {name}", digest))
        if digest == reference:
            with self._lock:
                self._served.add((url, digest))
        return digest

    def get_manifest(self, url: str, reference: str) -> Manifest:
        """The manifest `reference` names, of any media type; for a digest, its sha256 is checked."""
        known = self._by_digest.get((url, reference))
        if isinstance(known, Manifest):
            return known
        host, repository = split_url(url)
        name = f"{url}{_separator(reference)}{reference}"
        answer = self._call(
            "GET", host, repository, f"manifests/{reference}", "pull", limit=(MANIFEST_LIMIT, "a manifest")
        )
        if answer.status == 404:
            said = registry_said(answer)
            raise RegistryError(
                f"{host} does not serve {name} (HTTP 404{': ' + said if said else ''}); "
                "check the pin, or push the image first"
            )
        self._expect(answer, (200,), host, f"GET of {name}")
        digest = body_digest(answer.body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"{host} answered {name} with bytes whose sha256 is {digest}: the registry or something "
                "between it and this machine changed the manifest; nothing was written"
            )
        said = answer.headers.get("docker-content-digest", reference)
        if reference.startswith("sha256:") and said != reference:
            raise RegistryError(_other_digest(host, f"GET of {name}", said))
        media_type = answer.headers.get("content-type", "").split(";", 1)[0].strip()
        media_type = media_type or _declared_media_type(answer.body)
        if not MEDIA_TYPE_RE.match(media_type):  # it is shown, and sent back with a PUT
            raise RegistryError(
                f"{host} answered {name} with a media type that is none ({outside_text(media_type, limit=80)}); "
                "check the registry"
            )
        manifest = Manifest(media_type, answer.body, digest)
        if digest == reference:
            with self._lock:
                self._served.add((url, digest))
                self._by_digest[url, digest] = manifest
        return manifest

    def put_manifest(self, url: str, tag: str, manifest: Manifest) -> str:
        """Stores `manifest` (the same bytes, the same media type) under `tag`; returns the
        digest the registry answers (Docker-Content-Digest)."""
        host, repository = split_url(url)
        answer = self._call(
            "PUT", host, repository, f"manifests/{tag}", "pull,push", manifest.data, manifest.media_type
        )
        self._expect(answer, (200, 201, 202), host, f"PUT of {url}:{tag}")
        digest = answer.headers.get("docker-content-digest")
        if digest is None and CHILDREN.stopping:
            # It took these bytes, and no request may start now to ask: say what moved, as docker would.
            return manifest.digest
        if digest is None:  # optional in the spec: ask what the tag now serves
            served = self.served_digest(url, tag)
            if served is None:
                raise RegistryError(f"{host} accepted the PUT of {url}:{tag} but serves nothing under it")
            return served
        return check_digest(digest, f"{url}:{tag} (Docker-Content-Digest of {host})")

    def image_config(self, url: str, reference: str, platform: str = "linux/amd64") -> tuple[str, bytes]:
        """The config digest and bytes of the image `reference` names for `platform`,
        through the index or manifest list when it is one."""
        manifest = self.get_manifest(url, reference)
        name = f"{url}{_separator(reference)}{reference}"
        document = _json_object(manifest.data, name)
        if manifest.media_type in INDEX_MEDIA_TYPES or "manifests" in document:
            name = f"{url}@{pick_platform(document, platform, name)}"
            manifest = self.get_manifest(*split_reference(name))
            document = _json_object(manifest.data, name)
        config = document.get("config")
        digest = check_digest(
            str(config.get("digest") if isinstance(config, dict) else ""), f"the config of {name}"
        )
        known = self._by_digest.get((url, digest))
        if isinstance(known, bytes):
            return digest, known
        host, repository = split_url(url)
        answer = self._call(
            "GET", host, repository, f"blobs/{digest}", "pull", limit=(CONFIG_LIMIT, "an image config")
        )
        self._expect(answer, (200,), host, f"GET of the config {digest} of {name}")
        if body_digest(answer.body) != digest:
            raise RegistryError(f"{host} answered the config {digest} of {name} with other bytes")
        with self._lock:
            self._by_digest[url, digest] = answer.body
        return digest, answer.body

    # --- requests, authentication and transport ---------------------------

    def _call(
        self,
        method: str,
        host: str,
        repository: str,
        path: str,
        actions: str,
        body: bytes | None = None,
        content_type: str | None = None,
        limit: tuple[int, str] | None = None,
    ) -> Answer:
        """One API request, authenticated as the registry asks; a refusal after auth is an error.
        `limit`: the most bytes of its answer, and what they are (see `_send`)."""
        scope = f"repository:{repository}:{actions}"
        base = self._base(host)
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES), "User-Agent": USER_AGENT}
        if content_type is not None:
            headers["Content-Type"] = content_type
        url = f"{base}/v2/{repository}/{path}"
        authorization = self._authorization(host, scope)
        answer = self._send(method, url, host, headers, body, authorization, limit=limit)
        # A challenge from where a redirect went is not the registry's: its realm would get
        # the registry's credentials. As docker, only the registry's own is answered.
        if answer.status == 401 and origin(answer.url) == origin(url):
            with self._lock:
                self._challenges[host] = parse_challenge(answer.headers.get("www-authenticate", ""))
                self._authorizations.pop((host, scope), None)
            authorization = self._authorization(host, scope, required=True)
            answer = self._send(method, url, host, headers, body, authorization, limit=limit)
        if answer.status in (401, 403):
            raise self._refused(host, answer, f"{method} {repository}/{path}")
        return answer

    def _expect(self, answer: Answer, statuses: tuple[int, ...], host: str, what: str) -> None:
        if answer.status not in statuses:
            said = registry_said(answer)
            raise RegistryError(
                f"the {what} failed: {host} answered HTTP {answer.status}{': ' + said if said else ''}; "
                "check the registry and run again"
            )

    def _refused(self, host: str, answer: Answer, what: str) -> RegistryError:
        credentials = self._credentials_for(host)
        used = f"with the credentials from {credentials.source}" if credentials else "without credentials"
        return RegistryError(
            f"the registry {host} refused {what} (HTTP {answer.status}, {used}): "
            f"{login_hint(host)} with an account that may do this, then run again"
        )

    def _base(self, host: str) -> str:
        """`https://HOST`, or `http://HOST` for a loopback registry that does not speak TLS.
        The first call pings /v2/ as docker does, which also gives the auth challenge."""
        with self._lock:
            if host in self._bases:
                return self._bases[host]
            import ssl

            base = f"https://{api_host(host)}"
            try:
                answer = self._send(
                    "GET", f"{base}/v2/", host, {"User-Agent": USER_AGENT}, None, None, probe=True
                )
            except _TransportError as error:
                reason = error.reason
                # What OpenSSL says when the other side answers a TLS hello in plain HTTP
                # (an alert, such as a client certificate asked for, means it speaks TLS).
                plain = isinstance(reason, ssl.SSLError) and reason.reason in NOT_TLS_REASONS
                if not (is_loopback_registry(host) and (plain or isinstance(reason, ConnectionResetError))):
                    raise RegistryError(self._transport_message(host, reason)) from None
                base = f"http://{host}"
                answer = self._send("GET", f"{base}/v2/", host, {"User-Agent": USER_AGENT}, None, None)
            if answer.status == 401 and origin(answer.url) == origin(base):
                self._challenges[host] = parse_challenge(answer.headers.get("www-authenticate", ""))
            self._bases[host] = base
            return base

    def _authorization(self, host: str, scope: str, required: bool = False) -> str | None:
        """The Authorization header for `scope` on `host`, per its challenge (cached per scope)."""
        with self._lock:
            if (host, scope) in self._authorizations:
                return self._authorizations[(host, scope)]
            if host not in self._challenges:
                return None
            scheme, params = self._challenges[host]
            credentials = self._credentials_for(host)
            if scheme == "basic":
                if credentials is None or not (credentials.username or credentials.password):
                    if not required:
                        return None
                    raise RegistryError(
                        f"the registry {host} asks for a user and password and {self._config_path} has none "
                        f"for it: {login_hint(host)}, then run again"
                    )
                value = f"Basic {basic_credentials(credentials.username, credentials.password)}"
            elif scheme == "bearer" and params.get("realm"):
                value = f"Bearer {self._token(host, params, scope, credentials)}"
            else:
                raise RegistryError(
                    f"the registry {host} asks for `{scheme}` authentication, which this tool does not speak; "
                    "use a registry with Basic or Bearer token auth"
                )
            self._authorizations[(host, scope)] = value
            return value

    def _token(
        self, host: str, params: Mapping[str, str], scope: str, credentials: Credentials | None
    ) -> str:
        """A Bearer token from the challenge's realm: the refresh-token grant for an identity
        token, else a GET with Basic credentials (or none), as docker asks."""
        import urllib.parse

        realm = params["realm"]
        if urllib.parse.urlsplit(realm).scheme.lower() not in ("http", "https"):
            raise RegistryError(f"the registry {host} names a token server that is not an HTTP URL: {realm}")
        if in_clear(realm) and credentials is not None:
            raise RegistryError(
                f"refusing to send the credentials for {host} to its token server {realm}: it is not HTTPS "
                "and not on loopback"
            )
        form = {"service": params.get("service", ""), "scope": scope}
        headers: dict[str, str] = {"User-Agent": USER_AGENT}
        authorization = None
        if credentials is not None and credentials.identity_token:
            form.update(
                grant_type="refresh_token", refresh_token=credentials.identity_token, client_id=CLIENT_ID
            )
            body: bytes | None = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            method, url = "POST", realm
        else:
            body = None
            method = "GET"
            url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(form)}"
            if credentials is not None and (credentials.username or credentials.password):
                authorization = f"Basic {basic_credentials(credentials.username, credentials.password)}"
        answer = self._send(
            method, url, host, headers, body, authorization, limit=(TOKEN_LIMIT, "a token server's answer")
        )
        if answer.status in (401, 403):
            raise self._refused(host, answer, f"a token for {scope} from {realm}")
        self._expect(answer, (200,), host, f"token request to {realm}")
        try:
            document = registry_json(answer.body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            document = {}
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token server {realm} of {host} answered no token; check the registry")
        SECRETS.add(token, document.get("refresh_token"))
        if not re.fullmatch(r"[!-~]+", token):  # it goes in a header: a line break would end it
            raise RegistryError(
                f"the token server {realm} of {host} answered a token with characters an HTTP header "
                "cannot carry (spaces, line breaks, controls or non-ASCII); check the registry"
            )
        return token

    def _credentials_for(self, host: str) -> Credentials | None:
        """The credentials docker would use for `host`: its credential helper (credHelpers, then
        credsStore), else the `auths` entry; None means anonymous."""
        with self._lock:
            if host not in self._credentials:
                self._credentials[host] = found = self._find_credentials(host)
                if found is not None:
                    SECRETS.add(*found.secrets())
            return self._credentials[host]

    def _find_credentials(self, host: str) -> Credentials | None:
        if self._config is None:
            try:
                loaded = registry_json(read_small(self._config_path, DOCKER_CONFIG_LIMIT))
            except FileNotFoundError:
                loaded = {}
            except (OSError, ValueError) as error:
                raise RegistryError(
                    f"cannot read {self._config_path}: {getattr(error, 'strerror', None) or error}; "
                    "fix it or point DOCKER_CONFIG elsewhere"
                ) from None
            self._config = loaded if isinstance(loaded, dict) else {}
        helpers = self._config.get("credHelpers")
        # credHelpers is keyed by host name (index.docker.io for Docker Hub), as docker looks it up.
        helper = helpers.get(hostname_of(credentials_key(host))) if isinstance(helpers, dict) else None
        helper = helper or self._config.get("credsStore")
        if isinstance(helper, str) and helper:
            return self._ask_helper(f"docker-credential-{helper}", host)
        return auths_credentials(self._config.get("auths"), host, str(self._config_path))

    def _ask_helper(self, helper: str, host: str) -> Credentials | None:
        """`docker-credential-NAME get`, given the server on stdin; None when it has nothing for
        it. A helper that failed is not asked again in the run: each image would wait for it."""
        with self._lock:
            if (helper, host) in self._helper_failures:
                raise self._helper_failures[(helper, host)]
            try:
                returncode, stdout, stderr = self._run_helper(helper, host)
                if returncode != 0:
                    said = (stdout + stderr).decode("utf-8", "replace")
                    if "credentials not found" in said.lower():
                        return None
                    # A failing helper may still have answered: what it answered is a secret all the same.
                    with contextlib.suppress(RegistryError):
                        SECRETS.add(*helper_credentials(stdout, helper).secrets())
                    first = outside_text(stderr.decode("utf-8", "replace"), SECRETS.forms(), 200)
                    raise RegistryError(
                        f"`{helper} get` failed with exit code {returncode} for {host}"
                        f"{': ' + first if first else ''}; {login_hint(host)} or fix the helper"
                    )
                return helper_credentials(stdout, helper)
            except RegistryError as error:
                self._helper_failures[(helper, host)] = error
                raise

    def _run_helper(self, helper: str, host: str) -> tuple[int, bytes, bytes]:
        """Runs a credential helper as docker commands run: a child of the run's own (a stop
        ends it, SIGTERM then SIGKILL), in a session of its own, for HELPER_TIMEOUT seconds."""
        import shutil
        import subprocess

        if shutil.which(helper, path=self._env.get("PATH", os.defpath)) is None:
            raise RegistryError(
                f"{helper}, the credential helper {self._config_path} names for {host}, is not on PATH: "
                "install it or fix that file"
            )
        pipe = subprocess.PIPE
        process = CHILDREN.start((helper, "get"), True, stdin=pipe, stdout=pipe, stderr=pipe, env=self._env)
        try:
            stdout, stderr = communicate_capped(
                process, credentials_key(host).encode(), HELPER_TIMEOUT, HELPER_LIMIT
            )
        except (subprocess.TimeoutExpired, ValueError) as error:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            timed_out = isinstance(error, subprocess.TimeoutExpired)
            what = f"within {HELPER_TIMEOUT} s" if timed_out else f"in {HELPER_LIMIT} bytes (it printed more)"
            raise RegistryError(
                f"`{helper} get` did not answer {what} for {host}, so it was stopped "
                "and is not asked again in this run; fix the helper (or log in anew) and run again"
            ) from None
        finally:
            CHILDREN.done(process)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        if CHILDREN.stopping:
            raise ManageImagesError(f"stopped while `{helper} get` ran")
        return process.returncode, stdout, stderr

    def _context(self, host: str) -> ssl.SSLContext:
        """TLS trusting the system's CAs plus certs.d/HOST (docker's per-registry folder:
        *.crt are CAs, a *.cert with its *.key is a client certificate)."""
        import ssl

        with self._lock:
            if host in self._contexts:
                return self._contexts[host]
            context = ssl.create_default_context()
            folder = self._certs_d / host
            try:
                for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                    paired = (path, path.with_suffix(".key")) if path.suffix == ".cert" else (path,)
                    if path.suffix in (".crt", ".cert") and not all(map(Path.is_file, paired)):
                        raise OSError(
                            f"{path.name} or its key is missing or not a regular file (a FIFO hangs a read)"
                        )
                    if path.suffix == ".crt":
                        context.load_verify_locations(cafile=str(path))
                    elif path.suffix == ".cert":
                        context.load_cert_chain(str(path), str(path.with_suffix(".key")))
            except (OSError, ssl.SSLError) as error:
                raise RegistryError(
                    f"cannot load the certificates in {folder}: {error}; fix them (docker reads the same folder)"
                ) from None
            self._contexts[host] = context
            return context

    def _opener(self, host: str, exchange: Exchange) -> urllib.request.OpenerDirector:
        """An opener for one request: only HTTP and HTTPS, through the proxy docker would use,
        following redirects as `_redirect_handler` allows, each socket known to `exchange`."""
        import urllib.request

        opener = urllib.request.OpenerDirector()
        for handler in (
            _proxy_handler(self._env, exchange),
            *_connection_handlers(exchange, self._context(host)),
            _redirect_handler(exchange),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
            urllib.request.UnknownHandler(),
        ):
            opener.add_handler(handler)
        return opener

    def _send(
        self,
        method: str,
        url: str,
        host: str,
        headers: Mapping[str, str],
        body: bytes | None,
        authorization: str | None,
        probe: bool = False,
        limit: tuple[int, str] | None = None,
    ) -> Answer:
        """Sends one request, again after a 429, a 5xx or a dropped connection (at most
        REGISTRY_ATTEMPTS in all, waiting as Retry-After says), unless the run stops; follows
        redirects. A body longer than `limit` (its bytes, and what it is) is refused; any
        other is cut at ERROR_BODY_LIMIT. Credentials never go in clear off loopback."""
        if authorization is not None and in_clear(url):
            raise RegistryError(
                f"refusing to send the credentials for {host} to {url}: it is plain HTTP to a host off "
                "loopback, where anyone on the way could read them; use HTTPS"
            )
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._attempt(method, url, host, headers, body, authorization, limit)
            except _TransportError as error:
                if attempt < REGISTRY_ATTEMPTS and _retryable(error.reason):
                    CHILDREN.sleep(retry_delay(None, attempt), f"retrying {method} {url}")
                    continue
                if probe:  # the caller decides: a loopback registry may speak plain HTTP
                    raise
                raise RegistryError(self._transport_message(host, error.reason, url)) from None
            if answer.status in RETRY_STATUSES and attempt < REGISTRY_ATTEMPTS:
                CHILDREN.sleep(
                    retry_delay(answer.headers.get("retry-after"), attempt), f"retrying {method} {url}"
                )
                continue
            return answer

    def _attempt(
        self,
        method: str,
        url: str,
        host: str,
        headers: Mapping[str, str],
        body: bytes | None,
        authorization: str | None,
        limit: tuple[int, str] | None,
    ) -> Answer:
        """One try of a request, its redirects included, cut at REGISTRY_DEADLINE or when the
        run stops; no HTTP answer at all is a _TransportError."""
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        if authorization is not None:
            # Not copied to a redirect's request by urllib: the redirect handler decides.
            request.add_unredirected_header("Authorization", authorization)
        size = limit[0] if limit else ERROR_BODY_LIMIT
        with Exchange(host, method, url) as exchange:
            try:
                with self._opener(host, exchange).open(request, timeout=REGISTRY_TIMEOUT) as response:
                    status, found, data = response.status, response.headers, response.read(size + 1)
                    where = response.url
            except urllib.error.HTTPError as error:
                status, found, data = error.code, error.headers, _read_quietly(error, ERROR_BODY_LIMIT)
                where = error.url
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                self._check_cut(exchange)
                raise _TransportError(
                    error.reason if isinstance(error, urllib.error.URLError) else error
                ) from None
            self._check_cut(exchange)
        if status == 407 and exchange.proxy:
            raise RegistryError(
                f"{exchange.proxy} refused {method} {url} (HTTP 407, it asks for credentials): put them in "
                f"its URL, or list {host} in NO_PROXY"
            )
        if len(data) > size and limit is not None and 200 <= status < 300:
            raise RegistryError(
                f"{self._subject(host, url)} answered {method} {url} with more than {size} bytes, the most "
                f"{limit[1]} may have (as docker reads it): refused; check what it serves"
            )
        return Answer(status, _lower(found), data[:size], where)

    def _check_cut(self, exchange: Exchange) -> None:
        """Raises what a cut request ended in: the run's stop, or its deadline."""
        if exchange.reason == "stop":
            unknown = "; whether the registry took it is not known" if exchange.writes else ""
            raise ManageImagesError(f"stopped during {exchange.method} {exchange.url}{unknown}")
        if exchange.reason == "deadline":
            raise RegistryError(
                f"{self._subject(exchange.host, exchange.url)} did not answer {exchange.method} {exchange.url} "
                f"in full within {REGISTRY_DEADLINE} s (the deadline of one request); check that it is up "
                "and not overloaded, and run again"
            )

    def _subject(self, host: str, url: str) -> str:
        """The server of `url` as messages name it: the registry, or its token server."""
        import urllib.parse

        where = urllib.parse.urlsplit(url).netloc if url else api_host(host)
        return f"the registry {host}" if where == api_host(host) else f"the token server {where} of {host}"

    def _transport_message(self, host: str, reason: object, url: str = "") -> str:
        import ssl

        server = self._subject(host, url)
        subject = host if server == f"the registry {host}" else server
        if isinstance(reason, ProxyFailure):
            return (
                f"{reason.proxy} failed on the way to {server}: {reason}; check the proxy, or list {host} "
                "in NO_PROXY"
            )
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (
                f"cannot verify the TLS certificate of {subject}: {reason.verify_message}; if your own CA "
                f"signed it, put the CA in {self._certs_d / host / 'ca.crt'} (as for docker) and run again"
            )
        if isinstance(reason, ssl.SSLError):
            return f"TLS with {subject} failed: {reason.reason or reason}; check its HTTPS set-up"
        # What the other side sent may be in it (a status line that is none): outside text.
        detail = outside_text(getattr(reason, "strerror", None) or str(reason) or type(reason).__name__)
        return f"cannot reach {server}: {detail}; check that it is up and that --registry is right"


class _TransportError(Exception):
    """No HTTP answer at all (refused, reset, timed out, TLS); carries the reason."""

    def __init__(self, reason: object) -> None:
        super().__init__(str(reason))
        self.reason = reason


def _redirect_handler(exchange: Exchange) -> urllib.request.HTTPRedirectHandler:
    """Follows redirects (blob and manifest reads). The Authorization header goes on only to
    the same scheme, host and port: a blob store elsewhere gets its own signed URL, never our
    credentials. HTTPS never turns into plain HTTP off loopback."""
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        def http_error_302(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: http.client.HTTPMessage,
        ) -> IO[bytes] | None:
            # urllib reads a redirect's whole body before it follows it: never, however long it is.
            fp.close()
            location = headers.get("location") or headers.get("uri") or ""
            if not is_url(location):
                raise RegistryError(
                    f"{exchange.host} redirected {req.get_method()} {req.full_url} to "
                    f"{outside_text(location)}, which is no URL: refused; check the registry"
                )
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: http.client.HTTPMessage,
            newurl: str,
        ) -> urllib.request.Request | None:
            if not in_clear(req.full_url) and in_clear(newurl):
                raise RegistryError(
                    f"{exchange.host} redirected {req.get_method()} {req.full_url} to {shown(newurl)}, plain HTTP "
                    "off loopback: refused, as all sent there crosses the network in clear; check the registry"
                )
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            authorization = req.unredirected_hdrs.get("Authorization")
            if new is not None and authorization and origin(newurl) == origin(req.full_url):
                new.add_unredirected_header("Authorization", authorization)
            return new

    return Redirects()


def _proxy_handler(env: Mapping[str, str], exchange: Exchange) -> urllib.request.BaseHandler:
    """Sends each request (each redirect too) through the proxy `proxy_for` names, if any."""
    import urllib.parse
    import urllib.request

    class Proxies(urllib.request.BaseHandler):
        handler_order = 100  # before the handlers that connect

        def http_open(self, request: urllib.request.Request) -> None:
            exchange.proxy = ""
            chosen = proxy_for(request.full_url, env)
            if chosen is None:
                return
            if not is_url(chosen[0]):  # not shown: it may hold the proxy's password
                raise RegistryError(
                    f"{chosen[1]} is no proxy URL this tool reads (a bad address or port); name the proxy "
                    f"as http://HOST:PORT, or list {exchange.host} in NO_PROXY"
                )
            parts = urllib.parse.urlsplit(chosen[0])
            where = parts.netloc.rpartition("@")[2]
            exchange.proxy = f"the proxy {parts.scheme}://{where} ({chosen[1]})"
            if parts.scheme.lower() != "http":
                raise RegistryError(
                    f"{chosen[1]} names {parts.scheme}://{where}: this tool reaches proxies in plain HTTP "
                    f"only (CONNECT for HTTPS); name an http:// proxy, or list {exchange.host} in NO_PROXY"
                )
            if parts.username is not None:
                password = urllib.parse.unquote(parts.password or "")
                value = f"Basic {basic_credentials(urllib.parse.unquote(parts.username), password)}"
                SECRETS.add(password, value[6:])  # a proxy may quote them in its refusal
                # Unredirected: a redirect that goes elsewhere never carries it.
                request.add_unredirected_header("Proxy-Authorization", value)
            request.set_proxy(where, "http")

        https_open = http_open

    return Proxies()


def _connection_handlers(
    exchange: Exchange, context: ssl.SSLContext
) -> tuple[urllib.request.HTTPHandler, urllib.request.HTTPSHandler]:
    """HTTP and HTTPS as urllib speaks them, each socket known to `exchange`, and a failure
    on the way to a proxy (connecting to it, its CONNECT) the proxy's."""
    import http.client
    import urllib.request

    class Plain(http.client.HTTPConnection):
        def connect(self) -> None:
            self._create_connection = exchange.connect
            try:
                super().connect()
            except (OSError, http.client.HTTPException) as error:
                raise exchange.failure(error) from None

    class Tls(http.client.HTTPSConnection):
        def connect(self) -> None:
            self._create_connection = exchange.connect
            try:
                http.client.HTTPConnection.connect(self)  # TCP, and a proxy's CONNECT: TLS is below
            except (OSError, http.client.HTTPException) as error:
                raise exchange.failure(error) from None
            name = getattr(self, "_tunnel_host", None) or self.host
            self.sock = context.wrap_socket(self.sock, server_hostname=name)

    class PlainHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Plain, req)

    class TlsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Tls, req, context=context)

    return PlainHandler(), TlsHandler()


def communicate_capped(
    process: subprocess.Popen[bytes], data: bytes, timeout: float, limit: int
) -> tuple[bytes, bytes]:
    """`process.communicate(data, timeout)`, with at most `limit` bytes of output in all:
    ValueError beyond (a program that prints forever would fill the memory before its time
    is up). Both pipes are read as they fill, so neither blocks the program."""
    import selectors
    import subprocess

    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    with contextlib.suppress(OSError):  # a program that does not read its input
        process.stdin.write(data)
        process.stdin.close()
    deadline = time.monotonic() + timeout
    read: dict[int, bytearray] = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as selector:
        for descriptor in read:
            selector.register(descriptor, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(process.args, timeout)
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                read[key.fd] += chunk
                if sum(map(len, read.values())) > limit:
                    raise ValueError(f"more than {limit} bytes of output")
    process.wait(max(deadline - time.monotonic(), 0.0))
    return bytes(read[process.stdout.fileno()]), bytes(read[process.stderr.fileno()])


def _read_quietly(error: urllib.error.HTTPError, limit: int) -> bytes:
    import http.client

    try:
        return error.read(limit)
    except (OSError, http.client.HTTPException):
        return b""


def _other_digest(host: str, what: str, digest: str) -> str:
    return (
        f"{host} answered the {what} with Docker-Content-Digest {digest}, another digest than the one "
        "asked for, so it does not serve it as asked; check the registry and what stands between it and "
        "this machine"
    )


def _retryable(reason: object) -> bool:
    """A dropped or timed-out connection is tried again; a refused one, an unknown host or a
    TLS failure is not."""
    import http.client
    import socket

    dropped = (ConnectionResetError, ConnectionAbortedError, TimeoutError, socket.timeout)
    return isinstance(reason, (*dropped, http.client.IncompleteRead))


def _lower(headers: email.message.Message) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _separator(reference: str) -> str:
    return "@" if reference.startswith("sha256:") else ":"


def _declared_media_type(data: bytes) -> str:
    try:
        declared = registry_json(data).get("mediaType")  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        declared = None
    return str(declared) if declared else "application/vnd.oci.image.manifest.v1+json"


def _json_object(data: bytes, what: str) -> dict[str, object]:
    try:
        document = registry_json(data)
    except ValueError as error:
        raise RegistryError(
            f"the manifest of {what} is not JSON this tool reads ({error}); check what was pushed"
        ) from None
    if not isinstance(document, dict):
        raise RegistryError(f"the manifest of {what} is not a JSON object; check what was pushed")
    return document


def registry_client(settings: Settings) -> RegistryClient:
    """The run's registry client, with credentials as docker finds them for the run's
    environment (one per environment and config.json, so tokens are reused)."""
    env = os.environ if settings.env is None else settings.env
    path = docker_config_path(env)
    try:
        found = path.stat()
        stamp = (found.st_mtime_ns, found.st_size, found.st_ino)
    except OSError:
        stamp = (0, -1, 0)
    return _registry_client(tuple(sorted(env.items())), stamp)


@functools.lru_cache(maxsize=8)
def _registry_client(environ: tuple[tuple[str, str], ...], stamp: tuple[int, int, int]) -> RegistryClient:
    return RegistryClient(dict(environ))


# ---------------------------------------------------------------------------
# The steps of one image: docker commands, its digest, its reference rewrite.


def check_docker(settings: Settings) -> Engine:
    """Which engine builds (see `engine_from`), asked once per run; fails early, with a
    clear message, when docker or its engine is missing."""
    import shutil

    environ = settings.env or os.environ
    if shutil.which("docker", path=environ.get("PATH")) is None:
        raise _missing_tool("docker")

    def ask(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return capture(argv, settings.root, settings.env)

    # Both at once: each question is a docker process and a round trip to the engine.
    result, info = in_parallel(lambda: ask(ENGINE_VERSION_ARGV), lambda: ask(ENGINE_INFO_ARGV))
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())
        raise ManageImagesError(
            "cannot reach the Docker engine: start it (e.g. `sudo systemctl start "
            f"docker`) or point DOCKER_HOST at one; docker said: {said}"
        )
    return engine_from(result.stdout, info.stdout, environ.get("DOCKER_BUILDKIT"))


def resolve_builder(settings: Settings, name: str) -> Builder:
    """--builder NAME as docker and buildx know it (asked read-only, also in a dry run): a
    docker context, else a buildx builder; one line when it is neither."""
    context = capture(("docker", "context", "inspect", name), settings.root, settings.env)
    if context.returncode == 0:
        endpoint, secrets = endpoint_shown(context_endpoint(context.stdout))
        SECRETS.add(*secrets)  # docker quotes the host in its errors
        return Builder(name, name, "docker", endpoint)
    builder = capture(("docker", "buildx", "inspect", name), settings.root, settings.env)
    if builder.returncode == 0:
        SECRETS.add(
            *(part for node in inspect_fields(builder.stdout, "Endpoint") for part in endpoint_shown(node)[1])
        )
        return buildx_builder(name, builder.stdout)
    raise ManageImagesError(
        f"--builder {name}: docker has no context and buildx no builder of that name (see `docker context "
        f"ls` and `docker buildx ls`); create it, or leave out --builder {name}"
    )


def builder_problem(settings: Settings, builder: Builder, timeout: float | None = None) -> str:
    """Why BUILDER cannot be reached, in docker's words, or "" (`settings`: the builder's own,
    see `Runner.on`). A context's engine answers `docker version`; a builder of another
    driver is started if need be (`docker buildx inspect --bootstrap`), as a build would,
    except in a dry run, which starts nothing: it asks without --bootstrap."""
    if builder.loads():
        argv: tuple[str, ...] = ("docker", "version", "--format", "{{.Server.Version}}")
    else:
        start = () if settings.dry_run else ("--bootstrap",)
        argv = ("docker", "buildx", "inspect", *start, builder.name)
    try:
        result = capture(argv, settings.root, settings.env, timeout)
    except CommandError:
        raise
    except ManageImagesError as error:  # no answer within the time
        return str(error)
    if result.returncode == 0:
        return ""
    said = " ".join((result.stderr or result.stdout).split())
    return f"docker said: {outside_text(said) or f'exit code {result.returncode}'}"


def reach_builder(settings: Settings, builder: Builder) -> Engine:
    """The engine BUILDER builds with (`settings`: its own); one line naming it when it cannot
    be reached."""
    problem = builder_problem(settings, builder)
    if problem:
        raise ManageImagesError(
            f"builder {builder.describe()} cannot be reached: {problem}; start it, or leave out "
            f"--builder {builder.name}"
        )
    if builder.loads():
        return check_docker(settings)
    inspected = capture(("docker", "buildx", "inspect", builder.name), settings.root, settings.env).stdout
    version = capture(("docker", "buildx", "version"), settings.root, settings.env).stdout.split()
    return buildx_engine(inspected, version[1] if len(version) > 1 else "", builder.driver)


def builder_fault(runner: Runner, image: str, error: ManageImagesError) -> ManageImagesError:
    """`error`, which failed IMAGE on the runner's builder, as a BuilderFault naming the builder
    when the builder can no longer be reached (its engine died, its host went away)."""
    builder = runner.builders.get(runner.builder)
    if builder is None or CHILDREN.stopping or isinstance(error, BuilderFault):
        return error
    problem = builder_problem(runner.settings, builder, PROBE_TIMEOUT)
    if not problem:
        return error
    # Its command's hint would point at DOCKER_HOST, which a builder does not use.
    said = str(error).replace(NO_ENGINE_HINT, f"start builder {builder.name} again, or leave it out")
    return BuilderFault(
        f"{image}: builder {builder.describe()} cannot be reached any more ({problem}); {said}",
        builder.name,
        error.returncode,
    )


def offered_platforms(settings: Settings, engine: Engine) -> tuple[str, ...]:
    """The platforms the engine's builder can build for (`docker buildx inspect`): its own,
    and those its binfmt handlers run; only its own without buildx to ask."""
    own = (normalize_platform(*engine.platform.split("/")),)
    if engine.builder != "buildkit" or not engine.buildx:
        return own
    result = capture(BUILDER_INSPECT_ARGV, settings.root, settings.env)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[:200]
        raise ManageImagesError(
            f"`{format_command(BUILDER_INSPECT_ARGV)}` failed, so the platforms the builder can build for "
            f"are unknown: {said or f'exit code {result.returncode}'}; fix the builder and run again"
        )
    return builder_platforms(result.stdout) or own


def engine_for_plan(runner: Runner) -> Engine | None:
    """The engine, also in a dry run (which asks docker read-only); None, said in a line,
    when a dry run finds no engine: the commands shown are then the classic builder's.
    Only a dry run prints the `Engine:` line (#19: in -n output and in --json): a real
    run's output stays the original's (#22), and --json names the engine in every run."""
    try:
        engine = check_docker(runner.settings)
    except ManageImagesError as error:
        if not runner.settings.dry_run:
            raise
        runner.say(f"Engine: unknown ({error}); showing the classic builder's commands")
        return None
    if runner.settings.dry_run:
        runner.say(f"Engine: {engine.describe()}")
    return engine


def configure_gcloud_auth(runner: Runner) -> None:
    """Runs `gcloud auth configure-docker` (printed only, in a dry run)."""
    import shutil

    settings = runner.settings
    if not settings.dry_run and shutil.which("gcloud", path=(settings.env or os.environ).get("PATH")) is None:
        raise ManageImagesError(
            "gcloud not found. See https://cloud.google.com/sdk/install for installation."
        )
    runner.run(gcloud_argv(settings.registry), interactive=True)


def registry_digest(settings: Settings, ref: str) -> str | None:
    """The digest the registry serves for `ref` (by tag or by digest), or None if it serves
    nothing: one HEAD through the registry API, no engine needed."""
    return registry_client(settings).served_digest(*split_reference(ref))


def promote_image(runner: Runner, image: str, pinned: str) -> str:
    """Publishes the pinned manifest under TAG through the registry API: a GET by digest,
    a PUT of the same bytes with the same media type under the tag, and the digest the
    registry answers checked. No engine; no layer moves; an index stays an index."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    host, repository = split_url(url)
    manifests = f"{api_host(host)}/v2/{repository}/manifests"
    runner.say(f"Running: `GET {manifests}/{pinned}`", image)
    if settings.dry_run:
        runner.say(f"Running: `PUT {manifests}/{settings.tag}` (the same bytes and media type)", image)
        return pinned
    client = runner.registry()
    manifest = client.get_manifest(url, pinned)
    runner.say(
        f"Running: `PUT {manifests}/{settings.tag}` ({manifest.media_type}, {len(manifest.data)} bytes)",
        image,
    )
    answered = client.put_manifest(url, settings.tag, manifest)
    if answered != pinned:
        raise RegistryError(
            f"{host} answered the PUT of {url}:{settings.tag} with the digest {answered}, not the pinned "
            f"{pinned}; it rewrote the manifest: run --verify_pinned to see what it serves"
        )
    runner.say(f"{url}:{settings.tag} is {pinned} ({host} confirmed)", image)
    return pinned


def local_image(settings: Settings, engine: Engine | None, ref: str, metadata: str = "") -> LocalImage | None:
    """What the engine holds as `ref` (None if nothing). Its config digest is its ID on a
    graph-driver store; on the containerd store (where the ID is the manifest's or index's
    digest) it comes from the build's `metadata` file, when there is one."""
    import json

    result = capture(image_json_argv(ref), settings.root, settings.env)
    if result.returncode != 0:
        return None
    try:
        document = json.loads(result.stdout)
    except ValueError:
        document = None
    return local_from(document, ref, engine, metadata)


def local_from(document: object, ref: str, engine: Engine | None, metadata: str = "") -> LocalImage:
    """The LocalImage of `document`, what `docker image inspect` printed for `ref`."""
    try:
        if not isinstance(document, dict):
            raise TypeError(document)
        image_id = check_digest(str(document["Id"]), f"the ID of {ref}")
        repo_digests = tuple(str(entry) for entry in document.get("RepoDigests") or ())
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ManageImagesError(
            f"`{format_command(image_json_argv(ref))}` printed no image as JSON; check the docker client"
        ) from None
    config_digest: str | None = image_id
    if engine is not None and engine.containerd():
        config_digest = built_config_digest(metadata)
    view = inspect_view(document)
    return LocalImage(image_id, config_digest, str(view["platform"]), view, repo_digests)


def built_config_digest(metadata: str) -> str | None:
    """The config digest buildx wrote to a build's `--metadata-file`, or None. None for an
    index too: an index has a config per platform, and buildx writes the index's own digest
    under this key (so a config digest equal to the image's digest is none)."""
    config = metadata_digest(metadata, "containerimage.config.digest")
    return None if config == metadata_digest(metadata, "containerimage.digest") else config


def metadata_digest(metadata: str, key: str) -> str | None:
    """A digest buildx wrote to a build's `--metadata-file` (`containerimage.digest`: the
    pushed image's; `cache.manifest`: a descriptor, as JSON text, of the cache it exported),
    or None."""
    import json

    try:
        digest = json.loads(Path(metadata).read_bytes())[key]
        if key == "cache.manifest":
            digest = json.loads(digest)["digest"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return str(digest) if DIGEST_RE.match(str(digest)) else None


def compare_with(runner: Runner, image: str, local: LocalImage, digest: str, pin: bool = False) -> Identity:
    """How `local` compares with what the registry serves as URL@DIGEST: platform by
    platform for an image built for several (see `local_identities`); else for the local
    image's platform (an index is read for it). `pin`: DIGEST is IMAGE's pin, and the run
    records how the image compares with it."""
    if len(built_for(runner, image)) > 1:
        identities = local_identities(runner, image, local, digest)
        identity = overall_identity(identities)
        if pin:
            runner.platform_identities[image] = identities
    else:
        url = image_url(runner.settings.registry, image)
        config_digest, config = runner.registry().image_config(url, digest, local.platform)
        identity = identity_of(local, digest, config_digest, config)
    if pin:
        runner.identities[image] = identity
    return identity


def built_for(runner: Runner, image: str) -> tuple[str, ...]:
    """What IMAGE is built for in this run: its entry (IMAGE_PLATFORMS, or --platform), else
    the engine's platform (the default's, when no engine is known)."""
    engine = runner.engine
    return tuple(runner.platforms.get(image) or ()) or (
        engine.platform if engine else Engine._field_defaults["platform"],
    )


def local_identities(runner: Runner, image: str, local: LocalImage, digest: str) -> dict[str, Identity]:
    """platform -> how the index the engine holds for IMAGE compares with the image the
    registry serves for that platform in URL@DIGEST (see `config_identity`): the same
    digest is the same index; else the local configs (`saved_configs`, read once) against
    the pin's (`platform_configs`)."""
    platforms = built_for(runner, image)
    if local.id == digest:
        return dict.fromkeys(platforms, "identical")
    url = image_url(runner.settings.registry, image)
    built = local.configs if local.configs is not None else saved_configs(runner, image)
    pinned = platform_configs(runner.registry(), url, digest)
    identities = {
        platform: config_identity(built.get(platform), pinned.get(platform), same_view)
        for platform in platforms
    }
    return {**identities, **dropped_platforms(list(pinned), platforms)}


def platform_configs(
    client: RegistryClient, url: str, digest: str, platforms: Sequence[str] | None = None
) -> dict[str, tuple[str, bytes]]:
    """platform -> (config digest, config) of each image of `platforms` (None: of every
    platform) the registry serves in URL@DIGEST: through the index (attestations left out),
    or, for an image manifest, its one config (by the platform the config says)."""
    manifest = client.get_manifest(url, digest)
    document = _json_object(manifest.data, f"{url}@{digest}")
    if manifest.media_type not in INDEX_MEDIA_TYPES and "manifests" not in document:
        config = client.image_config(url, digest)
        return {config_platform(config[1]): config}
    held: dict[str, str] = {}
    for platform, entry in index_entries(document):
        held.setdefault(platform, entry)
    wanted = held if platforms is None else [platform for platform in platforms if platform in held]
    return {platform: client.image_config(url, held[platform]) for platform in wanted}


def saved_configs(runner: Runner, image: str) -> dict[str, tuple[str, bytes]]:
    """platform -> (config digest, config) of each image of what the engine holds as
    REGISTRY/IMAGE:TAG, read from `docker save` (the OCI layout of every platform the
    containerd store holds; see `layout_configs`): `docker image inspect` shows the engine's
    platform alone. The layers stream by unread; a deadline and a cap bound the rest."""
    import subprocess

    settings = runner.settings
    argv = ("docker", "save", f"{image_url(settings.registry, image)}:{settings.tag}")
    pipe = subprocess.PIPE
    process = CHILDREN.start(
        argv, False, cwd=settings.root, env=settings.env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(SAVE_DEADLINE, expire)
    timer.start()
    try:
        blobs, problem = _layout_blobs(process)
    finally:
        timer.cancel()
        CHILDREN.done(process)
    if expired.is_set():
        problem = f"it did not finish within {SAVE_DEADLINE} s"
    elif process.returncode < 0 and not problem:
        raise CommandError(argv, process.returncode)
    try:
        if problem:
            raise ValueError(problem)
        return layout_configs(blobs)
    except ValueError as error:
        raise ManageImagesError(
            f"`{format_command(argv)}` gave no image to compare platform by platform "
            f"({outside_text(str(error))}); check the engine and run again"
        ) from None


def _layout_blobs(process: subprocess.Popen[bytes]) -> tuple[dict[str, bytes], str]:
    """The JSON files of the OCI layout `docker save` streams (index.json, manifests,
    configs: blobs that start with `{`; layers never do), and what went wrong, or ""."""
    import tarfile

    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                wanted = member.name == "index.json" or member.name.startswith("blobs/sha256/")
                handle = archive.extractfile(member) if wanted and member.size <= CONFIG_LIMIT else None
                head = handle.read(1) if handle is not None else b""
                if head != b"{" or handle is None:
                    continue
                if sum(map(len, blobs.values())) + member.size > SAVE_KEEP:
                    raise ValueError(f"more than {SAVE_KEEP} bytes of manifests and configs")
                blobs[member.name] = head + handle.read()
        problem = ""
    except (tarfile.TarError, ValueError, OSError) as error:
        process.kill()  # a failed save has ended already: its own words say why, below
        problem = str(error)
    said = process.stderr.read(ERROR_BODY_LIMIT) if process.stderr is not None else b""
    code = process.wait()
    if code > 0 or problem:
        return blobs, " ".join(said.decode("utf-8", "replace").split()) or problem or f"exit code {code}"
    return blobs, ""


def cache_sources(runner: Runner, image: str, pinned: str | None) -> tuple[str, ...]:
    """The `--cache-from` of a build that reproduces the pinned image on a cold engine, or ()
    (with a line and a note saying why) when there is nothing to read.

    The classic builder takes its cache from a local image, so the pin is
    pulled; BuildKit reads it from the registry itself: on the containerd
    store the registry cache kept beside the pin, else the pinned image's
    inline cache."""
    settings = runner.settings
    engine = runner.engine
    url = image_url(settings.registry, image)
    if pinned is None:
        runner.say(
            f"No cache for {image}: {PROD_DIGESTS_PATH} does not pin it; building without --cache-from", image
        )
        runner.note(image, "not pinned: built without cache")
        return ()
    if engine is None or engine.builder == "classic":
        try:
            runner.run(pull_digest_argv(url, pinned), image)
        except CommandError:
            return _no_cache(runner, image, pinned)
        return (f"{url}@{pinned}",)
    if settings.dry_run:
        return (
            f"type=registry,ref={url}:{pinned_cache_tag(pinned)}"
            if engine.registry_cache()
            else f"{url}@{pinned}",
        )
    client = runner.registry()
    cache_tags = (
        registry_caches_beside(client, url, pinned, built_for(runner, image))
        if engine.registry_cache()
        else ()
    )
    if cache_tags:
        return tuple(f"type=registry,ref={url}:{tag}" for tag in cache_tags)
    if client.served_digest(url, pinned) is None:
        return _no_cache(runner, image, pinned)
    if engine.registry_cache():
        runner.say(
            f"No registry cache beside {url}@{pinned[:19]} (pinned before caches were kept); "
            "reading the pinned image's inline cache, if it has any",
            image,
        )
    return (f"{url}@{pinned}",)


def registry_caches_beside(
    client: RegistryClient, url: str, pinned: str, platforms: Sequence[str]
) -> tuple[str, ...]:
    """The tags of the registry caches kept beside the pin, () when there is none. For one
    platform: the one beside the pin, else, when the pin is an index, the one beside its
    image for that platform. For several: the one beside each platform's image in the index
    (see `platform_cache_builds`), with the one beside the index when a platform has none."""
    tags = (
        [pinned_cache_tag(pinned)] if client.served_digest(url, pinned_cache_tag(pinned)) is not None else []
    )
    if (tags and len(platforms) == 1) or client.served_digest(url, pinned) is None:
        return tuple(tags)
    manifest = client.get_manifest(url, pinned)
    if manifest.media_type not in INDEX_MEDIA_TYPES:
        return tuple(tags)
    held: dict[str, str] = {}
    for platform, digest in index_entries(_json_object(manifest.data, f"{url}@{pinned}")):
        held.setdefault(platform, digest)
    beside = [
        pinned_cache_tag(held[platform])
        for platform in platforms
        if DIGEST_RE.match(held.get(platform, ""))
        and client.served_digest(url, pinned_cache_tag(held[platform])) is not None
    ]
    return tuple(beside + tags) if len(beside) < len(platforms) else tuple(beside)


def _no_cache(runner: Runner, image: str, pinned: str) -> tuple[str, ...]:
    url = image_url(runner.settings.registry, image)
    runner.say(
        f"No cache for {image}: the registry does not serve {url}@{pinned}; building without --cache-from",
        image,
    )
    runner.note(image, "pinned image not served: built without cache")
    return ()


def verify_built(runner: Runner, image: str, pinned: str | None, metadata: str = "") -> LocalImage | None:
    """Compares the image just built with the one the tree pins, by content (see
    `identity_of`); fails, before any push, if they differ. What the engine holds
    (None in a dry run)."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if settings.dry_run:
        runner.say(f"Dry run: would compare {url}:{settings.tag} with the pinned {url}@{pinned}", image)
        return None
    if pinned is None:
        runner.note(image, "not pinned")
        raise ManageImagesError(
            f"{image} has no line in {PROD_DIGESTS_PATH}, so --verify_pinned has nothing to compare it with; "
            "pin it first (--build --push --update_references)"
        )
    local = local_image(settings, runner.engine, f"{url}:{settings.tag}", metadata)
    if local is None:
        raise ManageImagesError(
            f"the engine holds no {url}:{settings.tag} right after building it; run again"
        )
    if runner.registry().served_digest(url, pinned) is None:
        runner.note(image, "pinned image not served")
        raise ManageImagesError(
            f"{settings.registry} does not serve the pinned {url}@{pinned[:19]}, so {image} cannot be "
            "compared with it: push and re-pin it (--build --push --update_references)"
        )
    if len(built_for(runner, image)) > 1:
        return verify_index(runner, image, local, pinned)
    identity = compare_with(runner, image, local, pinned, pin=True)
    if identity != "differs":
        what = "the same config" if identity == "identical" else "the same content, another config digest"
        runner.say(f"Reproduced the pinned image {url}@{pinned[:19]}: {what}", image)
        runner.note(image, "reproduced" if identity == "identical" else "reproduced (same content)")
        return local
    runner.note(image, "differs")
    raise ManageImagesError(
        f"{image} differs from the image the tree pins: built {str(local.config_digest or local.id)[:19]}, "
        f"pinned {url}@{pinned[:19]} holds other layers or another config. Its Dockerfile or a parent "
        "changed since it was pinned: rebuild, push and re-pin it (--build --push --update_references), "
        "or find out why; nothing was pushed"
    )


def verify_index(runner: Runner, image: str, local: LocalImage, pinned: str) -> LocalImage:
    """--verify_pinned of an image built for several platforms: the index just built against
    the pinned one, platform by platform (see `local_identities`); fails, before any push,
    naming each platform whose image differs from the pin's or that the pin lacks."""
    url = image_url(runner.settings.registry, image)
    if local.id != pinned:
        local = local._replace(configs=saved_configs(runner, image))
    identity = compare_with(runner, image, local, pinned, pin=True)
    identities = runner.platform_identities[image]
    if identity != "differs":
        what = (
            "the same index"
            if local.id == pinned
            else "the same config for each platform"
            if identity == "identical"
            else "the same content for each platform, other configs"
        )
        runner.say(
            f"Reproduced the pinned index {url}@{pinned[:19]} ({', '.join(identities)}): {what}", image
        )
        runner.note(image, "reproduced" if identity == "identical" else "reproduced (same content)")
        return local
    differ = [platform for platform, found in identities.items() if found == "differs"]
    same = [platform for platform, found in identities.items() if found != "differs"]
    runner.note(image, f"differs ({', '.join(differ)})")
    raise ManageImagesError(
        f"{image} differs from the index the tree pins for {', '.join(differ)}: built {local.id[:19]}, "
        f"pinned {url}@{pinned[:19]} holds other layers or another config for "
        f"{'that platform' if len(differ) == 1 else 'those platforms'}, or none "
        f"({', '.join(same) + ' reproduced' if same else 'no platform reproduced'}). Its Dockerfile or a "
        "parent changed since it was pinned: rebuild, push and re-pin it (--build --push "
        "--update_references), or find out why; nothing was pushed"
    )


_PUSHED_RE = re.compile(r"\bdigest: (sha256:[0-9a-f]{64})\b")
_CACHE_MANIFEST_RE = re.compile(r"\bwriting cache (?:image )?manifest (sha256:[0-9a-f]{64})\b")


def confirmed_push(runner: Runner, image: str, said: Sequence[str]) -> str:
    """The digest the registry serves under TAG right after IMAGE's push, which must be the
    last one docker `said` it pushed (the push's output, or the build's metadata), if any."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    served = runner.registry().served_digest(url, settings.tag)
    if served is None:
        raise ManageImagesError(
            f"{settings.registry} does not serve {url}:{settings.tag} right after its push; check the "
            "registry and push again"
        )
    if said and said[-1] != served:
        raise ManageImagesError(
            f"docker pushed {url}:{settings.tag} as {said[-1][:19]}, but the registry serves "
            f"{served[:19]} under it: another push raced this one; run again"
        )
    return served


def keep_build_cache(runner: Runner, image: str, digest: str, built: Built) -> None:
    """Tags the registry cache this run's build wrote (the cache manifest its metadata, else
    its output, names) as the cache of the pushed image (URL:sha256-HEX.cache), where a cold
    engine looks for it. (A build that pushes prints its push after the cache: the
    metadata holds what the output's last lines may no longer show.)"""
    settings = runner.settings
    url = image_url(settings.registry, image)
    target = pinned_cache_tag(digest)
    written = [
        match.group(1) for line in built.output for match in [_CACHE_MANIFEST_RE.search(line)] if match
    ]
    written += filter(None, [metadata_digest(built.metadata, "cache.manifest")])
    if settings.dry_run:
        runner.say(f"Dry run: would keep the build's registry cache as {url}:{target}", image)
        return
    if not written:
        runner.say(
            f"The build of {image} wrote no registry cache (its export failed), so none is kept beside "
            f"{url}@{digest[:19]}: a cold engine will rerun its steps",
            image,
        )
        runner.note(image, "no registry cache kept")
        return
    runner.say(f"Keeping the build cache {url}@{written[-1][:19]} as {url}:{target}", image)
    client = runner.registry()
    client.put_manifest(url, target, client.get_manifest(url, written[-1]))


def registry_identity(client: RegistryClient, url: str, pinned: str, other: str, platform: str) -> Identity:
    """How the images the registry serves as URL@PINNED and URL@OTHER compare, config to
    config for `platform` (BuildKit's cache record left out; see `same_config`)."""
    if pinned == other:
        return "identical"
    pinned_config, pinned_bytes = client.image_config(url, pinned, platform)
    other_config, other_bytes = client.image_config(url, other, platform)
    if pinned_config == other_config:
        return "identical"
    return "same content" if same_config(pinned_bytes, other_bytes) else "differs"


def registry_identities(
    client: RegistryClient, url: str, pinned: str, other: str, platforms: Sequence[str]
) -> dict[str, Identity]:
    """platform -> how the images the registry serves for it in URL@PINNED and URL@OTHER
    compare (see `registry_identity`); a platform either lacks differs, and so does one the
    pin holds that `platforms` no longer lists."""
    if pinned == other:
        return dict.fromkeys(platforms, "identical")
    ours, theirs = platform_configs(client, url, pinned), platform_configs(client, url, other, platforms)
    identities = {
        platform: config_identity(theirs.get(platform), ours.get(platform), same_config)
        for platform in platforms
    }
    return {**identities, **dropped_platforms(list(ours), platforms)}


def pin_of_push(runner: Runner, image: str, pinned: str | None, pushed: str, label: str | None) -> str:
    """The digest to pin IMAGE to after this run pushed it as PUSHED (built with the inputs
    `label`, if known): the pin, when the registry serves it and the push has its content,
    and then the tag is put back on the pin, so that a pull of the tag and --verify_pinned
    agree with the tree; else PUSHED."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    kept = kept_pin(runner, image, pinned, pushed, label)
    if kept is None or kept == pushed:
        return kept or pushed
    identity = runner.identities[image]
    runner.say(
        f"Keeping the pin {url}@{kept[:19]}: {identity} to the push; :{settings.tag} serves the pin again",
        image,
    )
    runner.note(image, f"pin kept ({identity}; pushed as {pushed[:19]})")
    client = runner.registry()
    served = client.put_manifest(url, settings.tag, client.get_manifest(url, kept))
    if served != kept:
        raise ManageImagesError(
            f"{settings.registry} took the pin's manifest under {url}:{settings.tag} but serves "
            f"{served[:19]}; check the registry, then run --image {image} --promote --tag {settings.tag}"
        )
    return kept


def pin_digest(
    runner: Runner,
    image: str,
    pinned: str | None,
    pushed: str | None,
    metadata: str = "",
    local: LocalImage | None = None,
    label: str | None = None,
) -> str:
    """The digest to pin IMAGE to: one the registry serves, never a local guess.

    The pin stays when what was pushed or built has its content (no churn
    from manifest bytes, key order or BuildKit's cache record; the tag is
    pointed back at the pin); else the push's digest; without a
    push, the digest the registry serves under TAG, or one of the image's
    RepoDigests, if it is the local image. Otherwise one line, and no file
    changes. `local`: what the engine holds, when this run already asked;
    `label`: the inputs label the push was built with, if known."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    client = runner.registry()
    if pushed is not None:
        return pin_of_push(runner, image, pinned, pushed, label)
    if local is None:
        local = local_image(settings, runner.engine, f"{url}:{settings.tag}", metadata)
    if local is None:
        raise ManageImagesError(
            f"the engine holds no {url}:{settings.tag}, so there is no digest to pin: build or pull it first"
        )
    tagged = client.served_digest(url, settings.tag)
    names = docker_names(url)
    known = [entry.partition("@")[2] for entry in local.repo_digests if entry.partition("@")[0] in names]
    if len(built_for(runner, image)) > 1 and local.id not in (pinned, tagged) and local.configs is None:
        local = local._replace(configs=saved_configs(runner, image))  # read once, for every candidate
    for candidate in dict.fromkeys(digest for digest in (pinned, tagged, *known) if digest):
        if candidate != tagged and client.served_digest(url, candidate) is None:
            continue
        identity = compare_with(runner, image, local, candidate, pin=candidate == pinned)
        if identity == "differs":
            continue
        if candidate == pinned:
            runner.note(image, f"pin kept ({identity})")
        return candidate
    raise ManageImagesError(
        f"{url}:{settings.tag} differs from every image {settings.registry} serves for it (the pin "
        f"{str(pinned)[:19]}, :{settings.tag} {str(tagged)[:19]}): push it (--push), or find out why it "
        "changed; no file was changed"
    )


def kept_pin(
    runner: Runner, image: str, pinned: str | None, pushed: str, label: str | None = None
) -> str | None:
    """The pin, when the registry serves it and what was pushed has its content (config to
    config, see `registry_identity`; platform by platform for an image built for several,
    see `registry_identities`), which this records; else None. A push built with the
    inputs `label` differs from a pin whose label is another without a look at its config."""
    url = image_url(runner.settings.registry, image)
    client = runner.registry()
    if pinned is None or client.served_digest(url, pinned) is None:
        return None
    if label is not None and pin_label(runner, image, pinned)[1] != label:
        runner.identities[image] = "differs"
        return None
    platforms = built_for(runner, image)
    if len(platforms) > 1:
        identities = registry_identities(client, url, pinned, pushed, platforms)
        runner.platform_identities[image] = identities
        identity = overall_identity(identities)
    else:
        identity = registry_identity(client, url, pinned, pushed, platforms[0])
    runner.identities[image] = identity
    return pinned if identity != "differs" else None


def held_images(
    runner: Runner, images: Sequence[str], steps: Steps
) -> dict[str, dict[str, object] | None] | None:
    """In a dry run that only rewrites references, what the engine holds of
    each image under TAG (its `docker image inspect` document, or None), from
    one `docker image inspect` of them all: a dry run asks the registry about
    those it holds, as a real run would, and says the digest of the others is
    unknown. None otherwise."""
    settings = runner.settings
    if not (settings.dry_run and steps.update_references) or steps.build or steps.push:
        return None
    urls = {image: image_url(settings.registry, image) for image in images}
    argv = inspect_many_argv([f"{url}:{settings.tag}" for url in urls.values()])
    try:
        result = capture(argv, settings.root, settings.env)
    except CommandError:  # killed by a signal: 128 + N
        raise
    except ManageImagesError:  # no docker here: a dry run goes on without digests
        return dict.fromkeys(images)
    return {image: inspected_among(result.stdout, url, settings.tag) for image, url in urls.items()}


def docker_steps(
    runner: Runner,
    image: str,
    steps: Steps,
    options: BuildOptions,
    pins: Mapping[str, str],
    held: Mapping[str, dict[str, object] | None] | None = None,
) -> str | None:
    """Pull, build and push one image; returns the digest to pin when
    references are to be updated and it can be known (see `pin_digest`).
    `pins` holds the digest prod_digests.txt gives each image."""
    url = image_url(runner.settings.registry, image)
    if steps.pull:
        runner.begin(image, "pull")
        runner.run(pull_argv(url, runner.settings.tag), image)
    built = build_step(runner, image, steps, options, pins.get(image)) if steps.build else Built()
    if steps.push and not (built.pushed_by_build or built.unchanged):
        built = push_step(runner, image, steps, built)
    if image in runner.rebasing:
        runner.built_on[image] = dependents_reference(runner, image, pins.get(image), built, options)
    if not steps.update_references:
        return None
    return digest_to_pin(runner, image, steps, pins.get(image), built, held)


def build_step(runner: Runner, image: str, steps: Steps, options: BuildOptions, pinned: str | None) -> Built:
    """--build of one image: what it reads (`image_inputs`), and, with --skip_unchanged,
    nothing more when those are its pin's inputs (`keep_unchanged`); else the build."""
    runner.begin(image, "build")
    inputs, dockerfile = image_inputs(runner, image, options)
    if options.skip_unchanged:
        inputs = against_pin(runner, image, inputs, pinned)
    runner.inputs[image] = inputs
    if inputs.unchanged and pinned is not None:
        return keep_unchanged(runner, image, steps, pinned)
    for parent, reference in inputs.built_on:
        built = reference.partition("@")[2][:19] or f":{runner.settings.tag}, not pushed"
        runner.note(image, f"built on this run's {parent} ({built})")
    label = build_label(runner, image, steps, options, inputs, pinned)
    return build_image(
        runner, image, steps, options, pinned, label, rebased_source(runner, image, inputs, dockerfile)
    )


def build_image(
    runner: Runner,
    image: str,
    steps: Steps,
    options: BuildOptions,
    pinned: str | None,
    label: str | None,
    source: tuple[str, tuple[tuple[str, str], ...]] = ("", ()),
) -> Built:
    """One image's `docker build`, then --verify_pinned's comparison with its pin. Through
    buildx, with --push, the build pushes the image itself (one command, one pass over its
    layers) unless it must first be compared with its pin; the digest comes from the
    build's metadata, confirmed by the registry."""
    settings, engine = runner.settings, runner.engine
    url = image_url(settings.registry, image)
    cache_from = cache_sources(runner, image, pinned) if options.cache_from_pinned else ()
    buildx = engine is not None and bool(engine.buildx)
    metadata = str(runner.scratch() / f"{image}.json") if buildx else ""
    platforms = platform_flag(runner.platforms.get(image) or (), engine)
    # An index's cache is written platform by platform, after the build (`platform_cache_builds`).
    cache_to = "" if len(platforms) > 1 else cache_export(engine, url, settings.tag, steps.push)
    push = buildx and steps.push and not options.verify_pinned
    plan = BuildPlan(
        url,
        settings.tag,
        f"{DOCKER_DIR}/{image}",
        cache_from,
        cache_to,
        metadata,
        push,
        label,
        *source,
        platforms,
    )
    output = runner.run(build_argv(plan, engine, options), image)
    local = verify_built(runner, image, pinned, metadata) if options.verify_pinned else None
    caches = platform_cache_builds(runner, image, plan, options) if steps.push and len(platforms) > 1 else ()
    built = Built(tuple(output), metadata, None, local, cache_to, push, label=label, platform_caches=caches)
    if not push:
        return built
    said = metadata_digest(metadata, "containerimage.digest")
    pushed = None if settings.dry_run else confirmed_push(runner, image, [said] if said else [])
    keep_caches(runner, image, pushed or "sha256:<pushed>", built)
    return built._replace(pushed=pushed)


def platform_cache_builds(
    runner: Runner, image: str, plan: BuildPlan, options: BuildOptions
) -> tuple[tuple[str, str], ...]:
    """The registry cache of each platform of an index, each written by a build of its own
    (the same build for that platform alone, every step from the engine's cache, with
    `--output type=cacheonly`: no image is stored or pushed); (platform, the cache manifest
    written, or "") for each. One cache for the whole index would not do: BuildKit gives
    each layer blob in it one creation time, so a platform whose layer has the bytes of
    another platform's (an empty RUN, a `mkdir`) would take the other's time, and a cold
    engine would not reproduce it. Only on the containerd store with buildx (see
    `cache_export`)."""
    engine = runner.engine
    found = []
    for platform in plan.platforms:
        cache_to = cache_export(engine, plan.url, plan.tag, True, platform)
        if not cache_to.startswith("type=registry,"):
            return ()
        metadata = str(runner.scratch() / f"{image}.{platform.replace('/', '-')}.cache.json")
        alone = plan._replace(
            cache_to=cache_to, metadata=metadata, push=False, platforms=(platform,), output="type=cacheonly"
        )
        output = runner.run(build_argv(alone, engine, options), image)
        written = [match.group(1) for line in output for match in [_CACHE_MANIFEST_RE.search(line)] if match]
        written += filter(None, [metadata_digest(metadata, "cache.manifest")])
        found.append((platform, written[-1] if written else ""))
    return tuple(found)


def keep_caches(runner: Runner, image: str, digest: str, built: Built) -> None:
    """Keeps the registry caches the build wrote beside the image pushed as `digest`: its
    cache (`keep_build_cache`), or, for an index, each platform's (`keep_platform_caches`)."""
    if built.cache_to.startswith("type=registry,"):
        keep_build_cache(runner, image, digest, built)
    if built.platform_caches:
        keep_platform_caches(runner, image, digest, built)


def keep_platform_caches(runner: Runner, image: str, digest: str, built: Built) -> None:
    """Tags the registry cache of each platform of the index pushed as `digest` as the cache
    of that platform's image in it (URL:sha256-HEX.cache, HEX the image manifest's), where a
    cold engine looks for it (`registry_caches_beside`)."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if settings.dry_run:
        runner.say(
            f"Dry run: would keep each platform's registry cache beside its image in {url}@{digest}", image
        )
        return
    client = runner.registry()
    held: dict[str, str] = {}
    for platform, manifest in index_entries(_json_object(client.get_manifest(url, digest).data, url)):
        held.setdefault(platform, manifest)
    for platform, cache in built.platform_caches:
        target = pinned_cache_tag(held.get(platform, ""))
        if not cache or not DIGEST_RE.match(held.get(platform, "")):
            runner.say(
                f"The {platform} build of {image} wrote no registry cache (its export failed), so none is "
                f"kept for it: a cold engine will rerun its {platform} steps",
                image,
            )
            runner.note(image, f"no registry cache kept for {platform}")
            continue
        runner.say(f"Keeping the {platform} build cache {url}@{cache[:19]} as {url}:{target}", image)
        client.put_manifest(url, target, client.get_manifest(url, cache))


def image_inputs(runner: Runner, image: str, options: BuildOptions) -> tuple[Inputs, bytes]:
    """What IMAGE's build reads, and the Dockerfile it builds: the tracked one, each parent
    this run built (without --update_references) in place of the pin it names (see
    `dependents_reference`); the digest of that Dockerfile, of the build context as docker
    sends it and of the options that change its result (see `inputs_digest`); or why they
    are not all known (`unknown_sources`, `context_entries`)."""
    settings = runner.settings
    folder = settings.root / DOCKER_DIR / image
    tracked = (folder / "Dockerfile").read_bytes()
    rebase = {
        parent.image: runner.built_on[parent.image]
        for parent in registry_parents(tracked, settings.registry)
        if runner.built_on.get(parent.image, f"{image_url(settings.registry, parent.image)}@{parent.digest}")
        != f"{image_url(settings.registry, parent.image)}@{parent.digest}"
    }
    dockerfile = rebased_dockerfile(tracked, settings.registry, rebase) if rebase else tracked
    local = [parent for parent, reference in rebase.items() if "@" not in reference]
    if local:
        reason = f"it is built on {local[0]} as this run built it, not pushed, so not by digest"
    else:
        reason = unknown_sources(dockerfile, settings.registry)
    try:
        entries = context_entries(folder)
    except ValueError as error:
        entries, reason = [], reason or f"its build context cannot be read whole: {error}"
    chosen = (
        ("platform", ",".join(built_for(runner, image))),
        ("attestations", "true" if options.attestations else "false"),
        ("docker build", "\0".join(options_argv(options))),
    )
    digest = None if reason else inputs_digest(dockerfile, entries, chosen)
    return Inputs(digest, reason, tuple(sorted(rebase.items()))), dockerfile


def rebased_source(
    runner: Runner, image: str, inputs: Inputs, dockerfile: bytes
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """How a build reads its Dockerfile rebased on parents this run built (`inputs.built_on`;
    the tracked file is never touched): through buildx, when each is a digest, a named
    build context per reference as written (`--build-context REF=docker-image://URL@DIGEST`);
    else a copy with the references rewritten, in the run's scratch folder (`--file`), with
    its Dockerfile.dockerignore, if any, beside it (BuildKit looks for it there). A named
    context is not used for an image built here and not pushed: on the containerd image
    store BuildKit resolves it in the registry, where FROM takes the local image."""
    settings, engine = runner.settings, runner.engine
    targets = dict(inputs.built_on)
    folder = settings.root / DOCKER_DIR / image
    if not targets:
        return "", ()
    if engine is not None and engine.buildx and all("@" in target for target in targets.values()):
        parents = registry_parents((folder / "Dockerfile").read_bytes(), settings.registry)
        named = ((parent.ref, targets[parent.image]) for parent in parents if parent.image in targets)
        return "", tuple(dict.fromkeys(named))
    path = runner.scratch() / f"{image}.Dockerfile"
    if not settings.dry_run:
        path.write_bytes(dockerfile)
        if (folder / "Dockerfile.dockerignore").is_file():
            (runner.scratch() / f"{image}.Dockerfile.dockerignore").write_bytes(
                (folder / "Dockerfile.dockerignore").read_bytes()
            )
    return str(path), ()


def dependents_reference(
    runner: Runner, image: str, pinned: str | None, built: Built, options: BuildOptions
) -> str:
    """What IMAGE's dependents in this run build on in place of the pin their Dockerfiles
    name (without --update_references, which rewrites those first): the pin, when this run
    kept it (unchanged, reproduced, pushed with its content) or built its content again;
    the pushed digest; else the image this run built, by its tag (it has no digest)."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if pinned is not None and (built.unchanged or options.verify_pinned):  # verified, or it failed
        return f"{url}@{pinned}"
    if settings.dry_run:
        return f"{url}:{settings.tag}"
    if built.pushed is not None:
        return f"{url}@{kept_pin(runner, image, pinned, built.pushed, built.label) or built.pushed}"
    local = (
        None
        if pinned is None
        else local_image(settings, runner.engine, f"{url}:{settings.tag}", built.metadata)
    )
    if pinned is None or local is None:
        return f"{url}:{settings.tag}"
    if any(
        entry.partition("@") == (name, "@", pinned)
        for entry in local.repo_digests
        for name in docker_names(url)
    ):
        return f"{url}@{pinned}"  # the engine holds the pin itself
    try:
        same = (
            runner.registry().served_digest(url, pinned)
            and compare_with(runner, image, local, pinned) != "differs"
        )
    except RegistryError as error:  # a build alone needs no registry: build on what was built
        runner.say(
            f"Cannot compare {image} with its pin ({error}): its dependents build on it as built", image
        )
        same = False
    return f"{url}@{pinned}" if same else f"{url}:{settings.tag}"


def pin_label(runner: Runner, image: str, pinned: str) -> tuple[bool, str | None]:
    """Whether the registry serves IMAGE's pin, and the inputs label of its config (for the
    first platform it is built for, through an index), if it has one: a GET of the manifest
    and one of the config, both by digest."""
    import json

    url = image_url(runner.settings.registry, image)
    client = runner.registry()
    if client.served_digest(url, pinned) is None:
        return False, None
    # One build labels every platform's config alike: the first one's says it. A pin without
    # an image of that platform carries no label of these inputs.
    first = built_for(runner, image)[0]
    if runner.platforms.get(image):
        config = platform_configs(client, url, pinned, (first,)).get(first, ("", b""))[1]
    else:
        _, config = client.image_config(url, pinned, first)
    try:
        label = json.loads(config)["config"]["Labels"][INPUTS_LABEL]
    except (ValueError, TypeError, KeyError):
        return True, None
    return True, label if isinstance(label, str) else None


def against_pin(runner: Runner, image: str, inputs: Inputs, pinned: str | None) -> Inputs:
    """`inputs` compared with the inputs label of IMAGE's pin: unchanged exactly when the
    registry serves the pin and its label is these inputs' digest; else why not."""
    if inputs.digest is None:
        return inputs._replace(unchanged=False)
    if pinned is None:
        return inputs._replace(unchanged=False, reason=f"it has no line in {PROD_DIGESTS_PATH}")
    served, label = pin_label(runner, image, pinned)
    if not served:
        reason = "the registry does not serve its pin"
    elif not label:
        reason = "its pin carries no inputs label (built before the label, or by hand)"
    else:
        reason = "" if label == inputs.digest else "its inputs differ from its pin's"
    return inputs._replace(pin=label or None, unchanged=not reason, reason=reason)


def build_label(
    runner: Runner, image: str, steps: Steps, options: BuildOptions, inputs: Inputs, pinned: str | None
) -> str | None:
    """The inputs label IMAGE's build gets: the digest of its inputs, or "" when they are not
    all known (an image inherits its parent's labels, which would otherwise claim the
    parent's inputs as its own). None, no label at all, for a build that must come out as
    its pin (--verify_pinned, or --update_references without --push, which pins only what
    the registry serves) when the pin, from before the label, has none: that build then
    reproduces the pin as it was built."""
    if pinned is not None and (options.verify_pinned or (steps.update_references and not steps.push)):
        served, label = pin_label(runner, image, pinned)
        if served and label is None:
            runner.say(
                f"The pin of {image} carries no inputs label: building it without one, as it was", image
            )
            return None
    return inputs.digest or ""


def pull_pin(runner: Runner, image: str, pinned: str) -> None:
    """The engine gets IMAGE's pin under TAG: one `docker pull URL:TAG` when the registry
    serves the pin under TAG and the pull says it got the pin (as after --promote); else
    a pull by digest, then a tag."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if not settings.dry_run and runner.registry().served_digest(url, settings.tag) == pinned:
        output = runner.run(pull_argv(url, settings.tag), image)
        if any(line.strip() == f"Digest: {pinned}" for line in output):
            return
    runner.run(pull_digest_argv(url, pinned), image)
    runner.run(tag_argv(f"{url}@{pinned}", f"{url}:{settings.tag}"), image)


def keep_unchanged(runner: Runner, image: str, steps: Steps, pinned: str) -> Built:
    """An image whose inputs are its pin's: not built, not pushed, its pin kept. With --push
    its tag is moved to the pin in the registry (one manifest PUT, see `promote_image`)
    unless it serves it already; without, the engine gets the pin, as a build would leave it."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    runner.say(f"{url}@{pinned[:19]} is unchanged (inputs of the pin): not built", image)
    runner.note(image, "unchanged (inputs of the pin)")
    runner.progress.keep(image)
    if not steps.push:
        runner.begin(image, "pull")
        pull_pin(runner, image, pinned)
    elif settings.dry_run or runner.registry().served_digest(url, settings.tag) != pinned:
        runner.begin(image, "push")
        promote_image(runner, image, pinned)
    else:
        runner.say(f"{url}:{settings.tag} is {pinned[:19]} already", image)
    return Built(unchanged=True)


def push_step(runner: Runner, image: str, steps: Steps, built: Built) -> Built:
    """--push of one image: the digest the registry serves for it, and its build's registry
    cache kept beside it."""
    settings = runner.settings
    runner.begin(image, "push")
    output = runner.run(push_argv(image_url(settings.registry, image), settings.tag), image)
    said = [match.group(1) for line in output for match in [_PUSHED_RE.search(line)] if match]
    pushed = None if settings.dry_run else confirmed_push(runner, image, said)
    keep_caches(runner, image, pushed or "sha256:<pushed>", built)
    return built._replace(pushed=pushed)


def digest_to_pin(
    runner: Runner,
    image: str,
    steps: Steps,
    pinned: str | None,
    built: Built,
    held: Mapping[str, dict[str, object] | None] | None,
) -> str | None:
    """--update_references: the digest to pin IMAGE to (see `pin_digest`), or None in a
    dry run that cannot know it."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if built.unchanged:
        return pinned
    if settings.dry_run and (steps.build or steps.push):
        runner.say(
            f"Dry run: the digest of {url}:{settings.tag} is only known after it is "
            "built and pushed; listing the files that would be updated",
            image,
        )
        return None
    local = built.local
    if held is not None:
        # A dry run asks the registry (it only reads) as a real run does, so its
        # diff shows the digest a real run would pin, never a local guess.
        document = held[image]
        if document is None:
            runner.say(
                f"Dry run: the engine holds no {url}:{settings.tag} (not built, pulled or pushed "
                "here), so the new digest is unknown; listing the files that would be updated",
                image,
            )
            return None
        local = local_from(document, f"{url}:{settings.tag}", runner.engine, built.metadata)
    digest = pin_digest(runner, image, pinned, built.pushed, built.metadata, local, built.label)
    if built.pushed not in (None, digest):
        keep_caches(runner, image, digest, built)
    return digest


def apply_changes(runner: Runner, lock: RepositoryLock | None, changes: Sequence[FileChange]) -> None:
    """Writes every change, all or nothing, or shows it as a diff in a dry run."""
    if runner.settings.dry_run:
        for change in changes:
            runner.console.line(unified_diff(change.path, change.old, change.new()).rstrip("\n"))
        return
    write_all_or_nothing(runner.settings.root, changes, lock)


def written_anew_if_changed(
    runner: Runner,
    files: TrackedFiles,
    lock: RepositoryLock | None,
    plan: Callable[[Edits], object],  # what it returns is not used
    planned: Callable[[Sequence[FileChange]], None] = lambda changes: None,
) -> list[FileChange]:
    """Plans the edits (`planned` is told the changes, before they are written) and writes
    them; when a file changed on disk since it was read (someone saved it while the tool
    ran), plans them again from what is there now, up to three times. The changes written."""
    for attempt in range(3):
        edits = Edits(files)
        plan(edits)
        changes = edits.changes()
        planned(changes)
        try:
            apply_changes(runner, lock, changes)
            return changes
        except ChangedOnDisk as error:
            if attempt == 2:
                raise
            read_again(runner, files, error)
    raise AssertionError("unreachable")


def read_again(runner: Runner, files: TrackedFiles, error: ChangedOnDisk) -> None:
    runner.console.line(
        f"{', '.join(map(shown, error.paths))} changed on disk while the tool ran: "
        "computing the change again from what is there now"
    )
    for path in error.paths:
        files.reread(path)


def update_workspace(runner: Runner, edits: Edits, image: str, digest: str | None) -> None:
    """Adds to `edits` the new digest of the rbe_autoconfig rule that pins IMAGE."""
    scan = edits.files.scan
    path = scan.workspace
    url = image_url(runner.settings.registry, image)
    if path in scan.problems or path not in scan.tracked:
        runner.say(f"Updating {path} file for {RBE_IMAGE}", image)
        runner.say(f"Not updating {path}: {scan.problems.get(path, 'git does not track it')}", image)
        return
    data = edits.read(path)
    rules = rules_naming(parse_rbe_rules(data, path), url, path)
    if rules and digest is not None and rewrite_workspace(data, url, digest, path)[0] == data:
        runner.say(f"The rbe_autoconfig rule in {path} already pins {digest}: no change", image)
        return
    runner.say(f"Updating {path} file for {RBE_IMAGE}", image)
    if not rules:
        runner.say(f"{path} has no rbe_autoconfig rule for {url}", image)
    elif digest is not None:
        edits.edit(path, lambda data: rewrite_workspace(data, url, digest, path)[0])


def update_references(
    runner: Runner, files: TrackedFiles, lock: RepositoryLock | None, image: str, digest: str | None
) -> None:
    """Points every reference to IMAGE in the tracked files at `digest`, and writes them."""

    def planned(changes: Sequence[FileChange]) -> None:
        runner.planned_files[image] = [change.path for change in changes]

    changes = written_anew_if_changed(
        runner, files, lock, lambda edits: plan_references(runner, edits, image, digest), planned
    )
    if not runner.settings.dry_run:
        for change in changes:
            files.written(change.path, change.new())
        runner.written_files[image] = [change.path for change in changes]


def plan_references(
    runner: Runner, edits: Edits, image: str, digest: str | None, rewrite_files: bool = True
) -> list[str]:
    """Adds to `edits` the new digest of every reference to IMAGE (with
    `rewrite_files` false, only of prod_digests.txt and WORKSPACE: the caller
    rewrites the files for many images at once); the files that change.

    `digest` is None only in a dry run that cannot know it yet: then the files
    are listed but no diff is shown (and none is returned).
    """
    registry = runner.settings.registry
    url = image_url(registry, image)
    if digest is not None:
        prod_digests = edits.read(PROD_DIGESTS_PATH)
        if not any(entry.url == url for entry in usable_prod_digests(prod_digests)):
            runner.say(f"Adding new image {url}@{digest} to {PROD_DIGESTS_PATH}", image)
            edits.edit(PROD_DIGESTS_PATH, lambda data: append_prod_digest(data, url, digest))
    if image == RBE_IMAGE:
        update_workspace(runner, edits, image, digest)
    runner.say(f"Updating references to {url}", image)
    files = list(edits.files.naming(image))
    # A file this image's own edits made name it (a new prod_digests.txt).
    files += [path for path in edits.naming(image) if path not in files]
    if not files:
        runner.say(f"Found no references to {url}", image)
        return []
    if digest is None:  # a dry run before the push: the files, not yet what changes in them
        runner.say(f"Updating references in {counted(len(files), 'file')}: {files}", image)
        return []
    hexes = digest_hexes(registry, {image: digest})
    stale = {path: reference_splices(edits.references(path), hexes) for path in files}
    edited = {change.path for change in edits.changes()}
    changing = [path for path in files if stale[path] or path in edited]
    if not changing:
        runner.say(
            f"Every reference to {url} ({counted(len(files), 'file')}) already pins {digest}: "
            "no file to change",
            image,
        )
        return []
    runner.say(f"Updating references in {counted(len(changing), 'file')}: {changing}", image)
    if rewrite_files:
        for path in changing:
            if stale[path]:
                edits.patch(path, stale[path])
    return changing


# ---------------------------------------------------------------------------
# Checks before the first side effect.


def sparse_message(registry: str) -> str:
    return (
        f"outside the sparse checkout, yet it names {registry}/, so the tool can neither check nor update "
        "it; widen the checkout (`git sparse-checkout add FOLDER` or `git sparse-checkout disable`)"
    )


def rules_elsewhere(root: Path, scan: TreeScan, registry: str) -> list[Finding]:
    """The rbe_autoconfig rules for rbe-toolchain the tool does not update: in
    a file that the WORKSPACE Bazel reads loads (at any depth), and in
    WORKSPACE when Bazel reads WORKSPACE.bazel instead."""
    url = image_url(registry, RBE_IMAGE)

    def rules_in(path: str) -> tuple[list[RbeRule], bytes]:
        if path_problem(root, path) or not (root / path).is_file():
            return [], b""
        data = (root / path).read_bytes()
        try:
            return [rule for rule in parse_rbe_rules(data, path) if rule.url in (url, None)], data
        except WorkspaceError:
            return [], data

    findings = []
    if scan.workspace == WORKSPACE_BAZEL_PATH:
        for rule in rules_in(WORKSPACE_PATH)[0]:
            message = (
                f"Bazel reads {WORKSPACE_BAZEL_PATH}, not this file, so its rbe_autoconfig rule for {url} "
                "is never updated; delete the rule (or the file)"
            )
            findings.append(Finding(WORKSPACE_PATH, rule.line, message, "workspace"))
    seen, queue = {scan.workspace}, [scan.workspace]
    while queue:
        path = queue.pop(0)
        rules, data = rules_in(path)
        for rule in rules if path != scan.workspace else []:
            message = (
                f"an rbe_autoconfig rule for {url} in a file {scan.workspace} loads, and the tool updates only "
                f"the rule in {scan.workspace}; move the rule there, or update its digest by hand"
            )
            findings.append(Finding(path, rule.line, message, "workspace"))
        for loaded in workspace_loads(data, path):
            if loaded not in seen:
                seen.add(loaded)
                queue.append(loaded)
    return findings


def read_prod_digests(root: Path, scan: TreeScan) -> list[ProdDigest]:
    """The entries of prod_digests.txt (none if it is missing); an error if it cannot be used."""
    if PROD_DIGESTS_PATH in scan.problems:
        raise ManageImagesError(
            f"{PROD_DIGESTS_PATH}: {scan.problems[PROD_DIGESTS_PATH]}; fix that and run again"
        )
    path = root / PROD_DIGESTS_PATH
    return usable_prod_digests(path.read_bytes()) if path.is_file() else []


def prod_digests_for(
    root: Path, registry: str, images: Sequence[str], scan: TreeScan, action: str = "update the references to"
) -> dict[str, str]:
    """The digest prod_digests.txt lists for each image; an error naming the first one missing."""
    listed = {entry.url: entry.digest for entry in read_prod_digests(root, scan)}
    for image in images:
        if image_url(registry, image) not in listed:
            raise ManageImagesError(
                f"cannot {action} {image}: {PROD_DIGESTS_PATH} has no line for "
                f"{image_url(registry, image)}; push it with --update_references first or add the line"
            )
    return {image: listed[image_url(registry, image)] for image in images}


def preflight_rewrite(settings: Settings, images: Sequence[str]) -> TreeScan:
    """Everything a reference update needs, checked before the first side effect."""
    scan = scan_tree(settings.root, settings.registry)
    read_prod_digests(settings.root, scan)
    if scan.hidden:
        more = f" (and {len(scan.hidden) - 1} more)" if len(scan.hidden) > 1 else ""
        raise ManageImagesError(
            f"{shown(scan.hidden[0])}{more}: {sparse_message(settings.registry)}; then run again"
        )
    for path, why in scan.skipped:
        error_line(f"warning: not updating {shown(path)}: {why}")
    for finding in scan.untouched:
        error_line(f"warning: not updating {shown(finding.path)}: {finding.message}")
    workspace = scan.workspace
    if RBE_IMAGE in images and workspace in scan.tracked and workspace not in scan.problems:
        data = (settings.root / workspace).read_bytes()
        rules_naming(parse_rbe_rules(data, workspace), image_url(settings.registry, RBE_IMAGE), workspace)
    if RBE_IMAGE in images:
        for finding in rules_elsewhere(settings.root, scan, settings.registry):
            error_line(f"warning: not updating {finding}")
    return scan


def preflight_platforms(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    platforms: Mapping[str, tuple[str, ...]],
) -> None:
    """Before any build, one line if the engine cannot build an image of the run for its
    platforms (`build_refusal`), or an image is built for a platform a parent lacks
    (`platform_conflicts`, the engine's platform standing for an image without an entry).
    Nothing is asked of docker when no image of the run is built for another platform than
    the engine's; `docker buildx inspect` is asked once otherwise."""
    engine = runner.engine
    if engine is None or not platforms:
        return
    own = normalize_platform(*engine.platform.split("/"))
    stop = "; nothing was built or changed"
    conflicts = platform_conflicts(images, graph, platforms, own)
    if conflicts:
        raise ManageImagesError(f"refusing to build: {conflict_message(conflicts[0], platforms)}{stop}")
    offered: tuple[str, ...] | None = None
    for image in images:
        wanted = platforms.get(image) or (own,)
        if list(wanted) == [own]:
            continue
        offered = offered_platforms(runner.settings, engine) if offered is None else offered
        dockerfile = (runner.settings.root / DOCKER_DIR / image / "Dockerfile").read_bytes()
        reason = build_refusal(image, wanted, engine, offered, first_run_line(dockerfile))
        if reason:
            raise ManageImagesError(f"refusing to build: {reason}{stop}")


def preflight_build(settings: Settings, images: Sequence[str]) -> None:
    """Every build context is a real folder inside the work tree, with a Dockerfile."""
    cache: dict[str, str] = {}
    for image in images:
        dockerfile = f"{DOCKER_DIR}/{image}/Dockerfile"
        problem = path_problem(settings.root, dockerfile, cache)
        if problem:
            raise ManageImagesError(
                f"refusing to build {image}: {problem}; its build context {DOCKER_DIR}/{image} "
                "must be a real folder inside the work tree"
            )
        if not (settings.root / dockerfile).is_file():
            raise ManageImagesError(
                f"{dockerfile} not found: the build context of "
                f"{image} needs one; add it or fix IMAGES_TO_DEPENDENCIES"
            )


# ---------------------------------------------------------------------------
# The modes, one function each, and what they share.


class Report:
    """What a run did, gathered as it goes and written by --json at the end.

    The keys are stable: see build_tools/docker/README.md, "JSON report".
    """

    def __init__(self, command: Sequence[str]) -> None:
        self.started = time.monotonic()
        self.head: dict[str, object] = {
            "schema": 1,
            "tool": "manage_images.py",
            "version": __version__,
            "command": list(command),
            "mode": None,
            "registry": None,
            "tag": None,
            "steps": [],
            "dry_run": False,
            "changed_since": None,
            "engine": None,
            "builders": [],
        }
        self.images: list[dict[str, object]] = []
        self.findings: list[Finding] = []
        self.error: str | None = None
        self.folder: Path | None = None  # where the run keeps its files: a bug's report goes there

    def add_results(self, results: Mapping[str, ImageResult], runner: Runner, old: Mapping[str, str]) -> None:
        logs = runner.progress.logs
        written, planned = runner.written_files, runner.planned_files
        for item in results.values():
            error = item.error
            inputs = runner.inputs.get(item.image)
            self.images.append(
                {
                    "name": item.image,
                    "result": "planned" if runner.settings.dry_run and item.result == "done" else item.result,
                    "digest": {"old": old.get(item.image), "new": item.digest},
                    "seconds": round(item.seconds, 3),
                    "builder": item.builder or None,
                    "waited_seconds": round(item.waited, 3) if item.builder else None,
                    "retried": item.retried or None,
                    # What the update wrote (would write, in a dry run); what it set out to write.
                    "files": (written if not runner.settings.dry_run else planned).get(item.image, []),
                    "planned_files": planned.get(item.image, []),
                    "note": runner.notes.get(item.image, ""),
                    "identity": runner.identities.get(item.image),
                    # What it was built for, when not the engine's platform alone; how each compares.
                    "platforms": list(runner.platforms[item.image])
                    if runner.platforms.get(item.image)
                    else None,
                    "platform_identities": runner.platform_identities.get(item.image),
                    "inputs": inputs.as_json() if inputs else None,
                    "built_on": dict(inputs.built_on) if inputs else {},
                    "exit_code": error.returncode if error else None,
                    "error": str(error) if error else None,
                    "log": str(logs.path(item.image)) if logs and item.result in ("done", "failed") else None,
                    "durations": {
                        step: round(seconds, 3)
                        for step, seconds in runner.progress.durations.get(item.image, {}).items()
                    },
                }
            )

    def document(self, exit_code: int) -> dict[str, object]:
        """The report, every string in it as an output boundary writes it (see `printable`)."""
        document = {
            **self.head,
            "images": self.images,
            "findings": [
                {"path": finding.path, "line": finding.line, "kind": finding.kind, "message": finding.message}
                for finding in self.findings
            ],
            "wall_seconds": round(time.monotonic() - self.started, 3),
            "exit_code": exit_code,
            "error": self.error,
        }
        return {key: safe_document(value, SECRETS.forms()) for key, value in document.items()}


def safe_document(value: object, secrets: Sequence[str]) -> object:
    """`value` (JSON data) with every string in it made `printable`."""
    if isinstance(value, str):
        return printable(value, secrets)
    if isinstance(value, dict):
        return {key: safe_document(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_document(item, secrets) for item in value]
    return value


def bug_line(error: BaseException, report: Report) -> str:
    """The one line for a bug, naming the file that holds its evidence (see `write_bug_report`)."""
    try:
        return unexpected(error, shown(str(write_bug_report(error, report))))
    except Exception as problem:  # no evidence, but still the one line
        why = problem.strerror if isinstance(problem, OSError) and problem.strerror else problem
        return f"{unexpected(error)} (its traceback could not be written: {why})"


def write_bug_report(error: BaseException, report: Report) -> Path:
    """Writes what a report of the bug `error` needs (its traceback, the command, the versions
    of Python, the tool and the docker client) to a new file of the run's folder, else of the
    temporary folder; the file. Secrets and control characters are no part of it."""
    import platform
    import tempfile
    import traceback

    engine, command = report.head.get("engine"), report.head.get("command")
    client = engine.get("client") if isinstance(engine, dict) else None
    words = [str(word) for word in command] if isinstance(command, list) else []
    text = "".join(
        [
            f"manage_images.py {__version__}: unexpected {type(error).__name__}\n",
            f"command: {format_command(['manage_images.py', *words])}\n",
            f"python: {platform.python_version()} ({sys.executable}) on {platform.platform()}\n",
            f"docker client: {client or 'not asked'}\n",
            f"time: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n\n",
            *traceback.format_exception(type(error), error, error.__traceback__),
        ]
    )
    problem: OSError | None = None
    for folder in [*([report.folder] if report.folder is not None else []), None]:
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(prefix="manage_images-bug-", suffix=".txt", dir=folder)
        except OSError as failed:
            problem = failed
            continue
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", errors="backslashreplace") as file:
                file.write(printable(text, SECRETS.forms()))
            return Path(name)
        except OSError as failed:  # a full disk: the next folder, if any
            problem = failed
            Path(name).unlink(missing_ok=True)
    assert problem is not None
    raise problem


def write_report(destination: str, document: Mapping[str, object], out: Console) -> None:
    """Writes the --json document to a file (whole, by rename; a new one with
    the umask's mode) or to standard output (`-`)."""
    import json

    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if destination == "-":
        out.write(text)
        return
    path = Path(destination)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # /dev/stdout, a FIFO, a link: written through, as a shell's `>` would; a rename
        # would put a file in place of the device or the link (as root, /dev/stdout's).
        try:
            descriptor = os.open(
                path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            )  # a FIFO nobody reads: ENXIO
            os.set_blocking(descriptor, True)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                if stat.S_ISREG(os.fstat(descriptor).st_mode):
                    os.ftruncate(descriptor, 0)
                stream.write(text)
        except OSError as error:
            raise ManageImagesError(f"cannot write the JSON report {destination}: {error.strerror}") from None
        return
    temporary = temporary_beside(path)
    umask = os.umask(0)
    os.umask(umask)
    try:
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~umask
        _write_new(temporary, FileChange.whole(destination, b"", text.encode()), mode)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ManageImagesError(f"cannot write the JSON report {destination}: {error.strerror}") from None


def pinned_now(settings: Settings) -> dict[str, str]:
    """image -> digest in prod_digests.txt, for the report; {} when it cannot be read."""
    if path_problem(settings.root, PROD_DIGESTS_PATH) or not (settings.root / PROD_DIGESTS_PATH).is_file():
        return {}
    entries, _ = parse_prod_digests((settings.root / PROD_DIGESTS_PATH).read_bytes())
    return pins_by_name(entries, settings.registry)


@contextlib.contextmanager
def repository_lock(runner: Runner, command: str, needed: bool = True) -> Iterator[RepositoryLock | None]:
    """Holds the repository lock for a run that changes files (none in a dry run)."""
    if not needed or runner.settings.dry_run:
        yield None
        return
    lock = RepositoryLock.acquire(runner.settings.root, command, runner.console)
    try:
        yield lock
    finally:
        if CHILDREN.stopping:  # released only once the stopped commands are gone
            CHILDREN.wait()
        lock.release()


@contextlib.contextmanager
def signals_stop_the_run(console: Console) -> Iterator[None]:
    """Within it, SIGINT, SIGTERM and SIGHUP stop the run, whatever it is doing:
    the running commands are stopped (SIGKILL after STOP_GRACE seconds), none
    starts after, the image being written finishes or puts back its files, and
    the run ends with 128 + N. The previous handlers come back on the way out."""

    def on_signal(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        first = not CHILDREN.stopping
        CHILDREN.stop(128 + number, f"interrupted by {name}")
        if first:
            console.unblock_after_stop(number)
            message = f"Interrupted by {name}: stopping the running commands"
            try:
                console.line(message, wait=False)
            except RuntimeError:  # it came in the middle of this thread's own write: print it after
                threading.Thread(target=console.line, args=(message,), daemon=True).start()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            number = getattr(signal, name)
            handlers[number] = signal.signal(number, on_signal)
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def logs_base(settings: Settings, log_dir: Path | None) -> Path | None:
    """Where the run's logs go: --log_dir, else `manage_images-logs` in the git
    directory; None in a dry run, or outside a git work tree without --log_dir."""
    if settings.dry_run:
        return None
    if log_dir is not None:
        return log_dir
    result = git(settings.root, "rev-parse", "--git-path", LOGS_NAME)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return settings.root / os.fsdecode(result.stdout.rstrip(b"\n"))


@contextlib.contextmanager
def showing_progress(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    schedule: Schedule,
    step_names: Sequence[str],
) -> Iterator[Callable[[], None]]:
    """Owns the output of a run: opens this run's logs, plans the estimate and,
    with --progress tty, draws the view; yields what the scheduler calls
    between its waits to redraw it. On the way out, whatever the reason
    (an error, Ctrl-C, a closed terminal), it erases the view and shows the
    cursor again, so what follows (the summary) starts on a clean line; then it
    closes the logs and records the step durations."""
    progress = runner.progress
    if progress.log_base is not None:
        try:
            progress.logs = RunLogs.create(progress.log_base)
            runner.report.folder = progress.logs.folder
        except OSError as error:
            raise ManageImagesError(
                f"cannot write the logs under {progress.log_base}: {error.strerror}; "
                "pass --log_dir DIR with a folder you can write"
            ) from None
    progress.plan(images, graph, schedule, step_names)
    view = LiveView(runner.console, progress) if progress.mode == "tty" else None
    try:
        if view is not None:
            view.draw()
        yield view.tick if view is not None else lambda: None
    finally:
        if view is not None:
            with contextlib.suppress(OSError):
                view.close()
        if progress.logs is not None:
            progress.logs.close()
            progress.logs.record(progress.durations)


def tracked(
    runner: Runner,
    count: int,
    step_names: Sequence[str],
    work: Callable[[str, str], str | None],
    finish: Callable[[str, str | None], str | None],
) -> tuple[
    Callable[[str, int, Placed], None],
    Callable[[str, str], str | None],
    Callable[[str, str | None], str | None],
    Callable[[ImageResult], None],
]:
    """The scheduler's callbacks with the run's progress kept: `on_start`
    (which prints `Processing image NAME [k/n]`, with its builder and the time left once
    there is an estimate), `work` and `finish` timed step by step (a bug in them fails
    its image with one line naming the file that holds its traceback), and
    `on_finish` (a failed image's error ends its log)."""
    progress = runner.progress

    def reported(image: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except ManageImagesError:
            raise
        except Exception as error:  # a bug: this image fails, and its evidence is kept
            raise ManageImagesError(f"{image}: {bug_line(error, runner.report)}") from error

    def on_start(image: str, number: int, placed: Placed) -> None:
        progress.start(image, placed)
        left = progress.left()
        estimate = f" ({format_left(left)})" if left is not None else ""
        if placed.retried:
            runner.notes.pop(image, None)  # what its failed attempt noted
            runner.note(image, f"retried on {placed.builder}: {placed.retried}")
        runner.say(
            f"{'Retrying' if placed.retried else 'Processing'} image {image} [{number}/{count}]"
            f"{start_place(placed)}{estimate}",
            image,
        )

    def timed_work(image: str, builder: str) -> str | None:
        progress.begin(image, step_names[0])
        value = reported(image, lambda: work(image, builder))
        progress.end(image)
        return value

    def timed_finish(image: str, value: str | None) -> str | None:
        if "update_references" in step_names:
            progress.begin(image, "update_references")
        digest = reported(image, lambda: finish(image, value))
        progress.end(image)
        return digest

    def on_finish(item: ImageResult) -> None:
        if item.error is not None and progress.logs is not None:
            progress.logs.write(item.image, shown(str(item.error)))
        progress.finish(item)

    return on_start, timed_work, timed_finish, on_finish


def process_images(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    schedule: Schedule,
    work: Callable[[str, str], str | None],
    finish: Callable[[str, str | None], str | None],
    step_names: Sequence[str],
    after_run: Callable[[Mapping[str, ImageResult]], None] | None = None,
) -> int:
    """Runs the images through the scheduler, then `after_run` (unless
    interrupted), prints the summary, returns the exit code."""
    old = pinned_now(runner.settings)
    start = time.monotonic()
    on_start, timed_work, timed_finish, on_finish = tracked(runner, len(images), step_names, work, finish)
    with showing_progress(runner, images, graph, schedule, step_names) as tick:
        results = run_graph(
            images,
            graph,
            schedule.jobs,
            schedule.keep_going,
            timed_work,
            timed_finish,
            stopped=lambda: CHILDREN.stopping,
            on_start=on_start,
            on_finish=on_finish,
            on_tick=tick,
            builders=schedule.builders or ("",),
        )
    failed_after: ManageImagesError | None = None
    if after_run is not None and not CHILDREN.stopping:
        try:
            after_run(results)
        except ManageImagesError as error:
            failed_after = error
            results = refused(results, runner.planned_files, error)
    wall = time.monotonic() - start
    runner.console.line(format_summary(results, step_names, wall, runner.settings.dry_run, runner.notes))
    logs = runner.progress.logs
    for item in results.values():
        if item.result == "failed" and logs is not None:
            runner.console.line(failure_tail(item.image, str(logs.path(item.image)), logs.tail(item.image)))
    runner.report.add_results(results, runner, old)
    if CHILDREN.stopping:
        return CHILDREN.code
    failures = sorted(
        (item for item in results.values() if item.error and item.error is not failed_after),
        key=lambda item: item.finished,
    )
    for item in failures[1:]:
        error_line(f"{item.image}: {item.error}")
    if failures and failures[0].error:
        raise failures[0].error
    if failed_after is not None:
        raise failed_after
    return 0


def pins_for(
    settings: Settings, steps: Steps, options: BuildOptions, scan: TreeScan | None
) -> dict[str, str]:
    """The digest prod_digests.txt pins each image to, for the steps that compare with it: read
    as --check reads it where the run rewrites it or builds from it, else as far as it reads."""
    if options.cache_from_pinned or options.verify_pinned or steps.update_references:
        entries = read_prod_digests(settings.root, scan or scan_tree(settings.root, settings.registry))
        return pins_by_name(entries, settings.registry)
    # --skip_unchanged, and a build whose dependents are built on it (see `dependents_reference`).
    return pinned_now(settings) if steps.build else {}


def run_steps(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    steps: Steps,
    options: BuildOptions,
    schedule: Schedule,
    command: str,
) -> int:
    """--pull, --build, --push and --update_references, for each image in order, on the
    builders of `schedule`, each built for the platforms `runner.platforms` gives it
    (`run_platforms`)."""
    with repository_lock(runner, command, needed=steps.update_references) as lock:
        # A dry run asks docker which images it holds while git greps the tree.
        first = runner.on(next(iter(schedule.builders), ""))  # one --builder: the whole run goes there
        holding = in_background(lambda: held_images(first, images, steps))
        if steps.build:
            preflight_build(runner.settings, images)
        scan = preflight_rewrite(runner.settings, images) if steps.update_references else None
        pins = pins_for(runner.settings, steps, options, scan)
        if steps.build and not steps.update_references:  # with it, dependents' FROM lines are rewritten
            runner.rebasing = frozenset(
                parent for image in images for parent in graph[image] if parent in images
            )
        held = holding()
        find_engines(runner, steps, options, schedule.builders, held)
        for builder in (schedule.builders or ("",)) if steps.build else ():
            preflight_platforms(runner.on(builder), images, graph, runner.platforms)
        if steps.push and is_google_registry(runner.settings.registry):
            configure_gcloud_auth(runner)
        runner.say(plan_line(runner.selected, images))
        if not steps.any():
            runner.console.line(
                "No step requested (--pull, --build, --push, --update_references): nothing done."
            )
            return 0

        files = TrackedFiles(runner.settings.root, scan, runner.settings.registry) if scan else None

        def finish(image: str, digest: str | None) -> str | None:
            if files is not None:
                update_references(runner, files, lock, image, digest)
            return digest

        def work(image: str, builder: str) -> str | None:
            return on_builder(
                runner.on(builder), image, lambda here: docker_steps(here, image, steps, options, pins, held)
            )

        try:
            return process_images(runner, images, graph, schedule, work, finish, steps.names())
        finally:
            if runner.engine is not None and not runner.settings.dry_run:
                import shutil

                shutil.rmtree(runner.scratch(), ignore_errors=True)


def on_builder(runner: Runner, image: str, steps: Callable[[Runner], T]) -> T:
    """`steps(runner)` for IMAGE, a failure that its builder caused made a BuilderFault (see
    `builder_fault`)."""
    try:
        return steps(runner)
    except ManageImagesError as error:
        fault = builder_fault(runner, image, error)
        if fault is error:
            raise
        raise fault from error


def find_engines(
    runner: Runner,
    steps: Steps,
    options: BuildOptions,
    names: Sequence[str],
    held: Mapping[str, dict[str, object] | None] | None,
) -> None:
    """The engine of the run (`engine_for_plan`), or of each of the builders NAMES, asked all
    at once: one line before any work when one cannot serve the run (`builder_refusal`), cannot
    be reached (`reach_builder`), or builds for another platform than the others. None asked
    by a dry run that only rewrites references from images no engine holds (see `held_images`)."""
    report = runner.report
    dry_run = runner.settings.dry_run
    if not (steps.build or steps.push or (steps.any() and not dry_run) or any((held or {}).values())):
        return
    if not names:
        runner.engine = engine_for_plan(runner)
        report.head["engine"] = runner.engine.as_json() if runner.engine else None
        return
    builders = [runner.builders[name] for name in names]
    refusal = next(filter(None, (builder_refusal(builder, steps, options) for builder in builders)), "")
    if refusal:
        raise ManageImagesError(refusal)
    calls = [functools.partial(reach_builder, runner.on(item.name).settings, item) for item in builders]
    runner.engines.update(zip(names, in_parallel(*calls)))
    mismatch = platform_mismatch(runner.engines)
    if mismatch:
        raise ManageImagesError(mismatch)
    runner.engine = runner.engines[names[0]]
    report.head["engine"] = runner.engine.as_json() if runner.engine else None
    report.head["builders"] = [item.as_json(runner.engines[item.name]) for item in builders]
    for item in builders if dry_run else ():
        engine = runner.engines[item.name]
        runner.say(f"Builder {item.describe()}: {engine.describe() if engine else 'unknown'}")


def only_references(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    schedule: Schedule,
    command: str,
) -> int:
    """--only_references: every reference to each image from prod_digests.txt, no Docker."""
    with repository_lock(runner, command) as lock:
        scan = preflight_rewrite(runner.settings, images)
        digests = prod_digests_for(runner.settings.root, runner.settings.registry, images, scan)
        runner.say(plan_line(runner.selected, images))

        registry = runner.settings.registry
        files = TrackedFiles(runner.settings.root, scan, registry)
        files.read_by_the_scan()
        # Every digest is known up front: gather all images' edits, then
        # rewrite each file once for all of them, in one pass, and write it
        # once (a 200 MB file is read, scanned and written once, not per image).
        run_edits = Edits(files)
        done: dict[str, str] = {}

        def finish(image: str, digest: str | None) -> str | None:
            assert digest is not None  # from prod_digests.txt
            edits = Edits(files, parent=run_edits)
            changing = plan_references(runner, edits, image, digest, rewrite_files=False)
            runner.planned_files[image] = list(
                dict.fromkeys([change.path for change in edits.changes()] + changing)
            )
            edits.merge()
            done[image] = digest
            return digest

        def plan_all(edits: Edits) -> None:
            hexes = digest_hexes(registry, done)
            for path in dict.fromkeys(path for image in done for path in files.naming(image)):
                edits.patch(path, reference_splices(edits.references(path), hexes))

        def write(results: Mapping[str, ImageResult]) -> None:
            plan_all(run_edits)
            try:
                apply_changes(runner, lock, run_edits.changes())
            except ChangedOnDisk as error:  # plan every image again, from what is there now
                read_again(runner, files, error)

                def again(edits: Edits) -> None:
                    for image, digest in done.items():
                        plan_references(runner, edits, image, digest, rewrite_files=False)
                    plan_all(edits)

                written_anew_if_changed(runner, files, lock, again)
            if not runner.settings.dry_run:
                runner.written_files.update((image, runner.planned_files[image]) for image in done)

        return process_images(
            runner, images, graph, schedule, by_image(digests), finish, ["only_references"], write
        )


def verify_registry(
    settings: Settings,
    images: Sequence[str],
    console: Console,
    report: Report,
    platforms: Mapping[str, tuple[str, ...]] | None = None,
) -> int:
    """--verify_pinned alone: does the registry serve each pinned digest, and TAG as it? And is
    the pin of an image with platforms (IMAGE_PLATFORMS, or --platform) an index of exactly those?"""
    platforms = platforms or {}
    entries = {
        entry.url: entry
        for entry in read_prod_digests(settings.root, scan_tree(settings.root, settings.registry))
    }
    findings = []
    for image in images:
        url = image_url(settings.registry, image)
        entry = entries.get(url)
        if entry is None:
            findings.append(
                Finding(PROD_DIGESTS_PATH, 1, f"{url} has no line, so there is no pin to verify", "unlisted")
            )
            continue
        drift = registry_findings(settings, image, entry)
        findings += drift
        if platforms.get(image) and not any(finding.kind == "not-served" for finding in drift):
            findings += pin_platform_findings(settings, image, entry, platforms[image])
    report.findings = findings
    agree = f"{settings.registry} serves every pinned digest, and :{settings.tag} as it."
    if any(platforms.get(image) for image in images):
        agree = agree[:-1] + "; each pin holds the platforms its image is built for."
    return print_findings(
        console, findings, f"Verified {len(images)}", images, f" in {settings.registry}", agree
    )


def registry_findings(settings: Settings, image: str, entry: ProdDigest) -> list[Finding]:
    """Where the registry drifted from one pin: the digest is not served, or TAG names another."""
    url = image_url(settings.registry, image)
    findings = []
    if registry_digest(settings, f"{url}@{entry.digest}") is None:
        message = (
            f"{url}@{entry.digest[:19]} is pinned, but the registry does not serve it (never pushed, or "
            f"deleted); push it with manage_images.py --image {image} --build --push --update_references"
        )
        findings.append(Finding(PROD_DIGESTS_PATH, entry.line, message, "not-served"))
    served = registry_digest(settings, f"{url}:{settings.tag}")
    if served != entry.digest:
        now = f"is {served[:19]}" if served else "does not exist"
        message = (
            f"{url}:{settings.tag} {now}, not the pinned {entry.digest[:19]}; "
            f"run manage_images.py --image {image} --promote --tag {settings.tag}"
        )
        findings.append(Finding(PROD_DIGESTS_PATH, entry.line, message, "drift"))
    return findings


def pin_platform_findings(
    settings: Settings, image: str, entry: ProdDigest, wanted: Sequence[str]
) -> list[Finding]:
    """Where a served pin differs from the platforms its image is built for: several platforms
    want an index holding exactly them, each image of it served; one platform may also be an
    image manifest of that platform (what a one-platform build pushes). Each finding names the
    image and the platform."""

    client = registry_client(settings)
    url = image_url(settings.registry, image)
    pinned = f"{url}@{entry.digest[:19]}"
    advice = f"rebuild and re-pin it: manage_images.py --image {image} --build --push --update_references"
    manifest = client.get_manifest(url, entry.digest)
    if pin_kind(manifest)["kind"] != "index":
        _, config = client.image_config(url, entry.digest, wanted[0])
        document = _json_object(config, f"the config of {pinned}")
        parts = [str(document.get(key) or "") for key in ("os", "architecture", "variant")]
        platform = normalize_platform(*parts) if all(parts[:2]) else "an unknown platform"
        if list(wanted) == [platform]:
            return []
        lacks = ", ".join(other for other in wanted if other != platform)
        message = (
            f"{image}: the pin {pinned} is one image manifest ({platform}), not an index of "
            f"{', '.join(wanted)}: it has no {lacks}; {advice}"
        )
        return [Finding(PROD_DIGESTS_PATH, entry.line, message, "pin-platforms")]
    held = index_entries(_json_object(manifest.data, pinned))
    missing, extra, twice = platform_gaps(wanted, [platform for platform, _ in held])
    problems = [f"has no {platform} image, which {image} is built for" for platform in missing]
    problems += [f"holds a {platform} image, which {image} is not built for" for platform in extra]
    problems += [f"holds {platform} twice" for platform in twice]
    findings = [
        Finding(
            PROD_DIGESTS_PATH, entry.line, f"{image}: the index {pinned} {problem}; {advice}", "pin-platforms"
        )
        for problem in problems
    ]
    for platform, digest in held:
        if platform in wanted and (not DIGEST_RE.match(digest) or client.served_digest(url, digest) is None):
            message = (
                f"{image}: the index {pinned} lists a {platform} image {digest[:19]} the registry does not "
                f"serve; push it again ({advice.split(': ', 1)[1]})"
            )
            findings.append(Finding(PROD_DIGESTS_PATH, entry.line, message, "not-served"))
    return findings


def pin_descriptions(settings: Settings, images: Sequence[str]) -> list[dict[str, object]]:
    """For --check --json: what the registry says each selected image's pin is (`pin_kind`),
    one GET of its manifest each, a few at a time; a pin it could not describe carries the
    reason in `error` (the check's findings and exit code never depend on the registry)."""
    import concurrent.futures

    path = settings.root / PROD_DIGESTS_PATH
    if path_problem(settings.root, PROD_DIGESTS_PATH) or not path.is_file():
        return []
    pins = pins_by_name(
        parse_prod_digests(path.read_bytes(), PROD_DIGESTS_PATH, settings.registry)[0], settings.registry
    )
    client = registry_client(settings)

    def describe(image: str) -> dict[str, object]:
        described: dict[str, object] = {"name": image, "digest": pins[image]}
        try:
            manifest = client.get_manifest(image_url(settings.registry, image), pins[image])
        except ManageImagesError as error:
            unknown = dict.fromkeys(("kind", "media_type", "platforms", "attestations"))
            return {**described, **unknown, "error": str(error)}
        return {**described, **pin_kind(manifest), "error": None}

    selected = [image for image in images if image in pins]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(describe, selected))


def promote(
    runner: Runner, images: Sequence[str], graph: Mapping[str, Sequence[str]], schedule: Schedule
) -> int:
    """--promote: publish each pinned image under TAG, by digest; no build, no file change."""
    settings = runner.settings
    scan = scan_tree(settings.root, settings.registry)
    pins = prod_digests_for(settings.root, settings.registry, images, scan, action="promote")
    if is_google_registry(settings.registry):
        configure_gcloud_auth(runner)
    runner.say(plan_line(runner.selected, images))

    def work(image: str, builder: str) -> str:
        return promote_image(runner, image, pins[image])

    return process_images(runner, images, graph, schedule, work, lambda image, digest: digest, ["promote"])


def show_graph(images: Sequence[str], graph: Mapping[str, Sequence[str]], fmt: str, console: Console) -> int:
    """--graph: the graph of the images that would be processed."""
    console.line(render_graph(images, graph, fmt).rstrip("\n"))
    return 0


def check(
    root: Path,
    registry: str,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    console: Console,
    presubmit: Presubmit | None = None,
    report: Report | None = None,
    platforms: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Reports every disagreement between the graph, its platforms, the Dockerfiles, the
    references and prod_digests.txt (and, with --changed_since, every changed
    image that was not pinned anew); returns 1 if there was any."""
    # git grep reads every file meanwhile; git check-attr is asked as it greps, and is told
    # there are no more questions when the check ends, whatever ended it.
    with UnpinnedAllowed(root) as unpinned:
        scanned = in_background(lambda: scan_tree(root, registry, unpinned))
        dockerfiles, findings = read_dockerfiles(root, images)
        checked, covered = dockerfile_check(registry, images, graph, dockerfiles)
        findings += checked
        findings += platform_findings(registry, images, graph, platforms or {}, dockerfiles)
        scan = scanned()
        findings += [Finding(path, 1, f"not checked: {why}", "unsafe-path") for path, why in scan.skipped]
        findings += [
            finding._replace(message=f"not checked: {finding.message}") for finding in scan.untouched
        ]
        findings += [Finding(path, 1, sparse_message(registry), "sparse") for path in scan.hidden]
        prod_digests, prod_findings = prod_digests_check(root, registry, graph, scan)
        findings += prod_findings
        paths, workspace = list(scan.candidates), scan.workspace
        if RBE_IMAGE in images:
            if workspace in scan.problems:
                message = f"not checked: {scan.problems[workspace]}"
                findings.append(Finding(workspace, 1, message, "unsafe-path"))
            elif workspace in scan.tracked and workspace not in paths:
                paths.append(workspace)
            findings += rules_elsewhere(root, scan, registry)
        references, found, workspace_data = checked_references(
            root, registry, images, graph, scan, paths, prod_digests or {}, covered, unpinned
        )
        findings += references
        referenced = referenced_images(found, workspace_data, image_url(registry, RBE_IMAGE))
        findings += checklist_findings(images, registry, prod_digests, referenced, dockerfiles)
        if set(images) == set(graph):
            findings += folder_findings(dockerfile_folders(root), graph)
        if presubmit is not None:
            at_ref = prod_digests_at(root, presubmit.ref, registry)
            changed = [image for image in presubmit.changed if image in images]
            findings += repin_findings(changed, prod_digests or {}, at_ref, presubmit.ref)
        if report is not None:
            report.findings = findings
        agree = f"the graph, the Dockerfiles, the references and {PROD_DIGESTS_PATH} agree."
        return print_findings(console, findings, f"Checked {len(images)}", images, "", agree)


def checked_references(
    root: Path,
    registry: str,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    scan: TreeScan,
    paths: Sequence[str],
    prod_digests: Mapping[str, str],
    covered: Container[tuple[str, str]],
    unpinned: UnpinnedAllowed,
) -> tuple[list[Finding], dict[str, list[Reference]], bytes | None]:
    """`reference_findings` of each of `paths`, each read once: a small one
    whole (the scan read it), a big one in pieces (`referencing_pieces`), so
    no big file is ever whole in memory; but an unpinned reference in a file
    git gives the attribute `manage-images-allow-unpinned` (asked of `unpinned`,
    which the scan asked about the small files already). Also each file's
    references (a big file's with the offsets of their piece) and the bytes
    of the workspace, read whole, as Bazel's rules are parsed from it."""
    whole: dict[str, bytes] = {}
    found: dict[str, list[Reference]] = {}
    findings: list[Finding] = []
    arguments = (registry, images, prod_digests, PROD_DIGESTS_PATH, graph)
    for path in sorted(paths):
        if path == scan.workspace or path in scan.heads:
            whole[path] = scan.heads[path] if path in scan.heads else (root / path).read_bytes()
            found[path] = (
                scan.found[path] if path in scan.found else list(find_references(whole[path], registry))
            )
            continue
        for line, piece, references in referencing_pieces(root / path, registry):
            found.setdefault(path, []).extend(references)
            in_piece = reference_findings(
                {path: piece}, *arguments, {path: references}, covered, scan.workspace
            )
            findings += [finding._replace(line=finding.line + line - 1) for finding in in_piece]
    # The scan asked about the small files; git answers about the others while the findings are made.
    unpinned.ask(
        path for path, refs in found.items() if path not in scan.found and may_be_allowed_unpinned(path, refs)
    )
    unpinned.close()
    findings += reference_findings(whole, *arguments, found, covered, scan.workspace)
    allowed = unpinned.allowed()
    findings = [finding for finding in findings if finding.kind != "unpinned" or finding.path not in allowed]
    # Stable: each file's findings keep their order, a file's pieces theirs.
    return sorted(findings, key=lambda finding: finding.path), found, whole.get(scan.workspace)


def print_findings(
    console: Console, findings: Sequence[Finding], what: str, images: Sequence[str], where: str, agree: str
) -> int:
    """Prints each finding, then one summary line (`WHAT images[WHERE]: N problems found.`
    or `WHAT images: AGREE`); returns 1 if there was any finding."""
    noun = "image" if len(images) == 1 else "images"
    if findings:
        console.line("\n".join(str(finding) for finding in findings))  # one write: 1,000 cost 8 ms
        console.line(f"{what} {noun}{where}: {counted(len(findings), 'problem')} found.")
        return 1
    console.line(f"{what} {noun}: {agree}")
    return 0


def read_dockerfiles(root: Path, images: Sequence[str]) -> tuple[dict[str, bytes | None], list[Finding]]:
    """Each image's Dockerfile (None if it has none), and a finding for each one that is
    not checked because it is reached through a symbolic link (left out of the first)."""
    dockerfiles: dict[str, bytes | None] = {}
    findings = []
    cache: dict[str, str] = {}
    for image in images:
        path = f"{DOCKER_DIR}/{image}/Dockerfile"
        problem = path_problem(root, path, cache)
        if problem:
            findings.append(Finding(path, 1, f"not checked: {problem}", "unsafe-path"))
        else:
            dockerfiles[image] = (root / path).read_bytes() if (root / path).is_file() else None
    return dockerfiles, findings


def dockerfile_check(
    registry: str,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    dockerfiles: Mapping[str, bytes | None],
) -> tuple[list[Finding], set[tuple[str, str]]]:
    """The findings of each image's Dockerfile, and the (path, reference) of each unpinned parent."""
    findings: list[Finding] = []
    covered = set()
    for image in images:
        if image not in dockerfiles:  # not checked
            continue
        path = f"{DOCKER_DIR}/{image}/Dockerfile"
        data = dockerfiles[image]
        findings += dockerfile_findings(image, path, data, graph, registry)
        if data is not None:
            covered |= {
                (path, parent.ref) for parent in registry_parents(data, registry) if not parent.digest
            }
    return findings, covered


def platform_findings(
    registry: str,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    platforms: Mapping[str, Sequence[str]],
    dockerfiles: Mapping[str, bytes | None],
) -> list[Finding]:
    """The subset rule without an engine (see `platform_conflicts`): each finding on the child's
    Dockerfile line that uses the parent (line 1 when none does: a finding of its own)."""
    findings = []
    for conflict in platform_conflicts(images, graph, platforms):
        path = f"{DOCKER_DIR}/{conflict.child}/Dockerfile"
        data = dockerfiles.get(conflict.child)
        uses = [
            parent.line
            for parent in registry_parents(data or b"", registry)
            if parent.image == conflict.parent
        ]
        findings.append(
            Finding(path, uses[0] if uses else 1, conflict_message(conflict, platforms), "platforms")
        )
    return findings


def prod_digests_check(
    root: Path, registry: str, graph: Mapping[str, Sequence[str]], scan: TreeScan
) -> tuple[dict[str, str] | None, list[Finding]]:
    """The digests prod_digests.txt pins (None if it is missing or unreadable), and what is
    wrong with it (missing, unreadable, bad lines)."""
    if PROD_DIGESTS_PATH in scan.problems:
        message = f"cannot be read: {scan.problems[PROD_DIGESTS_PATH]}"
        return None, [Finding(PROD_DIGESTS_PATH, 1, message, "unsafe-path")]
    if not (root / PROD_DIGESTS_PATH).is_file():
        message = "missing: it must list REGISTRY/NAME@sha256:<digest> for every image CI uses"
        return None, [Finding(PROD_DIGESTS_PATH, 1, message, "missing")]
    data = (root / PROD_DIGESTS_PATH).read_bytes()
    return prod_digest_findings(data, PROD_DIGESTS_PATH, registry, graph)


# ---------------------------------------------------------------------------
# The command line: the parser, main() and the dispatch to a mode.


def build_parser(graph: Mapping[str, Sequence[str]] = IMAGES_TO_DEPENDENCIES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Build, pull and push the repository's CI Docker images and pin them "
            "by digest. An image is processed together with every image that "
            "depends on it, parents first."
        ),
        epilog="See README.md for the workflows, and build_tools/docker/README.md (the manual) for each in full.",
    )
    parser.add_argument(
        "--images",
        "--image",
        type=str,
        action="append",
        metavar="NAME",
        help=f"Name of the image to process: {images_help(graph)}. Repeatable.",
    )
    parser.add_argument(
        "--tag",
        default=DEFAULT_TAG,
        help="Tag of the images. Defaults to `latest` (good for testing a change "
        "in a PR). Use `prod` to update the images that CI preloads.",
    )
    _add_step_arguments(parser.add_argument_group("steps (run for each image, in this order)"))
    _add_mode_arguments(parser.add_argument_group("other modes (instead of the steps)"))
    _add_run_arguments(parser)
    return parser


def _add_step_arguments(steps: argparse._ArgumentGroup) -> None:
    steps.add_argument("--pull", action="store_true", help="Pull REGISTRY/NAME:TAG.")
    steps.add_argument(
        "--build",
        action="store_true",
        help="Build REGISTRY/NAME:TAG from build_tools/docker/NAME.",
    )
    steps.add_argument(
        "--push",
        action="store_true",
        help="Push REGISTRY/NAME:TAG. For Google registries (gcr.io, *.gcr.io, "
        "*-docker.pkg.dev) this runs `gcloud auth configure-docker` first.",
    )
    _add_build_options(steps)
    steps.add_argument(
        "--update_references",
        "--update-references",
        action="store_true",
        help="Point every REGISTRY/NAME@sha256:... and REGISTRY/NAME:TAG@sha256:... in the files git "
        "tracks at a digest the registry serves for the image: its push's, or its pin's when the content "
        "is the same (and, for rbe-toolchain, the rbe_autoconfig rule in WORKSPACE); add the image to "
        "prod_digests.txt if missing.",
    )


def _add_build_options(steps: argparse._ArgumentGroup) -> None:
    steps.add_argument(
        "--cache_from_pinned",
        "--cache-from-pinned",
        action="store_true",
        help="With --build: build from the cache of the image prod_digests.txt pins (REGISTRY/NAME@DIGEST), "
        "so a machine that never built the images reproduces their content: the classic builder pulls it "
        "for --cache-from; BuildKit reads its inline cache, or the registry cache kept beside it (beside each "
        "platform's image, for an index), from the registry.",
    )
    steps.add_argument(
        "--verify_pinned",
        "--verify-pinned",
        action="store_true",
        help="With --build: after each build, compare the image's content with the config the registry "
        "serves for its pin (platform by platform, for an image built for several) and fail, before any "
        "push, if they differ. Alone: ask the registry API (one "
        "HEAD each, no engine) whether it serves every pinned digest and REGISTRY/NAME:TAG is it, and, for "
        "an image built for several platforms (IMAGE_PLATFORMS, --platform), whether its pin is an index of "
        "exactly those, each served (one GET more, and a HEAD per platform); exit 1 on any drift.",
    )
    steps.add_argument(
        "--platform",
        metavar="LIST",
        help="With --build, or --verify_pinned: build (or check the pins of) every image of this run for "
        "exactly these platforms, comma-separated OS/ARCH[/VARIANT] (linux/amd64,linux/arm64), in place of "
        "its IMAGE_PLATFORMS entry; images outside the run keep theirs, and no image may be built for a "
        "platform its parent lacks. Several platforms make one index, built and pushed by one build "
        "(BuildKit on the containerd image store; other engines refuse before any work). Not with "
        "--update_references: pins follow IMAGE_PLATFORMS.",
    )
    steps.add_argument(
        "--skip_unchanged",
        "--skip-unchanged",
        action="store_true",
        help="With --build: do not build an image whose inputs are those of its pin (its build context as "
        "docker sends it, .dockerignore applied; its Dockerfile, every parent pinned by digest; the build "
        "options that change the result), as the label org.iree.manage-images.inputs of the config the "
        "registry serves for the pin says. Such an image keeps its pin; with --push its tag is moved to the "
        "pin in the registry, without it the pin is pulled. Every build records its inputs in that label.",
    )
    steps.add_argument(
        "--build_arg",
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="With --build: pass `--build-arg NAME=VALUE` to every build (repeatable, in order). Each is one "
        "of the images' inputs (see --skip_unchanged).",
    )
    steps.add_argument(
        "--attestations",
        action="store_true",
        help="With --build on BuildKit: keep BuildKit's default attestations (provenance). Off by default: "
        "on the containerd store they make each pin an index whose digest changes on every build.",
    )


def _add_mode_arguments(modes: argparse._ArgumentGroup) -> None:
    modes.add_argument(
        "--only_references",
        "--only-references",
        action="store_true",
        help="Point every reference to each image at its digest in "
        "build_tools/docker/prod_digests.txt. Needs no Docker.",
    )
    modes.add_argument(
        "--promote",
        action="store_true",
        help="Publish each image's pinned digest (from prod_digests.txt) under --tag through the registry "
        "API: GET the manifest by digest, PUT the same bytes under the tag, confirm the digest the registry "
        "answers. No engine needed, no layer moved; credentials as docker finds them.",
    )
    modes.add_argument(
        "--check",
        action="store_true",
        help="Report, as PATH:LINE: MESSAGE, every disagreement between the graph, "
        "the Dockerfiles' registry parents, the digest references and "
        "prod_digests.txt, every reference not pinned by digest, and every image missing a "
        "Dockerfile, a prod_digests.txt line or a use, and every image built for a platform its parent "
        "lacks (IMAGE_PLATFORMS); exit 1 if there is any. Needs no Docker and no registry; changes "
        "nothing. With --json, the report also says what each pin is (index or image manifest, its media "
        "type, an index's platforms), which the registry answers: one GET per pin.",
    )
    modes.add_argument(
        "--graph",
        nargs="?",
        const="text",
        choices=("text", "dot", "mermaid"),
        help="Print the graph of the images that would be processed, as an "
        "indented tree (text, the default), Graphviz (dot) or Mermaid, and exit.",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_schedule_arguments(parser)
    parser.add_argument(
        "--dry_run",
        "--dry-run",
        "-n",
        action="store_true",
        help="Print the commands and file changes without running or making them.",
    )
    parser.add_argument(
        "--registry",
        help="Registry and path the images live under. Defaults to the one build_tools/docker/"
        f"prod_digests.txt names (when all its lines agree), else {DEFAULT_REGISTRY}.",
    )
    parser.add_argument(
        "--changed_since",
        "--changed-since",
        metavar="REF",
        help="Also select every image whose build context build_tools/docker/NAME/ differs between the git "
        "revision REF and the work tree. With --check, also report each such image whose line in "
        "prod_digests.txt is the same as at REF (edited but never re-pinned).",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="At the end of the run, write a JSON report of what happened to FILE (`-`: standard output, "
        "and the human lines go to standard error).",
    )
    parser.add_argument(
        "--progress",
        choices=PROGRESS_CHOICES,
        default="auto",
        help="How a run shows its images: tty (a live view redrawn in place: counts, time left, one line "
        "per running image), plain (every command and its output, line by line), quiet (only the summary "
        "and errors), or auto (the default: tty on a terminal, else plain).",
    )
    parser.add_argument(
        "--log_dir",
        "--log-dir",
        type=Path,
        metavar="DIR",
        help=f"Write each image's log (every command and its whole output) to DIR/RUN/NAME.log, and the "
        f"step durations the time-left estimate uses to DIR/{DURATIONS_NAME} (default: {LOGS_NAME} in "
        f"the git directory). The last {KEEP_RUNS} runs are kept.",
    )
    parser.add_argument(
        "--repo_root",
        "--repo-root",
        type=Path,
        help="The repository to work on. Defaults to the git work tree holding the current directory.",
    )


def _add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="Process up to N images at a time (on each --builder), each once all its parents in the "
        "run are done (default 1: one after another, in the original order).",
    )
    parser.add_argument(
        "--builder",
        action="append",
        default=[],
        metavar="NAME",
        help="Build on NAME, a docker context (`docker context ls`) or a buildx builder (`docker buildx "
        "ls`), as docker's --context and buildx's --builder name them: every docker command of the run "
        "goes there, none to the engine DOCKER_HOST names. Repeatable: several form a pool, -j N images "
        "at a time on each, an image preferring the builder that built its parent; a pool needs --build "
        "--push --update_references (children build on their parents' pushed digests), and reads each "
        "pin's cache from the registry as --cache_from_pinned does. A builder other than a context (not "
        "of buildx's docker driver) pushes each image as it builds it.",
    )
    parser.add_argument(
        "--keep_going",
        "--keep-going",
        "-k",
        action="store_true",
        help="After a failure, go on with the images that do not depend on the "
        "failed one (by default nothing new starts after the first failure).",
    )


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, graph: Mapping[str, Sequence[str]]
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.images and args.changed_since is None:
        parser.error("the following arguments are required: --images/--image")
    args.images = args.images or []
    for image in args.images:
        if image != "all" and image not in graph:
            # One line, with the names it may have meant: the usage block would bury it.
            parser.exit(2, f"{parser.prog}: error: {unknown_image(image, graph)}\n")
    args.images = expand_selection(args.images, graph)
    if args.registry is not None:
        args.registry = args.registry.removesuffix("/")
    _check_values(parser, args, graph)
    _check_modes(parser, args)
    return args


def _check_values(
    parser: argparse.ArgumentParser, args: argparse.Namespace, graph: Mapping[str, Sequence[str]]
) -> None:
    if not TAG_RE.match(args.tag):
        parser.error(
            f"--tag {args.tag!r} is not a valid Docker tag: use up to 128 letters, "
            "digits, `_`, `.` and `-`, not starting with `.` or `-`"
        )
    if args.registry is not None and not REGISTRY_RE.match(args.registry):
        parser.error(
            f"--registry {args.registry!r} is not a valid registry: use "
            "HOST[:PORT]/PATH with a lowercase path, e.g. gcr.io/iree-oss"
        )
    too_long = registry_too_long(args.registry, graph) if args.registry is not None else ""
    if too_long:
        parser.error(f"--registry is too long: {too_long}")
    for argument in args.build_arg:
        if not argument.partition("=")[0] or "=" not in argument:
            parser.error(f"--build_arg {argument!r}: give NAME=VALUE")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    if args.platform is not None:
        try:
            args.platform = parse_platforms(args.platform)
        except ValueError as error:
            parser.error(f"--platform: {error}")
    if args.json is not None:
        problem = report_path_problem(args.json)
        if problem:
            parser.error(f"--json {args.json!r}: {problem}")


def report_path_problem(destination: str) -> str:
    """Why the --json report could not be written to `destination`, found before any work, or ""."""
    if destination == "-":
        return ""
    if not destination:
        return "give a file name, or - for standard output"
    path = Path(destination)
    folder = path.parent
    if path.is_dir():
        return "is a folder; give a file name"
    if path.is_symlink() or (path.exists() and not path.is_file()):  # written through: see write_report
        return "" if os.access(path, os.W_OK) else "is not writable"
    if not folder.is_dir():
        return f"the folder {shown(str(folder))} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {shown(str(folder))} is not writable"
    return ""


def _check_modes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    steps = Steps(args.pull, args.build, args.push, args.update_references)
    step_flags = [f"--{name}" for name in steps.names()]
    for flag in BuildOptions.from_arguments(args).asked():
        if flag == "--verify_pinned" and step_flags and not args.build:
            parser.error(f"{flag} goes with --build (or, for --verify_pinned, with no step at all)")
        if flag != "--verify_pinned" and not args.build:
            parser.error(f"{flag} goes with --build: it changes how images are built")
    if args.platform is not None and not (args.build or args.verify_pinned):
        parser.error("--platform goes with --build or --verify_pinned: it says what a run builds or checks")
    if args.platform is not None and args.update_references:
        # A pin holds what the graph says, so --verify_pinned and the graph never disagree.
        parser.error(
            "--platform does not go with --update_references: a pin holds the platforms IMAGE_PLATFORMS "
            "lists; change the entry to pin other platforms"
        )
    refusal = pool_refusal(args.builder, steps)
    if refusal:
        parser.error(refusal)
    if args.skip_unchanged and args.verify_pinned:
        parser.error(
            "--skip_unchanged and --verify_pinned cannot be combined: one builds only what changed, "
            "the other rebuilds each image to prove it gives its pin"
        )
    if args.verify_pinned and not step_flags:
        step_flags = ["--verify_pinned"]  # a mode of its own: check the registry
    modes = [
        flag
        for flag, on in (
            ("--only_references", args.only_references),
            ("--promote", args.promote),
            ("--check", args.check),
            ("--graph", args.graph is not None),
        )
        if on
    ]
    if len(modes) > 1 or (modes and step_flags):
        parser.error(
            f"{' and '.join(modes + step_flags)} cannot be combined: {modes[0]} is a mode of its own"
        )


def resolve_root(repo_root: Path | None, needed: bool) -> Path:
    """The work tree to use: an error if one is needed and there is none."""
    start = repo_root or Path.cwd()
    if needed or repo_root is not None:
        return find_repo_root(start)
    try:
        return find_repo_root(start)
    except ManageImagesError:  # --pull and --push alone need no repository
        return start


def mode_of(args: argparse.Namespace, steps: Steps) -> str:
    for mode in ("graph", "check", "promote", "only_references"):
        if getattr(args, mode):
            return mode
    return "verify_pinned" if args.verify_pinned and not steps.any() else "steps"


def select_images(
    args: argparse.Namespace, graph: Mapping[str, Sequence[str]]
) -> tuple[list[str], Presubmit | None, Path | None]:
    """The images named, plus those changed since --changed_since (whose work tree it resolves)."""
    selection = list(args.images)
    if args.changed_since is None:
        return selection, None, None
    root = resolve_root(args.repo_root, True)
    changed = changed_images(root, args.changed_since, graph)
    selection += [image for image in changed if image not in selection]
    return selection, Presubmit(args.changed_since, tuple(changed)), root


def output_of(args: argparse.Namespace, console: Console, settings: Settings) -> Progress:
    """--progress and --log_dir: how the run shows its images, and where their logs go.
    Colour only on a terminal, and never with NO_COLOR set."""
    stream = console.stream
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    term = os.environ.get("TERM", "")
    progress = Progress(
        resolve_progress(args.progress, terminal, term),
        colour=terminal and term != "dumb" and not os.environ.get("NO_COLOR"),
    )
    progress.log_base = logs_base(settings, args.log_dir)
    return progress


def dispatch(
    args: argparse.Namespace,
    graph: Mapping[str, Sequence[str]],
    command: str,
    report: Report,
    console: Console,
    platforms: Mapping[str, tuple[str, ...]] | None = None,
) -> int:
    """Runs the mode the arguments ask for; `platforms` is IMAGE_PLATFORMS, validated."""
    steps = Steps(args.pull, args.build, args.push, args.update_references)
    report.head.update(
        mode=mode_of(args, steps),
        registry=args.registry or DEFAULT_REGISTRY,
        tag=args.tag,
        steps=["only_references"] if args.only_references else ["promote"] if args.promote else steps.names(),
        dry_run=args.dry_run,
        changed_since=args.changed_since,
    )
    selection, presubmit, root = select_images(args, graph)
    if not selection:
        console.line(f"No image changed since {args.changed_since}")
        return 0
    images = ordered_images_to_process(selection, graph)
    if args.graph:
        return show_graph(images, graph, args.graph, console)
    needed = args.check or args.only_references or args.promote or args.verify_pinned or steps.build
    root = root or resolve_root(args.repo_root, needed or steps.update_references)
    settings = Settings(resolve_registry(args.registry, root, graph), args.tag, args.dry_run, root)
    report.head["registry"] = settings.registry
    platforms = platforms or {}
    if args.check:
        pins = in_background(lambda: pin_descriptions(settings, images)) if args.json else None
        code = check(settings.root, settings.registry, images, graph, console, presubmit, report, platforms)
        if pins is not None:
            report.head["pins"] = pins()
        return code
    wanted = run_platforms(images, platforms, args.platform)
    if args.verify_pinned and not steps.any():
        return verify_registry(settings, images, console, report, wanted)
    runner = Runner(
        settings, console, report, args.jobs > 1 or len(args.builder) > 1, output_of(args, console, settings)
    )
    report.folder = runner.progress.log_base
    runner.selected = selection
    runner.platforms = wanted
    schedule = Schedule(args.jobs, args.keep_going, tuple(args.builder))
    calls = [functools.partial(resolve_builder, settings, name) for name in args.builder]
    runner.builders = dict(zip(args.builder, in_parallel(*calls)))
    if args.promote:
        return promote(runner, images, graph, schedule)
    if args.only_references:
        return only_references(runner, images, graph, schedule, command)
    options = BuildOptions.from_arguments(args)
    # A builder that never saw an image builds it from the pin's cache, as a cold machine does.
    options = options._replace(cache_from_pinned=True) if len(args.builder) > 1 else options
    return run_steps(runner, images, graph, steps, options, schedule, command)


def main(
    argv: Sequence[str] | None = None,
    graph: Mapping[str, Sequence[str]] = IMAGES_TO_DEPENDENCIES,
    platforms: Mapping[str, Sequence[str]] = IMAGE_PLATFORMS,
) -> int:
    """The command line. `graph` is the image graph to work on: IMAGES_TO_DEPENDENCIES, or a
    copy of it with an image added (the tests' way to try a new image in a scratch tree);
    `platforms` its IMAGE_PLATFORMS."""
    try:
        validate_graph(graph)
        canonical = validate_platforms(platforms, graph)
    except ManageImagesError as error:
        error_line(str(error))
        return 1
    occupy_closed_descriptors()
    args = parse_arguments(build_parser(graph), argv, graph)
    arguments = list(sys.argv[1:] if argv is None else argv)
    report = Report(arguments)
    CHILDREN.reset()
    SECRETS.reset()  # this run's client finds its credentials anew
    _errors.clear()  # a standard error lost in an earlier run of this process is asked again
    _registry_client.cache_clear()  # what the registry served is remembered for one run only
    # With --json -, standard output carries the document alone.
    out = Console(sys.stdout)
    console = error_console() if args.json == "-" else out
    with signals_stop_the_run(console):
        code = run_and_report(args, graph, arguments, report, console, out, canonical)
    return code


def run_and_report(
    args: argparse.Namespace,
    graph: Mapping[str, Sequence[str]],
    arguments: Sequence[str],
    report: Report,
    console: Console,
    out: Console,
    platforms: Mapping[str, tuple[str, ...]] | None = None,
) -> int:
    """Runs the mode, prints the one line of a failure, writes --json; the exit code."""
    try:
        command = " ".join(["manage_images.py", *arguments])
        code = dispatch(args, graph, command, report, console, platforms)
    except Exception as error:  # a bug or an unforeseen OS error too: one line, never a traceback
        message = str(error) if isinstance(error, ManageImagesError) else bug_line(error, report)
        if isinstance(error, UsageError):
            message = f"manage_images.py: error: {message}"
        if not CHILDREN.stopping:  # else it is what the stop did (a command killed), not news
            error_line(message)
        report.error = message
        code = error.returncode if isinstance(error, ManageImagesError) else 1
    if CHILDREN.stopping:
        code = CHILDREN.code
        report.error = CHILDREN.reason
        if CHILDREN.reason.startswith("cannot write"):
            error_line(f"manage_images.py: {CHILDREN.reason}")
    if args.json:
        try:
            write_report(args.json, report.document(code), out)
        except ManageImagesError as error:
            error_line(str(error))
            return code or 1
    return code


if __name__ == "__main__":
    exit_code = main()
    # What is left is freed as the interpreter ends, but its collections at exit would first
    # walk every object the run made (10-15 ms after a scan of 100,000 files): exempt them.
    gc.freeze()
    raise SystemExit(exit_code)
