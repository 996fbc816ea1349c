"""Fixtures: temporary git repositories, a real Docker engine, a private registry."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import fake_tree
import manage_images
from helpers import E2E_REQUIRED, fresh_engine, run_tool, small_tree
from registry import Registry, running
from standin import StandIn


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


@pytest.fixture(scope="session")
def registry(engine, tmp_path_factory) -> Registry:
    with running(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def world(registry, tmp_path_factory) -> Path:
    """A repository whose images (all of the graph) were built, pushed and pinned by the tool."""
    root = fake_tree.make_tree(
        tmp_path_factory.mktemp("world") / "repo", registry.url, manage_images.IMAGES_TO_DEPENDENCIES
    )
    # -j 4 only to save time; test_e2e.py proves the default sequential run.
    result = run_tool(
        root, "--images", "all", "--build", "--push", "--update_references", "-j", "4", registry=registry
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
    fake_tree.git(root, "init", "-q", "--template=", "-b", "main")
    fake_tree.git(root, "config", "user.email", "test@example.com")
    fake_tree.git(root, "config", "user.name", "Test")
    return root


@pytest.fixture
def tree(git_repo, monkeypatch) -> Path:
    """A small tracked tree referring to cmake and cmake-python by digest, as the
    current directory. test_check.py has a `tree` of its own: the whole fake world."""
    monkeypatch.chdir(git_repo)
    return small_tree(git_repo)


@pytest.fixture
def standin(tmp_path, monkeypatch) -> StandIn:
    """A stand-in `docker` and `gcloud` alone on PATH (with git), for tests that need no engine."""
    fake = StandIn(tmp_path / "standin")
    for name, value in fake.environ().items():
        monkeypatch.setenv(name, value)
    return fake


@pytest.fixture
def second_engine(engine):
    """Another, empty dockerd; yields the environment that points docker at it."""
    with fresh_engine() as env:
        yield env
