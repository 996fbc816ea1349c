"""Fixtures: temporary git repositories, a real Docker engine, a private registry."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import fake_tree
import manage_images

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS.parent / "build_tools" / "docker" / "manage_images.py"
# When set (CI always sets CI), a missing engine or registry fails the
# end-to-end tests instead of skipping them.
E2E_REQUIRED = bool(os.environ.get("CI") or os.environ.get("MANAGE_IMAGES_E2E"))
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


def engine_problem() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    for tool in ("docker", "docker-registry", "git"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not fake_tree.BUSYBOX.is_file():
        return f"{fake_tree.BUSYBOX} is missing (install busybox-static)"
    info = subprocess.run(("docker", "info"), capture_output=True, text=True)
    if info.returncode != 0:
        return "the Docker engine is not running"
    return None


@pytest.fixture(scope="session")
def engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    if E2E_REQUIRED:
        pytest.fail(
            f"end-to-end tests are required here (CI or MANAGE_IMAGES_E2E is set) but {problem}; "
            "run tests/provision-docker.sh first"
        )
    pytest.skip(f"{problem}; run tests/provision-docker.sh to run the end-to-end tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """A private `docker-registry` on 127.0.0.1, queried through its HTTP API."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{self.host}/iree-oss"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )

    def start(self) -> None:
        log = open(self.folder / "registry.log", "ab")
        self.process = subprocess.Popen(
            ("docker-registry", "serve", str(self.config)), stdout=log, stderr=log
        )
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"registry did not start; see {self.folder / 'registry.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def tags(self, image: str) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/iree-oss/{image}/tags/list", timeout=5) as answer:
                return sorted(json.load(answer).get("tags") or [])
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise

    def digest(self, image: str, tag: str) -> str | None:
        """The manifest digest the registry serves for image:tag (HEAD request)."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/iree-oss/{image}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def snapshot(self, images, tags=("latest", "prod")) -> dict[tuple[str, str], str | None]:
        return {(image, tag): self.digest(image, tag) for image in images for tag in tags}


@pytest.fixture(scope="session")
def registry(engine, tmp_path_factory) -> Registry:
    server = Registry(tmp_path_factory.mktemp("registry"))
    server.start()
    yield server
    server.stop()


def run_tool(repo: Path, *args: str, registry: Registry | None = None, env=None, timeout=900):
    """Runs manage_images.py as a subprocess from `repo`."""
    argv = [sys.executable, str(SCRIPT)]
    if registry is not None:
        argv += ["--registry", registry.url]
    return subprocess.run(
        argv + list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def world(registry, tmp_path_factory) -> Path:
    """A repository whose 17 images were built, pushed and pinned by the tool."""
    root = fake_tree.make_tree(
        tmp_path_factory.mktemp("world") / "repo", registry.url, manage_images.IMAGES_TO_DEPENDENCIES
    )
    result = run_tool(
        root, "--images", "all", "--build", "--push", "--update_references", registry=registry
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fake_tree.git(root, "commit", "-q", "-am", "Pin the images built by the tool")
    return root


@pytest.fixture
def repo(world, tmp_path) -> Path:
    """A fresh clone of the bootstrapped world for one test."""
    return fake_tree.clone(world, tmp_path / "repo")


@pytest.fixture
def git_repo(tmp_path) -> Path:
    """An empty git repository, for tests that need no Docker."""
    root = tmp_path / "repo"
    root.mkdir()
    fake_tree.git(root, "init", "-q", "-b", "main")
    fake_tree.git(root, "config", "user.email", "test@example.com")
    fake_tree.git(root, "config", "user.name", "Test")
    return root
