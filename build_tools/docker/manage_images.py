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
  python3 build_tools/docker/manage_images.py --image cmake \\
      --build --push --update_references

Show what that would do without doing it:
  python3 build_tools/docker/manage_images.py --image cmake \\
      --build --push --update_references --dry-run

Rebuild everything after a change to base, four images at a time:
  python3 build_tools/docker/manage_images.py --images all \\
      --build --push --update_references -j 4

Check, without Docker, that the graph, the Dockerfiles, the references and
prod_digests.txt agree (for CI):
  python3 build_tools/docker/manage_images.py --check --images all

See README.md for the workflows.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import difflib
import graphlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TextIO

DEFAULT_REGISTRY = "gcr.io/iree-oss"
DEFAULT_TAG = "latest"
DOCKER_DIR = "build_tools/docker"
PROD_DIGESTS_PATH = f"{DOCKER_DIR}/prod_digests.txt"
WORKSPACE_PATH = "WORKSPACE"
RBE_IMAGE = "rbe-toolchain"

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

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
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
_REFERENCE_LEFT_BOUNDARY = rb"(?:(?<=//)|(?<![A-Za-z0-9._/-]))"
_REFERENCE_RIGHT_BOUNDARY = rb"(?![A-Za-z0-9])"
_RBE_RULE_START_RE = re.compile(rb"\brbe_autoconfig\s*\(")
_RULE_STRING_FIELD_RE = re.compile(rb'\b([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"\\\n]*)"')


class ManageImagesError(Exception):
    """A failure the user can act on; `main` prints it as one line."""


class CommandError(ManageImagesError):
    """A command exited non-zero; its exit code becomes ours."""

    def __init__(self, argv: Sequence[str], returncode: int, hint: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        super().__init__(
            f"Command failed with exit code {returncode}: `{format_command(argv)}`"
            + (f" ({hint})" if hint else "")
        )


# ---------------------------------------------------------------------------
# The graph: validation, closure and order.


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


def reference_pattern(registry: str, image: str) -> re.Pattern[bytes]:
    """Matches `<registry>/<image>@sha256:<64 lowercase hex>` as a whole token.

    Group 1 is everything up to and including `sha256:`, group 2 the hex.
    """
    prefix = re.escape(f"{image_url(registry, image)}@sha256:".encode())
    return re.compile(
        _REFERENCE_LEFT_BOUNDARY + b"(" + prefix + b")([0-9a-f]{64})" + _REFERENCE_RIGHT_BOUNDARY
    )


def rewrite_references(data: bytes, registry: str, image: str, digest: str) -> bytes:
    """Points every well-formed reference to `image` in `data` at `digest`."""
    check_digest(digest, f"{image_url(registry, image)}")
    new_hex = digest.split(":", 1)[1].encode()
    return reference_pattern(registry, image).sub(lambda m: m.group(1) + new_hex, data)


def line_at(data: bytes, offset: int) -> int:
    """The 1-based line number of byte `offset` in `data`."""
    return data.count(b"\n", 0, offset) + 1


def check_digest(digest: str, what: str) -> str:
    if not DIGEST_RE.match(digest):
        raise ManageImagesError(
            f"refusing the digest {digest!r} for {what}: expected sha256: and 64 "
            "lowercase hex digits; no file was changed"
        )
    return digest


@dataclass(frozen=True)
class RbeRule:
    """An `rbe_autoconfig(...)` call in WORKSPACE and its string fields."""

    line: int
    fields: Mapping[str, str]
    digest_span: tuple[int, int] | None  # byte span of the `digest` value

    def names(self, url: str) -> bool:
        registry = self.fields.get("registry", "")
        repository = self.fields.get("repository", "")
        return f"{registry}/{repository}" == url


def _rule_body_end(data: bytes, start: int) -> int:
    """Index just past the `)` closing the call whose `(` is at `start - 1`."""
    depth, index, quote = 1, start, b""
    while index < len(data):
        char = data[index : index + 1]
        if quote:
            if char == b"\\":
                index += 1
            elif char == quote:
                quote = b""
        elif char in (b'"', b"'"):
            quote = char
        elif char == b"#":
            newline = data.find(b"\n", index)
            index = len(data) if newline < 0 else newline
        elif char in (b"(", b"[", b"{"):
            depth += 1
        elif char in (b")", b"]", b"}"):
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return len(data)


def parse_rbe_rules(data: bytes) -> list[RbeRule]:
    """Every `rbe_autoconfig(...)` rule in a WORKSPACE file."""
    rules = []
    for start in _RBE_RULE_START_RE.finditer(data):
        body_start = start.end()
        body_end = _rule_body_end(data, body_start)
        fields: dict[str, str] = {}
        digest_span = None
        for match in _RULE_STRING_FIELD_RE.finditer(data, body_start, body_end):
            name = match.group(1).decode("ascii")
            fields.setdefault(name, match.group(2).decode("utf-8", "replace"))
            if name == "digest" and digest_span is None:
                digest_span = match.span(2)
        rules.append(RbeRule(line_at(data, start.start()), fields, digest_span))
    return rules


def rewrite_workspace(data: bytes, url: str, digest: str) -> tuple[bytes, int]:
    """Sets the `digest` of each rbe_autoconfig rule that names `url`.

    Returns the new bytes and how many rules named `url`. Other rules and any
    other `digest = ...` (e.g. `base_container_digest`) are left alone.
    """
    check_digest(digest, url)
    rules = [rule for rule in parse_rbe_rules(data) if rule.names(url) and rule.digest_span]
    for rule in sorted(rules, key=lambda rule: rule.digest_span, reverse=True):
        begin, end = rule.digest_span
        data = data[:begin] + digest.encode() + data[end:]
    return data, len(rules)


@dataclass(frozen=True)
class ProdDigest:
    line: int
    url: str
    digest: str


def parse_prod_digests(data: bytes, path: str = PROD_DIGESTS_PATH) -> list[ProdDigest]:
    """The entries of prod_digests.txt; a malformed line is an error naming path:line."""
    entries = []
    for number, raw in enumerate(data.splitlines(), start=1):
        text = raw.decode("utf-8", "replace").strip()
        url, at, digest = text.partition("@")
        if not at or not DIGEST_RE.match(digest) or not url:
            raise ManageImagesError(
                f"{path}:{number}: malformed line {text!r}: expected "
                "REGISTRY/NAME@sha256:<64 lowercase hex>; fix it and run again"
            )
        entries.append(ProdDigest(number, url, digest))
    return entries


def append_prod_digest(data: bytes, url: str, digest: str) -> bytes:
    """`data` with `url@digest` as a new last line, keeping the file's line ends."""
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    if data and not data.endswith(b"\n"):
        data += newline
    return data + f"{url}@{digest}".encode() + newline


def unified_diff(path: str, old: bytes, new: bytes) -> str:
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
# Checks: Dockerfile parents, references and prod_digests.txt against the graph.


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class ParentRef:
    """An image a Dockerfile takes from the registry."""

    line: int
    instruction: str  # FROM, COPY --from or RUN --mount
    ref: str  # as written
    image: str
    digest: str  # what follows `@`, or "" when the parent is not pinned


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


def registry_parents(data: bytes, registry: str) -> list[ParentRef]:
    """The images a Dockerfile pulls from `registry` (FROM, COPY --from, RUN --mount from=)."""
    stages: set[str] = set()
    parents: list[ParentRef] = []

    def consider(line: int, instruction: str, source: str) -> None:
        if source.lower() in stages or source.isdigit() or not source.startswith(f"{registry}/"):
            return
        name, _, digest = source[len(registry) + 1 :].partition("@")
        parents.append(ParentRef(line, instruction, source, name.split(":", 1)[0], digest))

    for line, text in dockerfile_instructions(data):
        keyword, *words = text.split()
        keyword = keyword.upper()
        if keyword == "FROM":
            arguments = [word for word in words if not word.startswith("--")]
            if arguments:
                consider(line, "FROM", arguments[0])
            if len(arguments) >= 3 and arguments[1].lower() == "as":
                stages.add(arguments[2].lower())
        elif keyword in ("COPY", "ADD"):
            for word in words:
                if word.startswith("--from="):
                    consider(line, "COPY --from", word[len("--from=") :])
        elif keyword == "RUN":
            for word in words:
                if word.startswith("--mount="):
                    for option in word[len("--mount=") :].split(","):
                        if option.startswith("from="):
                            consider(line, "RUN --mount", option[len("from=") :])
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


_ANY_REFERENCE_NAME = rb"([a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)"


def any_reference_pattern(registry: str) -> re.Pattern[bytes]:
    """`<registry>/NAME@sha256:X` for any NAME and any run of letters and digits X.

    An empty X (`@sha256:...`, `@sha256:<digest>`) is a placeholder in prose,
    not a reference.
    """
    return re.compile(
        _REFERENCE_LEFT_BOUNDARY
        + re.escape(f"{registry}/".encode())
        + _ANY_REFERENCE_NAME
        + rb"@sha256:([0-9A-Za-z]+)"
    )


def prod_digest_findings(
    data: bytes, path: str, registry: str, graph: Mapping[str, Sequence[str]]
) -> tuple[dict[str, str], list[Finding]]:
    """The digest of each image listed in prod_digests.txt, and what is wrong with it."""
    digests: dict[str, str] = {}
    first_line: dict[str, int] = {}
    findings = []
    for number, raw in enumerate(data.splitlines(), start=1):
        text = raw.decode("utf-8", "replace").strip()
        url, _, digest = text.partition("@")
        name = url[len(registry) + 1 :] if url.startswith(f"{registry}/") else ""
        if not DIGEST_RE.match(digest) or not url:
            findings.append(
                Finding(
                    path,
                    number,
                    f"malformed line {text!r}: expected {registry}/NAME@sha256:<64 lowercase hex>",
                )
            )
        elif name not in graph:
            findings.append(Finding(path, number, f"{url} is not an image of the graph under {registry}"))
        elif name in digests:
            findings.append(
                Finding(path, number, f"duplicate line for {name} (first on line {first_line[name]})")
            )
        else:
            digests[name] = digest
            first_line[name] = number
    return digests, findings


def reference_findings(
    files: Mapping[str, bytes],
    registry: str,
    images: Iterable[str],
    prod_digests: Mapping[str, str],
    prod_path: str,
    graph: Mapping[str, Sequence[str]],
) -> list[Finding]:
    """References (and the WORKSPACE rule) that disagree with prod_digests.txt."""
    selected = set(images)
    everything = selected == set(graph)
    findings = []
    pattern = any_reference_pattern(registry)
    for path in sorted(files):
        data = files[path]
        if path == prod_path:
            continue
        for match in pattern.finditer(data):
            name, hexdigits = match.group(1).decode(), match.group(2).decode()
            if name not in selected and not (everything and name not in graph):
                continue
            line = line_at(data, match.start())
            ref = f"{registry}/{name}@sha256:{hexdigits}"
            if not re.fullmatch("[0-9a-f]{64}", hexdigits):
                findings.append(
                    Finding(
                        path, line, f"{ref} is not a well-formed digest (sha256: and 64 lowercase hex digits)"
                    )
                )
            elif name not in prod_digests:
                findings.append(
                    Finding(path, line, f"{registry}/{name} is referenced but not listed in {prod_path}")
                )
            elif prod_digests[name] != f"sha256:{hexdigits}":
                findings.append(
                    Finding(
                        path,
                        line,
                        f"{registry}/{name} is pinned to sha256:{hexdigits[:12]}, but {prod_path} "
                        f"says {prod_digests[name][:19]}",
                    )
                )
        if path == WORKSPACE_PATH and RBE_IMAGE in selected:
            for rule in parse_rbe_rules(data):
                if not rule.names(image_url(registry, RBE_IMAGE)) or not rule.digest_span:
                    continue
                digest = rule.fields["digest"]
                line = line_at(data, rule.digest_span[0])
                if RBE_IMAGE not in prod_digests:
                    findings.append(
                        Finding(
                            path,
                            line,
                            f"rbe_autoconfig pins {registry}/{RBE_IMAGE}, which is not listed in {prod_path}",
                        )
                    )
                elif digest != prod_digests[RBE_IMAGE]:
                    findings.append(
                        Finding(
                            path,
                            line,
                            f"rbe_autoconfig digest {digest[:19]} differs from {prod_path} "
                            f"({prod_digests[RBE_IMAGE][:19]})",
                        )
                    )
    return findings


# ---------------------------------------------------------------------------
# Views of the graph.


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
    children: dict[str, list[str]] = {image: [] for image in images}
    for parent, child in edges:
        children[parent].append(child)
    roots = [image for image in images if not any(child == image for _, child in edges)]
    lines: list[str] = []
    shown: set[str] = set()

    def show(image: str, depth: int) -> None:
        parents = [parent for parent, child in edges if child == image]
        also = f" (from {', '.join(parents)})" if len(parents) > 1 else ""
        if image in shown:
            lines.append(f"{'  ' * depth}{image}{also} (see above)")
            return
        shown.add(image)
        lines.append(f"{'  ' * depth}{image}{also}")
        for child in sorted(children[image]):
            show(child, depth + 1)

    for root in sorted(roots):
        show(root, 0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Commands: pure argv builders.


def format_command(argv: Sequence[str]) -> str:
    return " ".join(argv)


def pull_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "pull", f"{url}:{tag}")


def build_argv(url: str, tag: str, context: str) -> tuple[str, ...]:
    return ("docker", "build", "--tag", f"{url}:{tag}", context)


def push_argv(url: str, tag: str) -> tuple[str, ...]:
    return ("docker", "push", f"{url}:{tag}")


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


_UNREACHABLE_RE = re.compile(
    r"connection refused|no such host|i/o timeout|network is unreachable|"
    r"server gave HTTP response to HTTPS client|connection reset|broken pipe",
    re.I,
)
_REFUSED_RE = re.compile(
    r"unauthorized|authentication required|denied|forbidden|no basic auth credentials", re.I
)
_NO_ENGINE_RE = re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running", re.I)


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
# The thin layer that runs docker and git.


class Console:
    """Prints whole lines, never interleaved, from any thread."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        # Reentrant: a signal handler may print while the main thread prints.
        self._lock = threading.RLock()

    def line(self, text: str = "", prefix: str = "") -> None:
        with self._lock:
            for part in text.split("\n") if text else [""]:
                self._out.write(f"{prefix}{part}\n")
            self._out.flush()


@dataclass
class Context:
    """Everything a run needs, passed explicitly."""

    registry: str
    tag: str
    dry_run: bool
    console: Console
    root: Path | None = None
    env: Mapping[str, str] | None = None
    prefix_output: bool = False
    processes: set[subprocess.Popen[bytes]] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    stopping: bool = False
    candidates: list[str] | None = None  # see candidate_files

    def say(self, text: str, image: str = "") -> None:
        """Prints a line, prefixed with `[IMAGE] ` when images run in parallel."""
        self.console.line(text, f"[{image}] " if self.prefix_output and image else "")

    def stop_processes(self) -> None:
        """Terminates every running command; no new one starts after this."""
        with self.lock:
            self.stopping = True
            for process in self.processes:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _missing_tool(name: str) -> ManageImagesError:
    hints = {
        "docker": "install Docker (https://docs.docker.com/engine/install/) and try again",
        "git": "install git and try again",
    }
    return ManageImagesError(f"`{name}` not found on PATH: {hints.get(name, 'install it')}")


def run(ctx: Context, argv: Sequence[str], image: str = "", interactive: bool = False) -> None:
    """Runs a side-effecting command, streaming its merged output line by line.

    In a dry run the command is only printed. Each command gets a session of
    its own, so a Ctrl-C reaches this tool alone, which then stops it; an
    `interactive` one (gcloud may ask a question) keeps the terminal instead.
    """
    ctx.say(f"Running: `{format_command(argv)}`", image)
    if ctx.dry_run:
        return
    with ctx.lock:
        if ctx.stopping:
            raise ManageImagesError(f"interrupted before running `{format_command(argv)}`")
        try:
            process = subprocess.Popen(
                argv,
                cwd=ctx.root,
                env=ctx.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=None if interactive else subprocess.DEVNULL,
                start_new_session=not interactive,
            )
        except FileNotFoundError:
            raise _missing_tool(argv[0]) from None
        if not interactive:  # it shares our process group: never killpg it
            ctx.processes.add(process)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            ctx.say(line, image)
        returncode = process.wait()
    finally:
        with ctx.lock:
            ctx.processes.discard(process)
    if returncode != 0:
        raise CommandError(argv, returncode, diagnose(argv, tail, ctx.registry))


def capture(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a read-only command (also in a dry run) and returns its output."""
    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
        )
    except FileNotFoundError:
        raise _missing_tool(argv[0]) from None


def find_repo_root(start: Path) -> Path:
    """The top of the git work tree holding `start`."""
    result = capture(("git", "-C", str(start), "rev-parse", "--show-toplevel"))
    if result.returncode != 0:
        raise ManageImagesError(
            f"{start} is not inside a git work tree: run from the repository or pass --repo_root"
        )
    return Path(result.stdout.strip())


def grep_tracked_files(root: Path, text: str) -> list[str]:
    """Tracked, non-binary files under `root` that contain `text` literally."""
    result = capture(("git", "-C", str(root), "grep", "-l", "-z", "-I", "-F", "-e", text, "--"))
    if result.returncode == 1:
        return []
    if result.returncode != 0:
        raise ManageImagesError(f"`git grep` failed in {root}: {result.stderr.strip()}")
    return [path for path in result.stdout.split("\0") if path]


def files_naming(root: Path, text: str) -> list[str]:
    """Tracked, non-binary regular files (symlinks left out) that contain `text`."""
    return [
        path
        for path in grep_tracked_files(root, text)
        if (root / path).is_file() and not (root / path).is_symlink()
    ]


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` in one rename, keeping its mode.

    A reader (or a crash) sees the old or the new content, never a mix.
    """
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def unwritable_reason(path: Path) -> str | None:
    """Why `path` must not be replaced, or None.

    A file without any write bit is taken as read-only even for root, who could
    otherwise replace it; an immutable file or a read-only folder fails access().
    """
    if path.exists():
        if path.stat().st_mode & 0o222 == 0 or not os.access(path, os.W_OK):
            return "it is read-only"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"its folder {path.parent} is not writable"
    return None


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the repository root
    old: bytes
    new: bytes


class Edits:
    """File changes gathered for one image, applied together once all are known."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._contents: dict[str, tuple[bytes, bytes]] = {}

    def read(self, relative: str) -> bytes:
        if relative in self._contents:
            return self._contents[relative][1]
        path = self.root / relative
        return path.read_bytes() if path.is_file() else b""

    def edit(self, relative: str, transform) -> None:
        if (self.root / relative).is_symlink():
            return
        old = self._contents.get(relative, (self.read(relative),))[0]
        self._contents[relative] = (old, transform(self.read(relative)))

    def containing(self, text: bytes) -> list[str]:
        """Files with a pending edit whose new content holds `text`."""
        return [path for path, (_, new) in self._contents.items() if text in new]

    def changes(self) -> list[FileChange]:
        return [FileChange(path, old, new) for path, (old, new) in self._contents.items() if old != new]


def apply_changes(ctx: Context, changes: Sequence[FileChange]) -> None:
    """Writes every change atomically, or shows it as a diff in a dry run.

    Every file is checked first, so an unwritable one leaves all of them as
    they were.
    """
    assert ctx.root is not None
    if ctx.dry_run:
        for change in changes:
            ctx.console.line(unified_diff(change.path, change.old, change.new).rstrip("\n"))
        return
    for change in changes:
        reason = unwritable_reason(ctx.root / change.path)
        if reason:
            raise ManageImagesError(
                f"cannot write {change.path}: {reason}; make it writable and run again "
                "(no file was changed for this image)"
            )
    for change in changes:
        try:
            write_atomic(ctx.root / change.path, change.new)
        except OSError as error:
            raise ManageImagesError(
                f"cannot write {change.path}: {error.strerror}; make it writable and run again"
            ) from None


def repo_digest(ctx: Context, image: str) -> str | None:
    """The registry digest of REGISTRY/IMAGE:TAG, or None if docker has none."""
    url = image_url(ctx.registry, image)
    try:
        result = capture(inspect_argv(url, ctx.tag), ctx.root, ctx.env)
    except ManageImagesError:
        if ctx.dry_run:
            return None
        raise
    detail = result.stderr.strip() or result.stdout.strip()
    digest = None
    if result.returncode == 0:
        digest = pick_repo_digest(json.loads(result.stdout or "null") or [], url)
        detail = f"RepoDigests {result.stdout.strip()} has no entry for {url}"
    if digest is None:
        if ctx.dry_run:
            return None
        raise ManageImagesError(
            f"Computing the repository digest for {url}:{ctx.tag} failed. "
            f"Has it been pushed to {ctx.registry}? docker said: {' '.join(detail.split())}"
        )
    return check_digest(digest, f"{url}:{ctx.tag} (from docker image inspect)")


def candidate_files(ctx: Context) -> list[str]:
    """Tracked text files (not symlinks) that mention the registry at all.

    Found with one `git grep` per run: a rewrite changes digests, never which
    files name an image, so each image then only reads these few files.
    """
    assert ctx.root is not None
    if ctx.candidates is None:
        ctx.candidates = files_naming(ctx.root, f"{ctx.registry}/")
    return ctx.candidates


def update_references(ctx: Context, image: str, digest: str | None) -> None:
    """Points every reference to IMAGE in the tracked files at `digest`.

    `digest` is None only in a dry run that cannot know it yet: then the files
    are listed but no diff is shown.
    """
    assert ctx.root is not None
    url = image_url(ctx.registry, image)
    edits = Edits(ctx.root)
    if digest is not None:
        prod_digests = edits.read(PROD_DIGESTS_PATH)
        if not any(entry.url == url for entry in parse_prod_digests(prod_digests)):
            ctx.say(f"Adding new image {url}@{digest} to {PROD_DIGESTS_PATH}", image)
            edits.edit(PROD_DIGESTS_PATH, lambda data: append_prod_digest(data, url, digest))
    if image == RBE_IMAGE:
        ctx.say(f"Updating WORKSPACE file for {RBE_IMAGE}", image)
        rules = [rule for rule in parse_rbe_rules(edits.read(WORKSPACE_PATH)) if rule.names(url)]
        if not rules:
            ctx.say(f"{WORKSPACE_PATH} has no rbe_autoconfig rule for {url}", image)
        elif digest is not None:
            edits.edit(WORKSPACE_PATH, lambda data: rewrite_workspace(data, url, digest)[0])
    ctx.say(f"Updating references to {url}", image)
    needle = f"{url}@sha256:".encode()
    files = [path for path in candidate_files(ctx) if needle in edits.read(path)]
    files += [path for path in edits.containing(needle) if path not in files]
    if not files:
        ctx.say(f"Found no references to {url}", image)
    else:
        ctx.say(f"Updating references in {len(files)} files: {files}", image)
        if digest is not None:
            for path in files:
                edits.edit(path, lambda data: rewrite_references(data, ctx.registry, image, digest))
    apply_changes(ctx, edits.changes())


def check_docker(ctx: Context) -> None:
    """Fails early, with a clear message, when docker or its engine is missing."""
    if shutil.which("docker", path=(ctx.env or os.environ).get("PATH")) is None:
        raise _missing_tool("docker")
    result = capture(("docker", "version", "--format", "{{.Server.Version}}"), ctx.root, ctx.env)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())
        raise ManageImagesError(
            "cannot reach the Docker engine: start it (e.g. `sudo systemctl start "
            f"docker`) or point DOCKER_HOST at one; docker said: {said}"
        )


def check_gcloud(ctx: Context) -> None:
    if shutil.which("gcloud", path=(ctx.env or os.environ).get("PATH")) is None:
        raise ManageImagesError(
            "gcloud not found. See https://cloud.google.com/sdk/install for installation."
        )
    run(ctx, gcloud_argv(ctx.registry), interactive=True)


# ---------------------------------------------------------------------------
# Actions.


@dataclass(frozen=True)
class Steps:
    pull: bool = False
    build: bool = False
    push: bool = False
    update_references: bool = False

    def any(self) -> bool:
        return self.pull or self.build or self.push or self.update_references

    def names(self) -> list[str]:
        return [name for name in ("pull", "build", "push", "update_references") if getattr(self, name)]


def docker_steps(ctx: Context, image: str, steps: Steps) -> str | None:
    """Pull, build and push one image; returns its repository digest when
    references are to be updated and the digest can be known."""
    url = image_url(ctx.registry, image)
    if steps.pull:
        run(ctx, pull_argv(url, ctx.tag), image)
    if steps.build:
        run(ctx, build_argv(url, ctx.tag, f"{DOCKER_DIR}/{image}"), image)
    if steps.push:
        run(ctx, push_argv(url, ctx.tag), image)
    if not steps.update_references:
        return None
    if ctx.dry_run and (steps.build or steps.push):
        ctx.say(
            f"Dry run: the digest of {url}:{ctx.tag} is only known after it is "
            "built and pushed; listing the files that would be updated",
            image,
        )
        return None
    digest = repo_digest(ctx, image)
    if digest is None:
        ctx.say(
            f"Dry run: {url}:{ctx.tag} has no repository digest on this machine "
            "(not pushed or pulled yet), so the new digest is unknown; listing "
            "the files that would be updated",
            image,
        )
    return digest


@dataclass(frozen=True)
class ImageResult:
    image: str
    result: str  # done, failed, skipped (a dependency failed), not started
    seconds: float = 0.0
    digest: str | None = None
    error: ManageImagesError | None = None
    finished: int = 0  # completion rank, to find the first failure


def run_graph(
    order: Sequence[str],
    graph: Mapping[str, Sequence[str]],
    jobs: int,
    keep_going: bool,
    work,
    finish,
    stopped=lambda: False,
    on_start=lambda image, number: None,
    clock=None,
) -> dict[str, ImageResult]:
    """Processes `order` so that each image starts once every dependency of it
    in the run has finished.

    `work(image)` runs in one of `jobs` worker threads (the docker commands);
    `finish(image, value)` runs here, in the calling thread, with what `work`
    returned (the reference rewrites), before any dependent starts, so file
    edits never overlap. Among the ready images the earliest in `order` starts
    first, so `jobs=1` follows `order` exactly. After the first failure no new
    image starts unless `keep_going`; then only the dependents of a failed
    image are skipped. `stopped()` true (an interruption) also starts nothing new.
    """
    clock = clock or time.monotonic
    in_run = set(order)
    parents = {image: [parent for parent in graph[image] if parent in in_run] for image in order}
    results: dict[str, ImageResult] = {}
    started: dict[str, float] = {}
    running: dict[concurrent.futures.Future, str] = {}
    failed = False

    def blocked(image: str) -> bool:
        return any(
            results.get(parent, ImageResult(parent, "")).result in ("failed", "skipped")
            for parent in parents[image]
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            accepting = not stopped() and (keep_going or not failed)
            for image in order:
                if image in results or image in started:
                    continue
                if blocked(image):
                    results[image] = ImageResult(image, "skipped")
                    continue
                if not accepting or len(running) >= jobs:
                    continue
                if all(
                    results.get(parent, ImageResult(parent, "")).result == "done" for parent in parents[image]
                ):
                    started[image] = clock()
                    on_start(image, len(started))
                    running[pool.submit(work, image)] = image
            if not running:
                break
            done, _ = concurrent.futures.wait(
                running, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in sorted(done, key=lambda future: order.index(running[future])):
                image = running.pop(future)
                try:
                    value = future.result()
                    digest = finish(image, value)
                    results[image] = ImageResult(
                        image, "done", clock() - started[image], digest, finished=len(results)
                    )
                except ManageImagesError as error:
                    failed = True
                    results[image] = ImageResult(
                        image, "failed", clock() - started[image], error=error, finished=len(results)
                    )
    for image in order:
        results.setdefault(image, ImageResult(image, "skipped" if blocked(image) else "not started"))
    return {image: results[image] for image in order}


def format_summary(
    results: Mapping[str, ImageResult], steps: Sequence[str], wall: float, dry_run: bool = False
) -> str:
    """One line per image: result, short digest, seconds, steps; then the wall time.

    In a dry run an image that went through is `planned`, never `done`.
    """
    width = max([len(image) for image in results] + [5])
    step_text = ", ".join(steps) or "-"
    label = {"done": "planned"} if dry_run else {}
    lines = [
        "Summary (dry run: nothing was run or changed):" if dry_run else "Summary:",
        f"  {'image':<{width}}  {'result':<11}  {'digest':<19}  {'seconds':>8}  steps",
    ]
    counts: dict[str, int] = {}
    for item in results.values():
        result = label.get(item.result, item.result)
        counts[result] = counts.get(result, 0) + 1
        digest = item.digest[:19] if item.digest else "-"
        seconds = f"{item.seconds:7.1f}s" if item.result in ("done", "failed") else "       -"
        lines.append(f"  {item.image:<{width}}  {result:<11}  {digest:<19}  {seconds}  {step_text}")
    tally = ", ".join(f"{count} {result}" for result, count in counts.items())
    lines.append(f"Total wall time: {wall:.1f}s ({tally})")
    return "\n".join(lines)


def check(
    root: Path, registry: str, images: Sequence[str], graph: Mapping[str, Sequence[str]], console: Console
) -> int:
    """Reports every disagreement between the graph, the Dockerfiles, the
    references and prod_digests.txt; returns 1 if there was any."""
    findings: list[Finding] = []
    for image in images:
        path = f"{DOCKER_DIR}/{image}/Dockerfile"
        data = (root / path).read_bytes() if (root / path).is_file() else None
        findings += dockerfile_findings(image, path, data, graph, registry)
    prod_path = root / PROD_DIGESTS_PATH
    if prod_path.is_file():
        prod_digests, prod_findings = prod_digest_findings(
            prod_path.read_bytes(), PROD_DIGESTS_PATH, registry, graph
        )
        findings += prod_findings
    else:
        prod_digests = {}
        findings.append(
            Finding(
                PROD_DIGESTS_PATH,
                1,
                "missing: it must list REGISTRY/NAME@sha256:<digest> for every image CI uses",
            )
        )
    files = {path: (root / path).read_bytes() for path in files_naming(root, f"{registry}/")}
    if RBE_IMAGE in images and (root / WORKSPACE_PATH).is_file() and WORKSPACE_PATH not in files:
        files[WORKSPACE_PATH] = (root / WORKSPACE_PATH).read_bytes()
    findings += reference_findings(files, registry, images, prod_digests, PROD_DIGESTS_PATH, graph)
    for finding in findings:
        console.line(str(finding))
    noun = "image" if len(images) == 1 else "images"
    if findings:
        console.line(
            f"Checked {len(images)} {noun}: {len(findings)} problem{'s' if len(findings) != 1 else ''} found."
        )
        return 1
    console.line(
        f"Checked {len(images)} {noun}: the graph, the Dockerfiles, the references and {PROD_DIGESTS_PATH} agree."
    )
    return 0


def prod_digests_for(root: Path, registry: str, images: Sequence[str]) -> dict[str, str]:
    """The digest prod_digests.txt lists for each image; an error naming the first one missing."""
    path = root / PROD_DIGESTS_PATH
    listed = (
        {entry.url: entry.digest for entry in parse_prod_digests(path.read_bytes())} if path.is_file() else {}
    )
    for image in images:
        if image_url(registry, image) not in listed:
            raise ManageImagesError(
                f"cannot update the references to {image}: {PROD_DIGESTS_PATH} has no line for "
                f"{image_url(registry, image)}; push it with --update_references first or add the line"
            )
    return {image: listed[image_url(registry, image)] for image in images}


def preflight(ctx: Context, images: Sequence[str], steps: Steps) -> None:
    """Checks everything that can be checked before the first side effect."""
    assert ctx.root is not None or not (steps.build or steps.update_references)
    if steps.build:
        for image in images:
            dockerfile = ctx.root / DOCKER_DIR / image / "Dockerfile"
            if not dockerfile.is_file():
                raise ManageImagesError(
                    f"{DOCKER_DIR}/{image}/Dockerfile not found: the build context of "
                    f"{image} needs one; add it or fix IMAGES_TO_DEPENDENCIES"
                )
    if steps.update_references:
        path = ctx.root / PROD_DIGESTS_PATH
        if path.exists():
            parse_prod_digests(path.read_bytes())
    if not ctx.dry_run and steps.any():
        check_docker(ctx)


# ---------------------------------------------------------------------------
# Command line.


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
        required=True,
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
    steps = parser.add_argument_group("steps (run for each image, in this order)")
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
        "--update_references",
        "--update-references",
        action="store_true",
        help="Point every REGISTRY/NAME@sha256:... in the files git tracks at the "
        "image's repository digest (and, for rbe-toolchain, the rbe_autoconfig "
        "rule in WORKSPACE); add the image to prod_digests.txt if missing.",
    )
    modes = parser.add_argument_group("other modes (instead of the steps)")
    modes.add_argument(
        "--only_references",
        "--only-references",
        action="store_true",
        help="Point every reference to each image at its digest in "
        "build_tools/docker/prod_digests.txt. Needs no Docker.",
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
        "--repo_root",
        "--repo-root",
        type=Path,
        help="The repository to work on. Defaults to the git work tree holding the current directory.",
    )
    return parser


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, graph: Mapping[str, Sequence[str]]
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for image in args.images:
        if image != "all" and image not in graph:
            parser.error(f"Expected --image to be one of:\n  {images_help(graph)}\nbut got `{image}`.")
    args.images = expand_selection(args.images, graph)
    if not TAG_RE.match(args.tag):
        parser.error(
            f"--tag {args.tag!r} is not a valid Docker tag: use up to 128 letters, "
            "digits, `_`, `.` and `-`, not starting with `.` or `-`"
        )
    args.registry = args.registry.removesuffix("/")
    if not REGISTRY_RE.match(args.registry):
        parser.error(
            f"--registry {args.registry!r} is not a valid registry: use "
            "HOST[:PORT]/PATH with a lowercase path, e.g. gcr.io/iree-oss"
        )
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    step_flags = [
        flag
        for flag, on in (
            ("--pull", args.pull),
            ("--build", args.build),
            ("--push", args.push),
            ("--update_references", args.update_references),
        )
        if on
    ]
    modes = [
        flag
        for flag, on in (
            ("--only_references", args.only_references),
            ("--check", args.check),
            ("--graph", args.graph is not None),
        )
        if on
    ]
    if len(modes) > 1 or (modes and step_flags):
        parser.error(
            f"{' and '.join(modes + step_flags)} cannot be combined: {modes[0]} is a mode of its own"
        )
    return args


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; carries the signal number."""


def main(argv: Sequence[str] | None = None) -> int:
    graph = IMAGES_TO_DEPENDENCIES
    try:
        validate_graph(graph)
    except ManageImagesError as error:
        print(error, file=sys.stderr)
        return 1
    parser = build_parser(graph)
    args = parse_arguments(parser, argv, graph)
    ctx = Context(args.registry, args.tag, args.dry_run, Console(sys.stdout), prefix_output=args.jobs > 1)
    try:
        return execute(ctx, args, graph)
    except KeyboardInterrupt:
        return 130
    except ManageImagesError as error:
        sys.stdout.flush()
        print(error, file=sys.stderr)
        return error.returncode if isinstance(error, CommandError) else 1


def execute(ctx: Context, args: argparse.Namespace, graph: Mapping[str, Sequence[str]]) -> int:
    images = ordered_images_to_process(args.images, graph)
    if args.graph:
        ctx.console.line(render_graph(images, graph, args.graph).rstrip("\n"))
        return 0
    steps = Steps(args.pull, args.build, args.push, args.update_references)
    needs_root = args.check or args.only_references or steps.build or steps.update_references
    if needs_root or args.repo_root is not None:
        ctx.root = find_repo_root(args.repo_root or Path.cwd())
    if args.check:
        return check(ctx.root, ctx.registry, images, graph, ctx.console)
    if args.only_references:
        digests = prod_digests_for(ctx.root, ctx.registry, images)
        work = digests.__getitem__
        steps = Steps(update_references=True)
        step_names = ["only_references"]
    else:
        preflight(ctx, images, steps)
        if steps.push and is_google_registry(ctx.registry):
            check_gcloud(ctx)
        work = lambda image: docker_steps(ctx, image, steps)  # noqa: E731
        step_names = steps.names()
    ctx.console.line(f"Also processing dependent images. Will process: {images}")
    if not steps.any():
        ctx.console.line("No step requested (--pull, --build, --push, --update_references): nothing done.")
        return 0

    def finish(image: str, digest: str | None) -> str | None:
        if steps.update_references:
            update_references(ctx, image, digest)
        return digest

    interrupted: list[int] = []

    def on_signal(number: int, frame) -> None:
        if not interrupted:
            ctx.console.line(f"Interrupted by {signal.Signals(number).name}: stopping the running commands")
        interrupted.append(number)
        ctx.stop_processes()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            handlers[number] = signal.signal(number, on_signal)
    start = time.monotonic()
    try:
        results = run_graph(
            images,
            graph,
            args.jobs,
            args.keep_going,
            work,
            finish,
            stopped=lambda: bool(interrupted),
            on_start=lambda image, number: ctx.say(
                f"Processing image {image} [{number}/{len(images)}]", image
            ),
        )
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    ctx.console.line(format_summary(results, step_names, time.monotonic() - start, ctx.dry_run))
    if interrupted:
        return 128 + interrupted[0]
    failures = sorted((item for item in results.values() if item.error), key=lambda item: item.finished)
    for item in failures[1:]:
        print(f"{item.image}: {item.error}", file=sys.stderr)
    if failures:
        raise failures[0].error
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
