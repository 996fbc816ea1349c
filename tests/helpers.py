"""Helpers the test modules share: constants, small trees, the tool as a
subprocess (in the foreground or the background), and what the registry and
the files hold. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import fake_tree
import manage_images
from registry import Registry

GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
# The original tool's graph (IREE, late 2020), frozen: the tests that pin its exact
# orders and drawings use it, so adding an image to GRAPH changes none of them.
ORIGINAL_GRAPH: dict[str, tuple[str, ...]] = {
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
ALL = sorted(GRAPH)
STEPS = ("--build", "--push", "--update_references")
TESTS = Path(__file__).resolve().parent
# tests/mutation.sh runs the tests on a scratch copy of the module.
SCRIPT = Path(
    os.environ.get("MANAGE_IMAGES_SCRIPT", TESTS.parent / "build_tools" / "docker" / "manage_images.py")
)
# When set (CI always sets CI), a missing engine or registry fails the
# end-to-end tests instead of skipping them.
E2E_REQUIRED = bool(os.environ.get("CI") or os.environ.get("MANAGE_IMAGES_E2E"))


def run_tool(repo: Path, *args: str, registry: Registry | None = None, env=None, timeout=900):
    """Runs manage_images.py as a subprocess from `repo`."""
    argv = [sys.executable, str(SCRIPT)]
    if registry is not None:
        argv += ["--registry", registry.url]
    return subprocess.run(
        argv + list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def fresh_engine() -> Iterator[dict[str, str]]:
    """Another dockerd with its own data, exec root, pid file and socket, and
    nothing in it; yields the environment that points docker at it.

    It shares docker0 and leaves iptables alone: `--bridge=none` would make it
    delete docker0 and break the first engine's RUN steps.
    """
    folder = Path(tempfile.mkdtemp(prefix="mi-engine-", dir="/tmp"))
    socket = folder / "docker.sock"
    log = open(folder / "dockerd.log", "wb")
    process = subprocess.Popen(
        (
            "dockerd",
            "--data-root",
            str(folder / "data"),
            "--exec-root",
            str(folder / "exec"),
            "--pidfile",
            str(folder / "docker.pid"),
            "--host",
            f"unix://{socket}",
            "--iptables=false",
            "--ip-masq=false",
        ),
        stdout=log,
        stderr=log,
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(("docker", "info"), env=env, capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start; see {folder / 'dockerd.log'}")
            time.sleep(0.5)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


class Tool:
    """manage_images.py running in the background; threads read its output, so
    waiting for a line has a deadline that holds even when the tool is silent."""

    def __init__(self, repo: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str], forward: bool) -> None:
        for line in stream:
            lines.append(line)
            if forward:
                self._lines.put(line)
        if forward:
            self._lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 300) -> None:
        """Returns once the tool printed a line holding `needle`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} within {timeout} s:\n{''.join(self.stdout)}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"the tool ended without a line with {needle!r}:\n{''.join(self.stdout)}"
                )
            if needle in line:
                return

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Waits for the tool to end; its exit code, stdout and stderr."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code, "".join(self.stdout), "".join(self.stderr)


# --- Unit-test trees and bytes -------------------------------------------------

REGISTRY = "gcr.io/iree-oss"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "a" * 64
NEW = "sha256:" + "f" * 64


def usage_error(argv: list[str], capsys) -> str:
    """What `main(argv)` prints on stderr, having stopped it as a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        manage_images.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def rewrite(data: bytes, registry: str, digests: dict[str, str]) -> bytes:
    """`data` as the tool rewrites it to point each image of `digests` at its digest: as one
    tracked file whose references the tool's naming index finds (TrackedFiles.naming), patched
    by Edits as --only_references patches it."""
    scan = manage_images.TreeScan(("f",), (), (), frozenset(), {})
    files = manage_images.TrackedFiles(Path("/nonexistent"), scan, registry)
    files.written("f", data)  # what the run holds for the file: never read from disk
    hexes = manage_images.digest_hexes(registry, digests)
    edits = manage_images.Edits(files)
    for path in dict.fromkeys(path for image in digests for path in files.naming(image)):
        edits.patch(path, manage_images.reference_splices(edits.references(path), hexes))
    changes = edits.changes()
    return changes[0].new() if changes else data


def ref(name: str, digest: str = D1, registry: str = REGISTRY) -> bytes:
    return f"{registry}/{name}@{digest}".encode()


WORKSPACE = (
    b'load("@bazel_toolchains//rules:rbe_repo.bzl", "rbe_autoconfig")\n\n'
    b"rbe_autoconfig(\n"
    b'    name = "rbe_default",\n'
    b'    base_container_digest = "' + D2.encode() + b'",\n'
    b'    digest = "' + D1.encode() + b'",  # the toolchain image (not ")")\n'
    b'    registry = "gcr.io",\n'
    b'    repository = "iree-oss/rbe-toolchain",\n'
    b'    env = {"A": "(b"},\n'
    b")\n\n"
    b"container_pull(\n"
    b'    name = "other",\n'
    b'    digest = "' + D3.encode() + b'",\n'
    b")\n"
)


def write(root: Path, relative: str, data: bytes, mode: int | None = None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def small_tree(git_repo: Path) -> Path:
    """A small tracked tree referring to cmake and cmake-python by digest (and an untracked file)."""
    for image in GRAPH:
        write(git_repo, f"build_tools/docker/{image}/Dockerfile", b"FROM scratch\n")
    write(
        git_repo,
        "build_tools/docker/cmake-python/Dockerfile",
        b"FROM " + ref("cmake") + b" AS final\r\nRUN true",
    )
    write(git_repo, "build_tools/docker/prod_digests.txt", ref("cmake") + b"\n" + ref("cmake-python") + b"\n")
    write(
        git_repo,
        "ci/build.sh",
        b"docker run \\\n  " + ref("cmake-python") + b" \\\n  " + ref("cmake") + b"\n",
        0o755,
    )
    write(git_repo, "WORKSPACE", WORKSPACE)
    fake_tree.git(git_repo, "add", "-A")
    fake_tree.git(git_repo, "commit", "-q", "-m", "tree")
    write(git_repo, "untracked.txt", ref("cmake") + b"\n")
    return git_repo


def all_digests(digest: str = NEW, registry: str = REGISTRY) -> dict[str, list[str]]:
    """The stand-in docker's RepoDigests: every image's :latest pushed as `digest`."""
    return {f"{registry}/{image}:latest": [f"{registry}/{image}@{digest}"] for image in GRAPH}


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


# --- What the registry, the engine and the files hold (end-to-end) ------------


def pins(repo: Path, registry: Registry) -> dict[str, str]:
    """image -> the digest prod_digests.txt pins it to."""
    prefix = f"{registry.url}/"
    lines = (repo / "build_tools" / "docker" / "prod_digests.txt").read_text().splitlines()
    return {url[len(prefix) :]: digest for url, _, digest in (line.partition("@") for line in lines)}


def image_id(ref: str, env: dict[str, str] | None = None) -> str | None:
    """The ID of a local image on the engine `env` points at, or None."""
    result = subprocess.run(
        ("docker", "image", "inspect", "--format", "{{.Id}}", ref), env=env, capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def pull(ref: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(("docker", "pull", "-q", ref), env=env, capture_output=True, check=True)


def references(repo: Path, registry) -> dict[str, set[str]]:
    """image -> the digests the tracked files pin it to (WORKSPACE rule included)."""
    return references_in(fake_tree.tracked_files(repo), registry)


def references_in(files: dict[str, bytes], registry) -> dict[str, set[str]]:
    """image -> the digests `files` (path -> bytes) pin it to (WORKSPACE rule included)."""
    found: dict[str, set[str]] = {}
    pattern = re.compile(re.escape(registry.url) + r"/([a-z0-9-]+)@(sha256:[0-9a-f]{64})")
    for name, data in files.items():
        text = data.decode("utf-8", "replace")
        for image, digest in pattern.findall(text):
            found.setdefault(image, set()).add(digest)
        if name == "WORKSPACE":
            rule = re.search(r'rbe_autoconfig\((?:.|\n)*?\n    digest = "(sha256:[0-9a-f]{64})"', text)
            found.setdefault("rbe-toolchain", set()).add(rule.group(1))
    return found


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(("docker", *args), capture_output=True, text=True, check=check)


def inspect(ref: str) -> dict | None:
    result = docker("image", "inspect", ref, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def stamp(registry, image: str, digest: str, name: str) -> str:
    """`/stamp/NAME` inside the image the registry serves under `digest`."""
    return docker("run", "--rm", f"{registry.url}/{image}@{digest}", "cat", f"/stamp/{name}").stdout


def change_stamp(repo: Path, image: str, text: str) -> str:
    """Commits a new stamp for IMAGE and returns it. A nonce makes the change new
    to the engine, whose build cache outlives test sessions."""
    text = f"{text.rstrip()} {uuid.uuid4().hex}\n"
    (repo / "build_tools" / "docker" / image / "stamp").write_text(text)
    fake_tree.git(repo, "commit", "-q", "-am", f"Change {image}")
    return text


def assert_pinned_to_registry(repo: Path, registry, images, tag: str = "latest") -> None:
    found = references(repo, registry)
    for image in images:
        served = registry.digest(image, tag)
        assert served is not None, image
        assert found[image] == {served}, image
