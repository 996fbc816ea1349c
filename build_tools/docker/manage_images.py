#!/usr/bin/env python3
"""Manage the CI Docker images of this repository and pin them by digest.

The images form a graph (IMAGES_TO_DEPENDENCIES): an image's Dockerfile pins
each of its parents by digest (`FROM gcr.io/iree-oss/base@sha256:...`).
Selecting an image processes it and every image that transitively depends on
it, each after all of its parents, running the steps asked for:

  --pull               docker pull REGISTRY/NAME:TAG
  --build              docker build --tag REGISTRY/NAME:TAG build_tools/docker/NAME
  --push               docker push REGISTRY/NAME:TAG
  --update_references  rewrite every REGISTRY/NAME@sha256:... in the files git
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

See README.md for the workflows.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import graphlib
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
    Callable,
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
RBE_IMAGE = "rbe-toolchain"
LOCK_NAME = "manage_images.lock"  # in the git directory, beside index.lock
COMMAND_TIMEOUT = 120  # seconds, for the read-only commands (git, docker image inspect)

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

# Docker refuses a repository name (registry and path) longer than this.
MAX_REFERENCE_NAME = 255
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
# Docker's tag grammar.
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
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
# A temporary file beside its target: a short fixed-length name, so it fits
# wherever the target's name does, and one the next run can recognise.
BIG_FILE = 1 << 20  # bytes; a smaller file is written from memory, whatever changed
BLOCK = 1 << 16  # bytes; the unit a big file is patched and read back in
TEMPORARY_RE = re.compile(r"\.manage_images\.[0-9a-f]{12}\.tmp\Z")
# --progress, after buildx: `auto` is `tty` on a terminal (TERM not dumb), else `plain`.
PROGRESS_CHOICES = ("auto", "tty", "plain", "quiet")
LOGS_NAME = "manage_images-logs"  # in the git directory, beside the lock: one folder per run
RUN_FOLDER_RE = re.compile(r"\d{8}T\d{6}Z-\d+(?:-\d+)?\Z")  # a run's folder of logs; only these are pruned
KEEP_RUNS = 5  # runs whose logs are kept, this one included
DURATIONS_NAME = "durations.json"  # beside the runs' folders: each image's last step durations
TAIL_LINES = 20  # lines of a failed image's log shown under the summary
REDRAW_SECONDS = 0.25  # the terminal view is redrawn at most this often
_ESCAPE_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # a terminal control sequence (colour, cursor)

T = TypeVar("T")

if TYPE_CHECKING:  # imported where used, so --help and --graph start fast
    import ast
    import concurrent.futures
    import subprocess


# ---------------------------------------------------------------------------
# Errors, and the helpers that format what they show.


class ManageImagesError(Exception):
    """A failure the user can act on; `main` prints it as one line and exits with `returncode`."""

    returncode = 1


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


class WorkspaceError(ManageImagesError):
    """WORKSPACE cannot be read exactly; carries the line to report."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


def format_command(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def shown(text: str) -> str:
    """`text` safe to print: bytes of a file name that are not UTF-8 appear as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unexpected(error: BaseException) -> str:
    """The one line for an error the tool did not foresee."""
    return (
        f"unexpected {type(error).__name__}: {error}; nothing more was started. "
        "Please report this with the command you ran"
    )


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
    cache_from_pinned: bool = False  # --build with --cache-from the pinned image
    verify_pinned: bool = False  # --build, then compare with the pinned image

    def any(self) -> bool:
        return self.pull or self.build or self.push or self.update_references

    def names(self) -> list[str]:
        return [name for name in ("pull", "build", "push", "update_references") if getattr(self, name)]


class ImageResult(NamedTuple):
    """What happened to one image in a run."""

    image: str
    result: Status
    seconds: float = 0.0
    digest: str | None = None
    error: ManageImagesError | None = None
    finished: int = 0  # completion rank, to find the first failure


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


class Reference(NamedTuple):
    """`REGISTRY/NAME@sha256:X` in a file: where X starts, NAME, and X (any run of letters and digits)."""

    start: int  # of the whole reference
    hex_start: int
    name: str
    hexdigits: bytes

    def well_formed(self) -> bool:
        return bool(HEX64_BYTES_RE.match(self.hexdigits))


class Presubmit(NamedTuple):
    """--changed_since: the revision, and the images whose build context changed since it."""

    ref: str
    changed: tuple[str, ...]


class Schedule(NamedTuple):
    """How many images run at a time, and whether a failure stops new starts."""

    jobs: int = 1
    keep_going: bool = False


class Settings(NamedTuple):
    """What a run works on, fixed before anything runs."""

    registry: str
    tag: str
    dry_run: bool
    root: Path  # the top of the git work tree, always resolved
    env: Mapping[str, str] | None = None  # for every command; None: ours


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


# ---------------------------------------------------------------------------
# References: matching and rewriting, on bytes so every other byte survives.


def image_url(registry: str, image: str) -> str:
    return f"{registry}/{image}"


def reference_scanner(registry: str) -> re.Pattern[bytes]:
    """`REGISTRY/NAME@sha256:X` with NAME and X as groups. It starts with a
    literal, so the regex engine skips ahead to each occurrence of the registry
    (a look-behind first would be tried at every byte); the left boundary is
    checked per match instead, in `find_references`."""
    return re.compile(
        re.escape(f"{registry}/".encode()) + b"(" + _PATH_COMPONENT.encode() + rb")@sha256:([0-9A-Za-z]+)"
    )


def find_references(data: bytes, registry: str) -> Iterator[Reference]:
    """Every reference to an image under `registry` in `data`, as a whole token.

    An empty X (`@sha256:...`, `@sha256:<digest>`) is a placeholder in prose,
    not a reference. A match that is part of a longer host or path
    (`mirror.gcr.io/...`, `x/gcr.io/...`) is not one either; `//` before it
    stays allowed, for URLs.
    """
    scanner = reference_scanner(registry)
    prefix = f"{registry}/".encode()
    # bytes.find skips ahead to each occurrence of the registry far faster than
    # the regex engine's own scan; the regex then reads one candidate.
    start = data.find(prefix)
    while start >= 0:
        match = scanner.match(data, start)
        if match and (
            start == 0 or data[start - 1] not in _REFERENCE_PART or data[start - 2 : start] == b"//"
        ):
            yield Reference(start, match.start(2), match.group(1).decode(), match.group(2))
            start = data.find(prefix, match.end())
        else:
            start = data.find(prefix, start + 1)


def names_referenced(data: bytes, registry: str) -> set[str]:
    """Every NAME in `data` that appears as `REGISTRY/NAME@sha256:`, token or not."""
    scanner = re.compile(re.escape(f"{registry}/".encode()) + b"(" + _PATH_COMPONENT.encode() + b")@sha256:")
    prefix = f"{registry}/".encode()
    names = set()
    start = data.find(prefix)
    while start >= 0:
        match = scanner.match(data, start)
        if match:
            names.add(match.group(1).decode())
        start = data.find(prefix, match.end() if match else start + 1)
    return names


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
        and reference.well_formed()
        and reference.hexdigits != hexes[reference.name]
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


def workspace_findings(data: bytes, url: str, pinned: str | None, prod_path: str) -> list[Finding]:
    """What is wrong with the rbe_autoconfig rule that pins `url`."""
    try:
        rules = rules_naming(parse_rbe_rules(data), url)
    except WorkspaceError as error:
        return [Finding(error.path, error.line, error.message, "workspace")]
    findings = []
    for rule in rules:
        digest = rule.digest or ""
        if not DIGEST_RE.match(digest):
            message = f"rbe_autoconfig digest {digest!r} is not a well-formed digest (sha256: and 64 lowercase hex digits)"
            findings.append(Finding(WORKSPACE_PATH, rule.digest_line, message, "malformed"))
        elif pinned is None:
            message = f"rbe_autoconfig pins {url}, which is not listed in {prod_path}"
            findings.append(Finding(WORKSPACE_PATH, rule.digest_line, message, "unlisted"))
        elif digest != pinned:
            message = f"rbe_autoconfig digest {digest[:19]} differs from {prod_path} ({pinned[:19]})"
            findings.append(Finding(WORKSPACE_PATH, rule.digest_line, message, "stale"))
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
    for number, raw in enumerate(data.splitlines(), start=1):
        text = raw.decode("utf-8", "replace").strip()
        url, at, digest = text.partition("@")
        if not at or not url or not DIGEST_RE.match(digest):
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
                name, _, digest = source[len(registry) + 1 :].partition("@")
                parents.append(ParentRef(line, instruction, source, name.split(":", 1)[0], digest))
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


def reference_findings(
    files: Mapping[str, bytes],
    registry: str,
    images: Iterable[str],
    prod_digests: Mapping[str, str],
    prod_path: str,
    graph: Mapping[str, Sequence[str]],
) -> list[Finding]:
    """References (and the WORKSPACE rule) that disagree with prod_digests.txt.

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
        for reference in find_references(data, registry):
            name, hexdigits = reference.name, reference.hexdigits.decode()
            if name in selected or (everything and name not in graph):
                finding = _reference_finding(registry, name, hexdigits, prod_digests, prod_path, graph)
                if finding:
                    findings.append(Finding(path, lines.line_at(reference.start), *finding))
        if path == WORKSPACE_PATH and RBE_IMAGE in selected:
            url = image_url(registry, RBE_IMAGE)
            findings += workspace_findings(data, url, prod_digests.get(RBE_IMAGE), prod_path)
    return findings


def _reference_finding(
    registry: str,
    name: str,
    hexdigits: str,
    prod_digests: Mapping[str, str],
    prod_path: str,
    graph: Mapping[str, Sequence[str]],
) -> tuple[str, FindingKind] | None:
    """What is wrong with one reference (message and kind), or None."""
    if not HEX64_RE.match(hexdigits):
        ref = f"{registry}/{name}@sha256:{hexdigits}"
        return f"{ref} is not a well-formed digest (sha256: and 64 lowercase hex digits)", "malformed"
    if name not in prod_digests:
        return f"{registry}/{name} is referenced but not listed in {prod_path}", "unlisted"
    if prod_digests[name] != f"sha256:{hexdigits}":
        outside = "" if name in graph else f" ({name} is not an image of the graph)"
        message = (
            f"{registry}/{name} is pinned to sha256:{hexdigits[:12]}, but {prod_path} "
            f"says {prod_digests[name][:19]}{outside}"
        )
        return message, "stale"
    return None


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


def build_argv(url: str, tag: str, context: str, cache_from: str | None = None) -> tuple[str, ...]:
    cache = ("--cache-from", cache_from) if cache_from else ()
    return ("docker", "build", "--tag", f"{url}:{tag}", *cache, context)


def tag_argv(source: str, target: str) -> tuple[str, ...]:
    return ("docker", "tag", source, target)


def image_id_argv(ref: str) -> tuple[str, ...]:
    return ("docker", "image", "inspect", "--format", "{{.Id}}", ref)


def manifest_argv(ref: str, registry: str) -> tuple[str, ...]:
    """Asks the registry, through docker's own credentials, what it serves for `ref`.

    The engine talks plain HTTP to a registry on the loopback interface; the
    CLI's manifest command must be told so with --insecure.
    """
    insecure = ("--insecure",) if is_loopback_registry(registry) else ()
    return ("docker", "manifest", "inspect", "--verbose", *insecure, ref)


def is_loopback_registry(registry: str) -> bool:
    import ipaddress

    host = registry.split("/", 1)[0]
    name = host[1 : host.find("]")] if host.startswith("[") else host.split(":", 1)[0]
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name
        return False


def manifest_digest(output: str, ref: str) -> str:
    """The digest in `docker manifest inspect --verbose` output for one image manifest."""
    import json

    try:
        document = json.loads(output)
        digest = document["Descriptor"]["digest"]
    except (ValueError, TypeError, KeyError):
        raise ManageImagesError(
            f"cannot read the digest of {ref} from `docker manifest inspect`: expected one image "
            "manifest (a manifest list is not supported)"
        ) from None
    return check_digest(str(digest), ref)


def push_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "push", f"{url}:{tag}")


def inspect_many_argv(refs: Sequence[str]) -> tuple[str, ...]:
    """One `docker image inspect` for many images: a line of tags and digests for each one found."""
    return ("docker", "image", "inspect", "--format", "{{json .RepoTags}} {{json .RepoDigests}}", *refs)


def repo_digest_among(output: str, url: str, tag: str) -> str | None:
    """The digest of url:tag in the output of `inspect_many_argv`, or None if it is not there
    or not well formed (a dry run then says the digest is unknown)."""
    import json

    wanted = {
        f"{url}:{tag}",
        f"{url.removeprefix('docker.io/')}:{tag}",
        f"{url.removeprefix('docker.io/library/')}:{tag}",
    }
    decoder = json.JSONDecoder()
    for line in output.splitlines():
        try:
            tags, end = decoder.raw_decode(line)
            digests = json.loads(line[end:])
        except ValueError:
            continue
        if isinstance(tags, list) and wanted.intersection(tags) and isinstance(digests, list):
            digest = pick_repo_digest([str(entry) for entry in digests], url)
            return digest if digest and DIGEST_RE.match(digest) else None
    return None


def inspect_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", f"{url}:{tag}")


def gcloud_argv(registry: str) -> tuple[str, ...]:
    host = registry.split("/", 1)[0]
    if host == "gcr.io":
        return ("gcloud", "auth", "configure-docker")
    return ("gcloud", "auth", "configure-docker", host)


def is_google_registry(registry: str) -> bool:
    return bool(GOOGLE_REGISTRY_RE.match(registry.split("/", 1)[0]))


def pick_repo_digest(repo_digests: Sequence[str], url: str) -> str | None:
    """The digest of the RepoDigests entry whose repository is exactly `url`."""
    # Docker shortens Docker Hub repositories (`docker.io/library/x` -> `x`).
    wanted = {url, url.removeprefix("docker.io/"), url.removeprefix("docker.io/library/")}
    for entry in repo_digests:
        repository, at, digest = entry.partition("@")
        if at and repository in wanted:
            return digest
    return None


def diagnose(argv: Sequence[str], output: Sequence[str], registry: str) -> str:
    """What a failed docker command's last lines of output mean, and what to do."""
    if not argv or argv[0] != "docker":
        return ""
    text = "\n".join(output)
    host = registry.split("/", 1)[0]
    if _NO_ENGINE_RE.search(text):
        return "the Docker engine is not running: start it or point DOCKER_HOST at one"
    if tuple(argv[1:2]) in (("push",), ("pull",)):
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


def run_graph(
    order: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    jobs: int,
    keep_going: bool,
    work: Callable[[str], T],
    finish: Callable[[str, T], str | None],
    stopped: Callable[[], bool] = lambda: False,
    on_start: Callable[[str, int], None] = lambda image, number: None,
    clock: Callable[[], float] = time.monotonic,
    on_finish: Callable[[ImageResult], None] = lambda item: None,
    on_tick: Callable[[], None] = lambda: None,
) -> dict[str, ImageResult]:
    """Processes `order` so that each image starts once every dependency of it
    in the run has finished.

    `work(image)` runs in one of `jobs` worker threads (the docker commands);
    `finish(image, value)` runs here, in the calling thread, with what `work`
    returned (the reference rewrites), before any dependent starts, so file
    edits never overlap; it returns the image's digest. Among the ready images
    the earliest in `order` starts first, so `jobs=1` follows `order` exactly.
    After the first failure no new image starts unless `keep_going`; then only
    the dependents of a failed image are skipped. `stopped()` true (an
    interruption) also starts nothing new. Readiness comes from graphlib's
    get_ready()/done() protocol: a failed image is never done, so its
    dependents never become ready.
    """
    import concurrent.futures

    position = {image: index for index, image in enumerate(order)}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
        {image: [parent for parent in graph[image] if parent in position] for image in order}
    )
    sorter.prepare()
    ready: list[str] = []
    results: dict[str, ImageResult] = {}
    started: dict[str, float] = {}
    running: dict[concurrent.futures.Future[T], str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            ready = sorted([*ready, *sorter.get_ready()], key=position.__getitem__)
            failed = any(item.result == "failed" for item in results.values())
            while ready and len(running) < jobs and not stopped() and (keep_going or not failed):
                image = ready.pop(0)
                started[image] = clock()
                on_start(image, len(started))
                running[pool.submit(work, image)] = image
            if not running:
                break
            done, _ = concurrent.futures.wait(
                running, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
            )
            on_tick()
            # Several may finish at once: take them in the run's order, so the
            # edits and the output never depend on thread timing.
            for future in sorted(done, key=lambda future: position[running[future]]):
                image = running.pop(future)
                item = _finished(image, future, finish, clock() - started[image], len(results))
                results[image] = item
                on_finish(item)
                if item.result == "done":
                    sorter.done(image)
    return _with_the_rest(order, graph, results)


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


def format_summary(
    results: Mapping[str, ImageResult],
    steps: Sequence[str],
    wall: float,
    dry_run: bool = False,
    notes: Mapping[str, str] | None = None,
) -> str:
    """One line per image: result, short digest, seconds, steps (and a note,
    such as `reproduced`, when any image has one); then the wall time.

    In a dry run an image that went through is `planned`, never `done`.
    """
    notes = notes or {}
    width = max([len(image) for image in results] + [5])
    step_text = ", ".join(steps) or "-"
    label = {"done": "planned"} if dry_run else {}
    lines = [
        "Summary (dry run: nothing was run or changed):" if dry_run else "Summary:",
        f"  {'image':<{width}}  {'result':<11}  {'digest':<19}  {'seconds':>8}  steps"
        + (f"{' ' * max(0, len(step_text) - 5)}  note" if notes else ""),
    ]
    counts: dict[str, int] = {}
    for item in results.values():
        result = label.get(item.result, item.result)
        counts[result] = counts.get(result, 0) + 1
        digest = item.digest[:19] if item.digest else "-"
        seconds = f"{item.seconds:7.1f}s" if item.result in ("done", "failed") else "       -"
        note = f"  {notes[item.image]}" if item.image in notes else ""
        lines.append(f"  {item.image:<{width}}  {result:<11}  {digest:<19}  {seconds}  {step_text}{note}")
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


def fit(text: str, width: int) -> str:
    """`text` on one terminal line of at most `width` columns: control
    characters as spaces, cut with `...` when longer."""
    if not text.isascii() or not text.isprintable():
        text = "".join(char if char.isprintable() else " " for char in text)
    if len(text) <= width:
        return text
    return text[: max(width - 3, 0)] + "..."[: max(width, 0)]


class Running(NamedTuple):
    """An image the terminal view shows: its step, when it started, its output's last line."""

    image: str
    step: str
    started: float
    last: str


class ViewState(NamedTuple):
    """What the terminal view shows at one moment."""

    total: int
    done: int
    failed: int
    running: tuple[Running, ...]
    started: float  # the run's start, on the same clock
    left: float | None  # the estimate, if there is one
    name_width: int  # the longest image name of the run


def render_view(state: ViewState, now: float, columns: int, rows: int, colour: bool = False) -> list[str]:
    """The terminal view's lines: a header with the counts, the elapsed time
    and the time left, then one line per running image (its step, elapsed
    time and last line of output), each cut to `columns` - 1 (a full line
    would leave the cursor at the edge, and a narrower terminal would rewrap
    it) and, with `rows`, at most `rows` - 1 lines in all."""
    width = max(columns - 1, 1)
    waiting = state.total - state.done - state.failed - len(state.running)
    header = (
        f"[{state.done + state.failed}/{state.total}] {state.done} done, {len(state.running)} running, "
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
    for item in shown_running:
        head = (
            f"  {item.image:<{state.name_width}}  {item.step:<17}  {format_duration(now - item.started):>6}  "
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
        [f"{image} failed; the last {len(tail)} lines of its log, {log}:", *(f"  {line}" for line in tail)]
    )


# ---------------------------------------------------------------------------
# Side effects: running commands, reading git, locking, writing files.


class Console:
    """Prints whole lines, never interleaved, from any thread.

    In the terminal view it also keeps a block of live lines below what it
    printed: each line printed goes above the block, which is redrawn under it.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        # Reentrant: a signal handler may print while the main thread prints.
        self._lock = threading.RLock()
        self._block: list[str] = []  # the live lines, as written (colours included)
        self._lengths: list[int] = []  # their lengths on screen, to erase them after a resize

    @property
    def stream(self) -> TextIO:
        return self._out

    def columns(self) -> int:
        """The terminal's width now (80 when it is not a terminal)."""
        try:
            return os.get_terminal_size(self._out.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            return 80

    def line(self, text: str = "", prefix: str = "") -> None:
        with self._lock:
            self._erase()
            for part in shown(text).split("\n") if text else [""]:
                self._out.write(f"{prefix}{part}\n")
            self._draw()
            self._out.flush()

    def show(self, block: Sequence[str], lengths: Sequence[int]) -> None:
        """Replaces the live block (lines cut to the terminal's width; `lengths`
        are their widths on screen); an empty block leaves none and the cursor shown."""
        with self._lock:
            hide = "\x1b[?25l" if block and not self._block else ""  # no cursor jumping about the block
            show = "\x1b[?25h" if self._block and not block else ""
            erase = self._erasing()
            self._block, self._lengths = list(block), list(lengths)
            # One write: a line-buffered terminal stream makes a system call per write.
            self._out.write(f"{erase}{hide}{self._drawing()}{show}")
            self._out.flush()

    def _erase(self) -> None:
        self._out.write(self._erasing())

    def _erasing(self) -> str:
        if not self._lengths:
            return ""
        # A terminal that got narrower rewraps each line over more rows.
        columns = self.columns()
        rows = sum(max(1, -(-length // columns)) for length in self._lengths)
        return f"\r\x1b[{rows}A\x1b[J"

    def _draw(self) -> None:
        self._out.write(self._drawing())

    def _drawing(self) -> str:
        return "".join(f"{line}\n" for line in self._block)


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
        """Appends `text` (one or more lines) to the image's log."""
        with self._lock:
            log = self._files.get(image)
            if log is None:
                log = self._files[image] = open(
                    self.path(image), "a", encoding="utf-8", errors="backslashreplace", buffering=1
                )
        log.write(f"{text}\n")

    def tail(self, image: str, count: int = TAIL_LINES) -> list[str]:
        """The last `count` lines of the image's log."""
        try:
            with open(self.path(image), encoding="utf-8", errors="replace") as log:
                return list(collections.deque((line.rstrip("\n") for line in log), maxlen=count))
        except OSError:
            return []

    def close(self) -> None:
        with self._lock:
            for log in self._files.values():
                log.close()
            self._files.clear()

    def history(self) -> dict[str, dict[str, float]]:
        """image -> step -> seconds it took last time; {} when there is no readable record."""
        import json

        try:
            document = json.loads((self.base / DURATIONS_NAME).read_text(encoding="utf-8"))
            images = document["images"]
            return {
                str(image): {str(step): float(seconds) for step, seconds in steps.items()}
                for image, steps in images.items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
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

    def start(self, image: str) -> None:
        with self._lock:
            self._running[image] = Running(image, "", time.monotonic(), "")
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
        left = estimate_left(remaining, self._graph, self.costs, self._schedule.jobs, elapsed)
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
        stream = self._console.stream
        try:
            size = os.get_terminal_size(stream.fileno())
            columns, rows = size.columns or 80, size.lines or 24
        except (OSError, ValueError, AttributeError):
            columns, rows = 80, 24
        state, now = self._progress.state(), time.monotonic()
        lines = render_view(state, now, columns, rows, colour=self._progress.colour)
        lengths = [len(_ESCAPE_RE.sub("", line)) for line in lines] if self._progress.colour else None
        self._console.show(lines, lengths or [len(line) for line in lines])

    def close(self) -> None:
        """Erases the view, leaving the screen as the lines printed made it."""
        self._console.show([], [])


def _missing_tool(name: str) -> ManageImagesError:
    hints = {
        "docker": "install Docker (https://docs.docker.com/engine/install/) and try again",
        "git": "install git and try again",
    }
    return ManageImagesError(f"`{name}` not found on PATH: {hints.get(name, 'install it')}")


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
        self.stopping = False
        self.notes: dict[str, str] = {}  # image -> what the summary notes about it
        self.changed_files: dict[str, list[str]] = {}  # image -> files its update changed (or would)
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

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

    def stop(self) -> None:
        """Terminates every running command; no new one starts after this."""
        with self._lock:
            self.stopping = True
            for process in self._processes:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self, argv: Sequence[str], image: str = "", interactive: bool = False) -> None:
        """Runs a side-effecting command, streaming its merged output line by line.

        Each command gets a session of its own, so a Ctrl-C reaches this tool
        alone, which then stops it; an `interactive` one (gcloud may ask a
        question) keeps the terminal instead.
        """
        self.say(f"Running: `{format_command(argv)}`", image)
        if self.settings.dry_run:
            return
        import subprocess

        with self._lock:
            if self.stopping:
                raise ManageImagesError(f"interrupted before running `{format_command(argv)}`")
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=self.settings.root,
                    env=self.settings.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=None if interactive else subprocess.DEVNULL,
                    start_new_session=not interactive,
                )
            except FileNotFoundError:
                raise _missing_tool(argv[0]) from None
            if not interactive:  # it shares our process group: never killpg it
                self._processes.add(process)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        try:
            assert process.stdout is not None  # stdout=PIPE
            for raw in process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                tail.append(line)
                self.say(line, image)
            returncode = process.wait()
        finally:
            with self._lock:
                self._processes.discard(process)
        if returncode != 0:
            raise CommandError(argv, returncode, diagnose(argv, tail, self.settings.registry))


def capture_bytes(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs a read-only command (also in a dry run) and returns its output as bytes."""
    import subprocess

    try:
        return subprocess.run(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        raise _missing_tool(argv[0]) from None
    except subprocess.TimeoutExpired:
        raise ManageImagesError(
            f"`{format_command(argv)}` did not finish within {COMMAND_TIMEOUT} s; "
            "check what holds it up (a lock, a network file system) and run again"
        ) from None


def capture(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a read-only command (also in a dry run) and returns its output as text."""
    import subprocess

    result = capture_bytes(argv, cwd, env)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def find_repo_root(start: Path) -> Path:
    """The top of the git work tree holding `start`."""
    result = capture(("git", "-C", str(start), "rev-parse", "--show-toplevel"))
    if result.returncode != 0:
        raise ManageImagesError(
            f"{start} is not inside a git work tree: run from the repository or pass --repo_root"
        )
    return Path(result.stdout.rstrip("\n"))


def git_lines(root: Path, *args: str, ok: tuple[int, ...] = (0,), prefix: bytes = b"") -> list[str]:
    """The NUL-separated paths a git command prints (those starting with
    `prefix`, without it), as str that round-trip to the bytes.

    Any message on stderr is an error: `git grep` reports a file it cannot
    read there and still exits 0, and a file it skipped must not be missed.
    """
    argv = ("git", "-C", str(root), *args)
    result = capture_bytes(argv)
    if result.returncode not in ok or result.stderr.strip():
        said = " ".join(result.stderr.decode("utf-8", "replace").split()) or f"exit code {result.returncode}"
        raise ManageImagesError(
            f"`git {format_command(argv[3:])}` failed in {shown(str(root))}: {said}; fix the cause and run again"
        )
    return [
        os.fsdecode(path[len(prefix) :])
        for path in result.stdout.split(b"\0")
        if path.startswith(prefix) and path
    ]


def changed_images(root: Path, ref: str, graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The images whose build context differs between `ref` and the work tree:
    committed or not, added, deleted or renamed files, untracked ones included.
    A fixed number of git calls, whatever the number of images."""
    verified = capture(("git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
    if verified.returncode != 0:
        raise UsageError(
            f"--changed_since: git knows no revision {ref!r} in {shown(str(root))}; fetch it or fix the name"
        )
    folder = f"{DOCKER_DIR}/"
    paths = git_lines(root, "diff", "--name-only", "--no-renames", "-z", ref, "--", folder)
    paths += git_lines(root, "ls-files", "--others", "--exclude-standard", "-z", "--", folder)
    return images_in_paths(paths, graph)


def prod_digests_at(root: Path, ref: str, registry: str) -> dict[str, str]:
    """image -> digest, as prod_digests.txt said at `ref` (empty if it had none)."""
    result = capture_bytes(("git", "-C", str(root), "show", f"{ref}:{PROD_DIGESTS_PATH}"))
    if result.returncode != 0:
        return {}
    return pins_by_name(parse_prod_digests(result.stdout, PROD_DIGESTS_PATH, registry)[0], registry)


def path_problem(root: Path, relative: str, cache: dict[str, str] | None = None) -> str:
    """Why the tracked file `relative` must not be read or written, or "".

    Every folder on the way and the file itself must be real (no symbolic
    link), so no write can land outside the work tree; the file must be a
    regular file (a FIFO would hang a read). A missing file is no problem.
    """
    cache = {} if cache is None else cache
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if prefix not in cache:
            try:
                mode = os.lstat(root / prefix).st_mode
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


def index_may_hide(root: Path) -> bool:
    """False when git's index can mark no file skip-worktree (outside a sparse
    checkout): that mark needs index version 3 or 4, to which git moves the
    index when it first marks one. The usual version 2 index then spares a
    `git ls-files -t` that lists every tracked file. A split index (its
    entries partly in a shared file of their own version) is always asked."""
    if "GIT_DIR" in os.environ or "GIT_INDEX_FILE" in os.environ:
        return True
    git_dir = root / ".git"
    try:
        with open(git_dir / "index", "rb") as index:
            header = index.read(8)
        split = any(name.startswith("sharedindex.") for name in os.listdir(git_dir))
    except OSError:  # .git is a file (a worktree, a submodule), or no index yet: ask git
        return True
    return split or header != b"DIRC\0\0\0\2"


def scan_tree(root: Path, registry: str) -> TreeScan:
    needle = f"{registry}/"
    special = (WORKSPACE_PATH, PROD_DIGESTS_PATH)
    # Independent git calls at once: the grep reads every file, the others
    # only the index.
    named, sparse_list, tracked_list = in_parallel(
        lambda: git_lines(root, "grep", "-l", "-z", "-I", "-F", "-e", needle, "--", ok=(0, 1)),
        # Filtered as bytes: decoding 100,000 names to keep none costs more than the git call.
        lambda: git_lines(root, "ls-files", "-t", "-z", prefix=b"S ") if index_may_hide(root) else [],
        lambda: git_lines(root, "ls-files", "-z", "--", *special),
    )
    cache: dict[str, str] = {}
    candidates, skipped = [], []
    for path in named:
        problem = path_problem(root, path, cache)
        if problem:
            skipped.append((path, problem))
        else:
            candidates.append(path)
    hidden: list[str] = []
    sparse = set(sparse_list)
    if sparse:
        # git grep skips what a sparse checkout hides; read the index instead.
        in_index = git_lines(root, "grep", "--cached", "-l", "-z", "-I", "-F", "-e", needle, "--", ok=(0, 1))
        hidden = [path for path in in_index if path in sparse]
    tracked = frozenset(tracked_list) - sparse
    problems = {}
    for path in special:
        problem = path_problem(root, path, cache)
        if not problem and path not in tracked and (root / path).exists():
            problem = "git does not track it, and the tool edits tracked files only"
        if problem:
            problems[path] = problem
    return TreeScan(tuple(candidates), tuple(skipped), tuple(hidden), tracked, problems)


def unwritable_reason(path: Path) -> str | None:
    """Why `path` must not be replaced, or None.

    A file without any write bit is taken as read-only even for root, who could
    otherwise replace it; an immutable file or a read-only folder fails access().
    """
    if path.exists():
        if path.stat().st_mode & 0o222 == 0 or not os.access(path, os.W_OK):
            return "it is read-only"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"its folder {shown(str(path.parent))} is not writable"
    return None


def temporary_beside(path: Path) -> Path:
    return path.with_name(f".manage_images.{os.urandom(6).hex()}.tmp")


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
        (relative,) = capture(
            ("git", "-C", str(root), "rev-parse", "--git-path", LOCK_NAME)
        ).stdout.splitlines()
        path = root / relative
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        lock.record(())
        return lock

    def record(self, temporaries: Iterable[Path]) -> None:
        """Notes the temporary files about to be written, before they exist."""
        text = self._header + "".join(f"{os.fsencode(path).hex()}\n" for path in temporaries)
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, text.encode(), 0)

    def release(self) -> None:
        try:
            os.unlink(self.path)
        finally:
            os.close(self._descriptor)


def _read_lock(descriptor: int) -> tuple[str, list[Path]]:
    """The holder a lock file names, and the temporary files it lists."""
    data = b""
    while chunk := os.pread(descriptor, 65536, len(data)):
        data += chunk
    header, *rest = data.decode("utf-8", "replace").splitlines() or [""]
    temporaries = []
    for line in rest:
        try:
            temporaries.append(Path(os.fsdecode(bytes.fromhex(line))))
        except ValueError:
            continue
    return header, temporaries


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

    def written(self, relative: str, data: bytes) -> None:
        """Records what the run wrote, so later images start from it."""
        self._contents[relative] = data
        self._references.pop(relative, None)

    def references(self, relative: str) -> list[Reference]:
        """The references in a file as the run last read or wrote it, found once."""
        if relative not in self._references:
            self._references[relative] = list(find_references(self.read(relative), self.registry))
        return self._references[relative]

    def naming(self, image: str) -> list[str]:
        """The candidates that name `image` as `REGISTRY/IMAGE@sha256:`.

        A rewrite changes digests, never names, so the index built on the
        first call holds for the whole run.
        """
        if self._naming is None:
            self._naming = {}
            for path in self.scan.candidates:
                for name in names_referenced(self.read(path), self.registry):
                    self._naming.setdefault(name, []).append(path)
        return self._naming.get(image, [])


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

    def containing(self, text: bytes) -> list[str]:
        """Files with a pending edit whose new content holds `text`."""
        own = [path for path, change in self._changes.items() if text in change.new()]
        inherited = self.parent.containing(text) if self.parent else []
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


def _write_new(path: Path, change: FileChange, mode: int, base: Path | None = None) -> None:
    """Creates `path` holding exactly the change's new content, with `mode`, on disk (fsync).

    A big file whose change is patchable (a digest rewrite) is copied from
    `base` by the kernel (copy_file_range, as cp does) and its splices are
    written over the copy; reading the copy back must then give the new
    content, or it is written whole. Its new content is never built whole.
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
        os.fchmod(descriptor, mode)
    finally:
        os.close(descriptor)


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


def _stage_all(
    staged: Sequence[tuple[FileChange, Path, Path]], umask: int
) -> list[tuple[FileChange, OSError]]:
    """Writes every temporary file; the failures, in order. Many files are
    written by a few threads: their fsyncs then overlap (1,000 files take a
    third of the time they take one after another)."""

    def stage(item: tuple[FileChange, Path, Path]) -> OSError | None:
        change, target, temporary = item
        try:
            mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~umask
            _write_new(temporary, change, mode, target)
        except OSError as error:
            return error
        return None

    if len(staged) < 8:
        errors = [stage(item) for item in staged]
    else:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            errors = list(pool.map(stage, staged))
    return [(item[0], error) for item, error in zip(staged, errors) if error is not None]


def write_all_or_nothing(root: Path, changes: Sequence[FileChange], lock: RepositoryLock | None) -> None:
    """Replaces every changed file, or none of them.

    Each new content is first written to a temporary file beside its target
    (its name recorded in the lock first, so a killed run's leftovers are
    found); only once all are written are they renamed over their targets.
    Any failure while writing removes the temporary files and changes nothing.
    """
    cache: dict[str, str] = {}
    for change in changes:
        problem = path_problem(root, change.path, cache)
        reason = unwritable_reason(root / change.path) if not problem else None
        if problem or reason:
            advice = "fix that" if problem else "make it writable"
            raise ManageImagesError(
                f"cannot write {shown(change.path)}: {problem or reason}; {advice} and run again "
                "(no file was changed for this image)"
            )
    umask = os.umask(0)
    os.umask(umask)
    staged = [(change, root / change.path, temporary_beside(root / change.path)) for change in changes]
    if lock is not None:
        lock.record(temporary for _, _, temporary in staged)
    failures = _stage_all(staged, umask)
    if failures:
        for _, _, temporary in staged:
            temporary.unlink(missing_ok=True)
        change, error = failures[0]
        raise ManageImagesError(
            f"cannot write {shown(change.path)}: {error.strerror}; no file was changed for this image, "
            "fix the cause and run again"
        )
    # The commit: renames, many at once when there are many (they are spread
    # over folders, and each waits on its own folder's lock).
    if len(staged) < 8:
        for _, target, temporary in staged:
            os.replace(temporary, target)
    else:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda item: os.replace(item[2], item[1]), staged))
    if lock is not None:
        lock.record(())


# ---------------------------------------------------------------------------
# The steps of one image: docker commands, its digest, its reference rewrite.


def check_docker(settings: Settings) -> None:
    """Fails early, with a clear message, when docker or its engine is missing."""
    import shutil

    if shutil.which("docker", path=(settings.env or os.environ).get("PATH")) is None:
        raise _missing_tool("docker")
    result = capture(("docker", "version", "--format", "{{.Server.Version}}"), settings.root, settings.env)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())
        raise ManageImagesError(
            "cannot reach the Docker engine: start it (e.g. `sudo systemctl start "
            f"docker`) or point DOCKER_HOST at one; docker said: {said}"
        )


def configure_gcloud_auth(runner: Runner) -> None:
    """Runs `gcloud auth configure-docker` (printed only, in a dry run)."""
    import shutil

    settings = runner.settings
    if not settings.dry_run and shutil.which("gcloud", path=(settings.env or os.environ).get("PATH")) is None:
        raise ManageImagesError(
            "gcloud not found. See https://cloud.google.com/sdk/install for installation."
        )
    runner.run(gcloud_argv(settings.registry), interactive=True)


def repo_digest(settings: Settings, image: str) -> str | None:
    """The registry digest of REGISTRY/IMAGE:TAG, or None in a dry run if docker has none."""
    import json

    url = image_url(settings.registry, image)
    argv = inspect_argv(url, settings.tag)
    try:
        result = capture(argv, settings.root, settings.env)
    except ManageImagesError:
        if settings.dry_run:
            return None
        raise
    detail = result.stderr.strip() or result.stdout.strip()
    digest = None
    if result.returncode == 0:
        try:
            repo_digests = json.loads(result.stdout or "null") or []
        except ValueError:
            repo_digests = None
        if not isinstance(repo_digests, list) or not all(isinstance(entry, str) for entry in repo_digests):
            raise ManageImagesError(
                f"`{format_command(argv)}` printed {' '.join(detail.split())[:200]!r}, "
                "not a JSON list of RepoDigests; check the docker client and run again"
            )
        digest = pick_repo_digest(repo_digests, url)
        detail = f"RepoDigests {result.stdout.strip()} has no entry for {url}"
    if digest is None:
        if settings.dry_run:
            return None
        raise ManageImagesError(
            f"Computing the repository digest for {url}:{settings.tag} failed. "
            f"Has it been pushed to {settings.registry}? docker said: {' '.join(detail.split())}"
        )
    return check_digest(digest, f"{url}:{settings.tag} (from docker image inspect)")


def registry_digest(settings: Settings, ref: str) -> str | None:
    """The digest the registry serves for `ref` (by tag or by digest), or None if it serves nothing."""
    argv = manifest_argv(ref, settings.registry)
    result = capture(argv, settings.root, settings.env)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())
        if "no such manifest" in said.lower() or "manifest unknown" in said.lower():
            return None
        raise ManageImagesError(f"`{format_command(argv)}` failed: {said}; check the registry and run again")
    return manifest_digest(result.stdout, ref)


def local_image_id(settings: Settings, ref: str) -> str | None:
    """The ID of the local image `ref`, or None if the engine has none."""
    result = capture(image_id_argv(ref), settings.root, settings.env)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def pull_pinned(runner: Runner, image: str, pinned: str | None) -> str | None:
    """Pulls the image the tree pins, for --cache-from; its reference, or None
    (with a line and a note saying why) when there is none to pull."""
    url = image_url(runner.settings.registry, image)
    if pinned is None:
        runner.say(
            f"No cache for {image}: {PROD_DIGESTS_PATH} does not pin it; building without --cache-from", image
        )
        runner.note(image, "not pinned: built without cache")
        return None
    try:
        runner.run(pull_digest_argv(url, pinned), image)
    except CommandError:
        runner.say(
            f"No cache for {image}: the registry does not serve {url}@{pinned}; building without --cache-from",
            image,
        )
        runner.note(image, "pinned image not served: built without cache")
        return None
    return f"{url}@{pinned}"


def verify_built(runner: Runner, image: str, pinned: str | None) -> None:
    """Compares the image just built with the one the tree pins; fails, before any push, if they differ."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if settings.dry_run:
        runner.say(f"Dry run: would compare {url}:{settings.tag} with the pinned {url}@{pinned}", image)
        return
    if pinned is None:
        runner.note(image, "not pinned")
        raise ManageImagesError(
            f"{image} has no line in {PROD_DIGESTS_PATH}, so --verify_pinned has nothing to compare it with; "
            "pin it first (--build --push --update_references)"
        )
    built = local_image_id(settings, f"{url}:{settings.tag}")
    expected = local_image_id(settings, f"{url}@{pinned}")
    if expected is None:
        runner.run(pull_digest_argv(url, pinned), image)
        expected = local_image_id(settings, f"{url}@{pinned}")
    if built is not None and built == expected:
        runner.say(f"Reproduced the pinned image {url}@{pinned} (image {built[:19]})", image)
        runner.note(image, "reproduced")
        return
    runner.note(image, "differs")
    raise ManageImagesError(
        f"{image} differs from the image the tree pins: built {str(built)[:19]}, pinned {url}@{pinned[:19]} "
        f"is {str(expected)[:19]}. Its Dockerfile or a parent changed since it was pinned: rebuild, push "
        "and re-pin it (--build --push --update_references), or find out why; nothing was pushed"
    )


def prefetched_digests(runner: Runner, images: Sequence[str], steps: Steps) -> dict[str, str | None] | None:
    """In a dry run that only rewrites references, every digest comes from one
    `docker image inspect` of all the images; otherwise None (a real run
    inspects each image after its push, the only time its digest exists)."""
    settings = runner.settings
    if not (settings.dry_run and steps.update_references) or steps.build or steps.push:
        return None
    urls = {image: image_url(settings.registry, image) for image in images}
    argv = inspect_many_argv([f"{url}:{settings.tag}" for url in urls.values()])
    try:
        result = capture(argv, settings.root, settings.env)
    except ManageImagesError:  # no docker here: a dry run goes on without digests
        return {image: None for image in images}
    return {image: repo_digest_among(result.stdout, url, settings.tag) for image, url in urls.items()}


def docker_steps(
    runner: Runner,
    image: str,
    steps: Steps,
    pins: Mapping[str, str],
    known: Mapping[str, str | None] | None = None,
) -> str | None:
    """Pull, build and push one image; returns its repository digest when
    references are to be updated and the digest can be known. `pins` holds
    the digest prod_digests.txt gives each image (for --cache_from_pinned and
    --verify_pinned)."""
    settings = runner.settings
    url = image_url(settings.registry, image)
    if steps.pull:
        runner.begin(image, "pull")
        runner.run(pull_argv(url, settings.tag), image)
    if steps.build:
        runner.begin(image, "build")
        cache_from = pull_pinned(runner, image, pins.get(image)) if steps.cache_from_pinned else None
        runner.run(build_argv(url, settings.tag, f"{DOCKER_DIR}/{image}", cache_from), image)
        if steps.verify_pinned:
            verify_built(runner, image, pins.get(image))
    if steps.push:
        runner.begin(image, "push")
        runner.run(push_argv(url, settings.tag), image)
    if not steps.update_references:
        return None
    if settings.dry_run and (steps.build or steps.push):
        runner.say(
            f"Dry run: the digest of {url}:{settings.tag} is only known after it is "
            "built and pushed; listing the files that would be updated",
            image,
        )
        return None
    digest = known[image] if known is not None else repo_digest(settings, image)
    if digest is None:
        runner.say(
            f"Dry run: {url}:{settings.tag} has no repository digest on this machine "
            "(not pushed or pulled yet), so the new digest is unknown; listing "
            "the files that would be updated",
            image,
        )
    return digest


def apply_changes(runner: Runner, lock: RepositoryLock | None, changes: Sequence[FileChange]) -> None:
    """Writes every change, all or nothing, or shows it as a diff in a dry run."""
    if runner.settings.dry_run:
        for change in changes:
            runner.console.line(unified_diff(change.path, change.old, change.new()).rstrip("\n"))
        return
    write_all_or_nothing(runner.settings.root, changes, lock)


def update_workspace(runner: Runner, edits: Edits, image: str, digest: str | None) -> None:
    """Adds to `edits` the new digest of the rbe_autoconfig rule that pins IMAGE."""
    scan = edits.files.scan
    url = image_url(runner.settings.registry, image)
    runner.say(f"Updating WORKSPACE file for {RBE_IMAGE}", image)
    if WORKSPACE_PATH in scan.problems or WORKSPACE_PATH not in scan.tracked:
        runner.say(
            f"Not updating {WORKSPACE_PATH}: {scan.problems.get(WORKSPACE_PATH, 'git does not track it')}",
            image,
        )
        return
    rules = rules_naming(parse_rbe_rules(edits.read(WORKSPACE_PATH)), url)
    if not rules:
        runner.say(f"{WORKSPACE_PATH} has no rbe_autoconfig rule for {url}", image)
    elif digest is not None:
        edits.edit(WORKSPACE_PATH, lambda data: rewrite_workspace(data, url, digest)[0])


def update_references(
    runner: Runner, files: TrackedFiles, lock: RepositoryLock | None, image: str, digest: str | None
) -> None:
    """Points every reference to IMAGE in the tracked files at `digest`, and writes them."""
    edits = Edits(files)
    plan_references(runner, edits, image, digest)
    changes = edits.changes()
    apply_changes(runner, lock, changes)
    if not runner.settings.dry_run:
        for change in changes:
            files.written(change.path, change.new())
    runner.changed_files[image] = [change.path for change in changes]


def plan_references(
    runner: Runner, edits: Edits, image: str, digest: str | None, rewrite_files: bool = True
) -> None:
    """Adds to `edits` the new digest of every reference to IMAGE (with
    `rewrite_files` false, only of prod_digests.txt and WORKSPACE: the caller
    rewrites the files for many images at once).

    `digest` is None only in a dry run that cannot know it yet: then the files
    are listed but no diff is shown.
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
    needle = f"{url}@sha256:".encode()
    files = list(edits.files.naming(image))
    # A file this image's own edits made name it (a new prod_digests.txt).
    files += [path for path in edits.containing(needle) if path not in files]
    if not files:
        runner.say(f"Found no references to {url}", image)
    else:
        runner.say(f"Updating references in {len(files)} files: {files}", image)
        if digest is not None and rewrite_files:
            hexes = digest_hexes(registry, {image: digest})
            for path in files:
                edits.patch(path, reference_splices(edits.references(path), hexes))


# ---------------------------------------------------------------------------
# Checks before the first side effect.


def sparse_message(registry: str) -> str:
    return (
        f"outside the sparse checkout, yet it names {registry}/, so the tool can neither check nor update "
        "it; widen the checkout (`git sparse-checkout add FOLDER` or `git sparse-checkout disable`)"
    )


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
        print(f"warning: not updating {shown(path)}: {why}", file=sys.stderr)
    if RBE_IMAGE in images and WORKSPACE_PATH in scan.tracked and WORKSPACE_PATH not in scan.problems:
        data = (settings.root / WORKSPACE_PATH).read_bytes()
        rules_naming(parse_rbe_rules(data), image_url(settings.registry, RBE_IMAGE))
    return scan


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

    The keys are stable: see README.md, "JSON report".
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
        }
        self.images: list[dict[str, object]] = []
        self.findings: list[Finding] = []
        self.error: str | None = None

    def add_results(self, results: Mapping[str, ImageResult], runner: Runner, old: Mapping[str, str]) -> None:
        logs = runner.progress.logs
        for item in results.values():
            error = item.error
            self.images.append(
                {
                    "name": item.image,
                    "result": "planned" if runner.settings.dry_run and item.result == "done" else item.result,
                    "digest": {"old": old.get(item.image), "new": item.digest},
                    "seconds": round(item.seconds, 3),
                    "files": runner.changed_files.get(item.image, []),
                    "note": runner.notes.get(item.image, ""),
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
        return {
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


def write_report(destination: str, document: Mapping[str, object]) -> None:
    """Writes the --json document to a file (whole, by rename) or to standard output (`-`)."""
    import json

    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if destination == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(destination)
    temporary = temporary_beside(path)
    try:
        _write_new(temporary, FileChange.whole(destination, b"", text.encode()), 0o644)
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
        lock.release()


@contextlib.contextmanager
def stopped_by_signals(runner: Runner) -> Iterator[list[int]]:
    """Within it, SIGINT and SIGTERM stop the running commands and start nothing
    new; yields the list of signals received. The previous handlers come back
    on the way out."""
    received: list[int] = []

    def on_signal(number: int, frame: FrameType | None) -> None:
        if not received:
            runner.console.line(
                f"Interrupted by {signal.Signals(number).name}: stopping the running commands"
            )
        received.append(number)
        runner.stop()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            handlers[number] = signal.signal(number, on_signal)
    try:
        yield received
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
    result = capture(("git", "-C", str(settings.root), "rev-parse", "--git-path", LOGS_NAME))
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return settings.root / result.stdout.rstrip("\n")


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
    work: Callable[[str], str | None],
    finish: Callable[[str, str | None], str | None],
) -> tuple[
    Callable[[str, int], None],
    Callable[[str], str | None],
    Callable[[str, str | None], str | None],
    Callable[[ImageResult], None],
]:
    """The scheduler's callbacks with the run's progress kept: `on_start`
    (which prints `Processing image NAME [k/n]`, with the time left once there
    is an estimate), `work` and `finish` timed step by step, and `on_finish`
    (a failed image's error ends its log)."""
    progress = runner.progress

    def on_start(image: str, number: int) -> None:
        progress.start(image)
        left = progress.left()
        estimate = f" ({format_left(left)})" if left is not None else ""
        runner.say(f"Processing image {image} [{number}/{count}]{estimate}", image)

    def timed_work(image: str) -> str | None:
        progress.begin(image, step_names[0])
        value = work(image)
        progress.end(image)
        return value

    def timed_finish(image: str, value: str | None) -> str | None:
        if "update_references" in step_names:
            progress.begin(image, "update_references")
        digest = finish(image, value)
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
    work: Callable[[str], str | None],
    finish: Callable[[str, str | None], str | None],
    step_names: Sequence[str],
    after_run: Callable[[Mapping[str, ImageResult]], None] | None = None,
) -> int:
    """Runs the images through the scheduler, then `after_run` (unless
    interrupted), prints the summary, returns the exit code."""
    old = pinned_now(runner.settings)
    start = time.monotonic()
    on_start, timed_work, timed_finish, on_finish = tracked(runner, len(images), step_names, work, finish)
    with (
        showing_progress(runner, images, graph, schedule, step_names) as tick,
        stopped_by_signals(runner) as received,
    ):
        results = run_graph(
            images,
            graph,
            schedule.jobs,
            schedule.keep_going,
            timed_work,
            timed_finish,
            stopped=lambda: bool(received),
            on_start=on_start,
            on_finish=on_finish,
            on_tick=tick,
        )
    failed_after: ManageImagesError | None = None
    if after_run is not None and not received:
        try:
            after_run(results)
        except ManageImagesError as error:
            failed_after = error
    wall = time.monotonic() - start
    runner.console.line(format_summary(results, step_names, wall, runner.settings.dry_run, runner.notes))
    logs = runner.progress.logs
    for item in results.values():
        if item.result == "failed" and logs is not None:
            runner.console.line(failure_tail(item.image, str(logs.path(item.image)), logs.tail(item.image)))
    runner.report.add_results(results, runner, old)
    if received:
        return 128 + received[0]
    failures = sorted((item for item in results.values() if item.error), key=lambda item: item.finished)
    for item in failures[1:]:
        print(shown(f"{item.image}: {item.error}"), file=sys.stderr)
    if failures and failures[0].error:
        raise failures[0].error
    if failed_after is not None:
        raise failed_after
    return 0


def run_steps(
    runner: Runner,
    images: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    steps: Steps,
    schedule: Schedule,
    command: str,
) -> int:
    """--pull, --build, --push and --update_references, for each image in order."""
    with repository_lock(runner, command, needed=steps.update_references) as lock:
        # A dry run asks docker for every digest while git greps the tree.
        prefetched = in_background(lambda: prefetched_digests(runner, images, steps))
        if steps.build:
            preflight_build(runner.settings, images)
        scan = preflight_rewrite(runner.settings, images) if steps.update_references else None
        pins: dict[str, str] = {}
        if steps.cache_from_pinned or steps.verify_pinned:
            entries = read_prod_digests(
                runner.settings.root, scan or scan_tree(runner.settings.root, runner.settings.registry)
            )
            pins = pins_by_name(entries, runner.settings.registry)
        if not runner.settings.dry_run and steps.any():
            check_docker(runner.settings)
        if steps.push and is_google_registry(runner.settings.registry):
            configure_gcloud_auth(runner)
        runner.say(f"Also processing dependent images. Will process: {list(images)}")
        if not steps.any():
            runner.console.line(
                "No step requested (--pull, --build, --push, --update_references): nothing done."
            )
            return 0

        files = TrackedFiles(runner.settings.root, scan, runner.settings.registry) if scan else None
        known = prefetched()

        def finish(image: str, digest: str | None) -> str | None:
            if files is not None:
                update_references(runner, files, lock, image, digest)
            return digest

        def work(image: str) -> str | None:
            return docker_steps(runner, image, steps, pins, known)

        return process_images(runner, images, graph, schedule, work, finish, steps.names())


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
        runner.say(f"Also processing dependent images. Will process: {list(images)}")

        registry = runner.settings.registry
        files = TrackedFiles(runner.settings.root, scan, registry)
        # Every digest is known up front: gather all images' edits, then
        # rewrite each file once for all of them, in one pass, and write it
        # once (a 200 MB file is read, scanned and written once, not per image).
        run_edits = Edits(files)
        done: dict[str, str] = {}

        def finish(image: str, digest: str | None) -> str | None:
            assert digest is not None  # from prod_digests.txt
            edits = Edits(files, parent=run_edits)
            plan_references(runner, edits, image, digest, rewrite_files=False)
            hexes = digest_hexes(registry, {image: digest})
            stale = [path for path in files.naming(image) if reference_splices(files.references(path), hexes)]
            runner.changed_files[image] = list(
                dict.fromkeys([change.path for change in edits.changes()] + stale)
            )
            edits.merge()
            done[image] = digest
            return digest

        def write(results: Mapping[str, ImageResult]) -> None:
            hexes = digest_hexes(registry, done)
            for path in dict.fromkeys(path for image in done for path in files.naming(image)):
                run_edits.patch(path, reference_splices(run_edits.references(path), hexes))
            apply_changes(runner, lock, run_edits.changes())

        return process_images(
            runner, images, graph, schedule, digests.__getitem__, finish, ["only_references"], write
        )


def verify_registry(settings: Settings, images: Sequence[str], console: Console, report: Report) -> int:
    """--verify_pinned alone: does the registry serve each pinned digest, and TAG as it?"""
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
        findings += registry_findings(settings, image, entry)
    report.findings = findings
    agree = f"{settings.registry} serves every pinned digest, and :{settings.tag} as it."
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


def promote(
    runner: Runner, images: Sequence[str], graph: Mapping[str, Sequence[str]], schedule: Schedule
) -> int:
    """--promote: publish each pinned image under TAG, by digest; no build, no file change."""
    settings = runner.settings
    scan = scan_tree(settings.root, settings.registry)
    pins = prod_digests_for(settings.root, settings.registry, images, scan, action="promote")
    if not settings.dry_run:
        check_docker(settings)
    if is_google_registry(settings.registry):
        configure_gcloud_auth(runner)
    runner.say(f"Also processing dependent images. Will process: {list(images)}")

    def work(image: str) -> str:
        url = image_url(settings.registry, image)
        pinned = pins[image]
        runner.run(pull_digest_argv(url, pinned), image)
        runner.run(tag_argv(f"{url}@{pinned}", f"{url}:{settings.tag}"), image)
        runner.run(push_argv(url, settings.tag), image)
        if not settings.dry_run and registry_digest(settings, f"{url}:{settings.tag}") != pinned:
            raise ManageImagesError(
                f"after the push, {url}:{settings.tag} is not {pinned}; the registry rewrote the manifest "
                "or another push raced this one: run --verify_pinned to see what it serves"
            )
        return pinned

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
) -> int:
    """Reports every disagreement between the graph, the Dockerfiles, the
    references and prod_digests.txt (and, with --changed_since, every changed
    image that was not pinned anew); returns 1 if there was any."""
    scanned = in_background(lambda: scan_tree(root, registry))  # git grep reads every file meanwhile
    findings = dockerfile_check(root, registry, images, graph)
    scan = scanned()
    findings += [Finding(path, 1, f"not checked: {why}", "unsafe-path") for path, why in scan.skipped]
    findings += [Finding(path, 1, sparse_message(registry), "sparse") for path in scan.hidden]
    prod_digests, prod_findings = prod_digests_check(root, registry, graph, scan)
    findings += prod_findings
    files = {path: (root / path).read_bytes() for path in scan.candidates}
    if RBE_IMAGE in images:
        if WORKSPACE_PATH in scan.problems:
            message = f"not checked: {scan.problems[WORKSPACE_PATH]}"
            findings.append(Finding(WORKSPACE_PATH, 1, message, "unsafe-path"))
        elif WORKSPACE_PATH in scan.tracked and WORKSPACE_PATH not in files:
            files[WORKSPACE_PATH] = (root / WORKSPACE_PATH).read_bytes()
    findings += reference_findings(files, registry, images, prod_digests, PROD_DIGESTS_PATH, graph)
    if presubmit is not None:
        at_ref = prod_digests_at(root, presubmit.ref, registry)
        changed = [image for image in presubmit.changed if image in images]
        findings += repin_findings(changed, prod_digests, at_ref, presubmit.ref)
    if report is not None:
        report.findings = findings
    agree = f"the graph, the Dockerfiles, the references and {PROD_DIGESTS_PATH} agree."
    return print_findings(console, findings, f"Checked {len(images)}", images, "", agree)


def print_findings(
    console: Console, findings: Sequence[Finding], what: str, images: Sequence[str], where: str, agree: str
) -> int:
    """Prints each finding, then one summary line (`WHAT images[WHERE]: N problems found.`
    or `WHAT images: AGREE`); returns 1 if there was any finding."""
    for finding in findings:
        console.line(str(finding))
    noun = "image" if len(images) == 1 else "images"
    if findings:
        plural = "s" if len(findings) != 1 else ""
        console.line(f"{what} {noun}{where}: {len(findings)} problem{plural} found.")
        return 1
    console.line(f"{what} {noun}: {agree}")
    return 0


def dockerfile_check(
    root: Path, registry: str, images: Sequence[str], graph: Mapping[str, Sequence[str]]
) -> list[Finding]:
    findings: list[Finding] = []
    cache: dict[str, str] = {}
    for image in images:
        path = f"{DOCKER_DIR}/{image}/Dockerfile"
        problem = path_problem(root, path, cache)
        if problem:
            findings.append(Finding(path, 1, f"not checked: {problem}", "unsafe-path"))
            continue
        data = (root / path).read_bytes() if (root / path).is_file() else None
        findings += dockerfile_findings(image, path, data, graph, registry)
    return findings


def prod_digests_check(
    root: Path, registry: str, graph: Mapping[str, Sequence[str]], scan: TreeScan
) -> tuple[dict[str, str], list[Finding]]:
    """The digests prod_digests.txt pins, and what is wrong with it (missing, unreadable, bad lines)."""
    if PROD_DIGESTS_PATH in scan.problems:
        message = f"cannot be read: {scan.problems[PROD_DIGESTS_PATH]}"
        return {}, [Finding(PROD_DIGESTS_PATH, 1, message, "unsafe-path")]
    if not (root / PROD_DIGESTS_PATH).is_file():
        message = "missing: it must list REGISTRY/NAME@sha256:<digest> for every image CI uses"
        return {}, [Finding(PROD_DIGESTS_PATH, 1, message, "missing")]
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
        epilog="See README.md for the workflows.",
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
    steps.add_argument(
        "--cache_from_pinned",
        "--cache-from-pinned",
        action="store_true",
        help="With --build: pull the image prod_digests.txt pins (REGISTRY/NAME@DIGEST) and build with "
        "--cache-from it, so a machine that never built the images reproduces their digests.",
    )
    steps.add_argument(
        "--verify_pinned",
        "--verify-pinned",
        action="store_true",
        help="With --build: after each build, compare the image with the one prod_digests.txt pins and "
        "fail, before any push, if they differ. Alone: check that the registry serves every pinned "
        "digest and that REGISTRY/NAME:TAG is it; exit 1 on any drift.",
    )
    steps.add_argument(
        "--update_references",
        "--update-references",
        action="store_true",
        help="Point every REGISTRY/NAME@sha256:... in the files git tracks at the "
        "image's repository digest (and, for rbe-toolchain, the rbe_autoconfig "
        "rule in WORKSPACE); add the image to prod_digests.txt if missing.",
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
        help="Publish each image's pinned digest (from prod_digests.txt) under --tag: docker pull by "
        "digest, docker tag, docker push, then confirm the registry serves that digest under the tag.",
    )
    modes.add_argument(
        "--check",
        action="store_true",
        help="Report, as PATH:LINE: MESSAGE, every disagreement between the graph, "
        "the Dockerfiles' registry parents, the digest references and "
        "prod_digests.txt; exit 1 if there is any. Needs no Docker; changes nothing.",
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
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="Process up to N images at a time, each once all its parents in the "
        "run are done (default 1: one after another, in the original order).",
    )
    parser.add_argument(
        "--keep_going",
        "--keep-going",
        "-k",
        action="store_true",
        help="After a failure, go on with the images that do not depend on the "
        "failed one (by default nothing new starts after the first failure).",
    )
    parser.add_argument(
        "--dry_run",
        "--dry-run",
        "-n",
        action="store_true",
        help="Print the commands and file changes without running or making them.",
    )
    parser.add_argument(
        "--registry",
        default=DEFAULT_REGISTRY,
        help=f"Registry and path the images live under. Defaults to {DEFAULT_REGISTRY}.",
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


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, graph: Mapping[str, Sequence[str]]
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.images and args.changed_since is None:
        parser.error("the following arguments are required: --images/--image")
    args.images = args.images or []
    for image in args.images:
        if image != "all" and image not in graph:
            parser.error(f"Expected --image to be one of:\n  {images_help(graph)}\nbut got `{image}`.")
    args.images = expand_selection(args.images, graph)
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
    if not REGISTRY_RE.match(args.registry):
        parser.error(
            f"--registry {args.registry!r} is not a valid registry: use "
            "HOST[:PORT]/PATH with a lowercase path, e.g. gcr.io/iree-oss"
        )
    longest = image_url(args.registry, max(graph, key=len))
    if len(longest) > MAX_REFERENCE_NAME:
        parser.error(
            f"--registry is too long: {longest!r} has {len(longest)} characters and Docker "
            f"accepts at most {MAX_REFERENCE_NAME} in a repository name"
        )
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")


def _check_modes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    steps = Steps(args.pull, args.build, args.push, args.update_references)
    step_flags = [f"--{name}" for name in steps.names()]
    for flag, on in (
        ("--cache_from_pinned", args.cache_from_pinned),
        ("--verify_pinned", args.verify_pinned),
    ):
        if on and step_flags and not args.build:
            parser.error(f"{flag} goes with --build (or, for --verify_pinned, with no step at all)")
    if args.cache_from_pinned and not args.build:
        parser.error("--cache_from_pinned goes with --build: it changes how images are built")
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
) -> int:
    """Runs the mode the arguments ask for."""
    steps = Steps(
        args.pull, args.build, args.push, args.update_references, args.cache_from_pinned, args.verify_pinned
    )
    report.head.update(
        mode=mode_of(args, steps),
        registry=args.registry,
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
    settings = Settings(args.registry, args.tag, args.dry_run, root)
    if args.check:
        return check(settings.root, settings.registry, images, graph, console, presubmit, report)
    if args.verify_pinned and not steps.any():
        return verify_registry(settings, images, console, report)
    runner = Runner(settings, console, report, args.jobs > 1, output_of(args, console, settings))
    schedule = Schedule(args.jobs, args.keep_going)
    if args.promote:
        return promote(runner, images, graph, schedule)
    if args.only_references:
        return only_references(runner, images, graph, schedule, command)
    return run_steps(runner, images, graph, steps, schedule, command)


def main(argv: Sequence[str] | None = None) -> int:
    graph = IMAGES_TO_DEPENDENCIES
    try:
        validate_graph(graph)
    except ManageImagesError as error:
        print(error, file=sys.stderr)
        return 1
    args = parse_arguments(build_parser(graph), argv, graph)
    arguments = list(sys.argv[1:] if argv is None else argv)
    report = Report(arguments)
    # With --json -, standard output carries the document alone.
    console = Console(sys.stderr if args.json == "-" else sys.stdout)
    try:
        code = dispatch(args, graph, " ".join(["manage_images.py", *arguments]), report, console)
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # a bug or an unforeseen OS error too: one line, never a traceback
        sys.stdout.flush()
        message = str(error) if isinstance(error, ManageImagesError) else unexpected(error)
        if isinstance(error, UsageError):
            message = f"manage_images.py: error: {message}"
        print(shown(message), file=sys.stderr)
        report.error = message
        code = error.returncode if isinstance(error, ManageImagesError) else 1
    if args.json:
        try:
            write_report(args.json, report.document(code))
        except ManageImagesError as error:
            print(shown(str(error)), file=sys.stderr)
            return code or 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
