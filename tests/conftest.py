"""Fixtures: temporary git repositories, a real Docker engine, a private registry."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import fake_tree
import manage_images
from helpers import (
    docker,
    E2E_REQUIRED,
    ENGINES,
    SYSTEM_PATH,
    engine_environ,
    engine_file,
    engine_kind,
    fresh_engine,
    run_tool,
    shared_folder,
    small_tree,
    unavailable,
)
from registry import SERVED_PORTS, Registry, running
from standin import StandIn

# MANAGE_IMAGES_ENGINE=classic|buildkit|containerd: the engine of the matrix
# every docker command of this session talks to (unset: whatever engine the
# environment points at). Why it cannot be used, if it cannot.
ENGINE = os.environ.get("MANAGE_IMAGES_ENGINE") or None
ENGINE_PROBLEM: str | None = None


def pytest_configure(config) -> None:
    """Points this process's environment, and so every subprocess, at the
    session's engine, with a DOCKER_CONFIG of its own: tests never read or
    write ~/.docker, and the buildx plugin the engine needs is in it."""
    global ENGINE_PROBLEM
    docker_config = Path(tempfile.mkdtemp(prefix="mi-docker-config-"))
    if ENGINE is not None and ENGINE not in ENGINES:
        raise pytest.UsageError(f"MANAGE_IMAGES_ENGINE={ENGINE}: use one of {', '.join(ENGINES)}")
    if ENGINE is not None and not engine_file(ENGINE).is_file():
        ENGINE_PROBLEM = f"{engine_file(ENGINE)} is missing (run tests/provision-engines.sh {ENGINE})"
        os.environ["DOCKER_CONFIG"] = str(docker_config)
        return
    os.environ.update(engine_environ(ENGINE, docker_config))


def pytest_collection_modifyitems(items) -> None:
    # Every test that makes a second user is marked as_user: tests/test_clone_anywhere.py
    # runs them from a clone the second user cannot read.
    for item in items:
        if "user" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.as_user)


def pytest_report_header(config) -> str:
    if shutil.which("docker") is None:
        return "engine: no docker client"
    version, driver, store, builder = engine_kind()
    return (
        f"engine: {ENGINE or 'from the environment'}: Docker {version}, {builder} builder, "
        f"{driver} ({store} image store), at {os.environ.get('DOCKER_HOST', 'the default socket')}"
    )


# What each engine of the matrix must be: (image store, builder starts with).
EXPECTED = {
    "classic": ("graph driver", "classic"),
    "buildkit": ("graph driver", "BuildKit"),
    "containerd": ("containerd", "BuildKit"),
}


def engine_problem() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    if ENGINE_PROBLEM is not None:
        return ENGINE_PROBLEM
    for tool in ("docker", "docker-registry", "git"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not fake_tree.BUSYBOX.is_file():
        return f"{fake_tree.BUSYBOX} is missing (install busybox-static)"
    info = subprocess.run(("docker", "info"), capture_output=True, text=True)
    if info.returncode != 0:
        return "the Docker engine is not running"
    if ENGINE is not None:
        _, _, store, builder = engine_kind()
        if (store, builder.split()[0]) != EXPECTED[ENGINE]:
            want_store, want_builder = EXPECTED[ENGINE]
            return (
                f"the {ENGINE} engine has a {store} image store and the {builder} builder, "
                f"not a {want_store} image store and the {want_builder} builder"
            )
    return None


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    problem = engine_problem()
    if problem is not None:
        if E2E_REQUIRED:
            pytest.fail(
                f"end-to-end tests are required here (CI or MANAGE_IMAGES_E2E is set) but {problem}; "
                "run tests/provision-engines.sh first"
            )
        pytest.skip(f"{problem}; run tests/provision-engines.sh to run the end-to-end tests")
    before = engine_contents()
    yield
    if before is not None:
        remove_what_the_session_left(before)


# A name in a registry on a 127.0.0.1 port: the tests' registries are there.
_LOOPBACK_NAME_RE = re.compile(r"^127\.0\.0\.1:(\d{1,5})/")


def engine_contents() -> dict[str, set[str]] | None:
    """The engine's names of images ("REPOSITORY:TAG", or "REPOSITORY@DIGEST" for one
    pulled by digest alone), its dangling images and its containers (full IDs); None
    if one listing fails (then nothing is removed at the end)."""
    names = _image_names()
    dangling = _listed("images", "--quiet", "--no-trunc", "--filter", "dangling=true")
    containers = _listed("ps", "--all", "--quiet", "--no-trunc")
    if names is None or dangling is None or containers is None:
        return None
    return {"names": names, "dangling": dangling, "containers": containers}


def _listed(*args: str) -> set[str] | None:
    """The words a docker listing prints, or None if it fails."""
    try:
        result = docker(*args, check=False, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(result.stdout.split()) if result.returncode == 0 else None


def _image_names() -> set[str] | None:
    listed = _listed("images", "--digests", "--format", "{{.Repository}}:{{.Tag}}@{{.Digest}}")
    return None if listed is None else {_image_name(*line.rsplit("@", 1)) for line in listed}


def _image_name(tagged: str, digest: str) -> str:
    repository, _, tag = tagged.rpartition(":")
    return f"{repository}@{digest}" if tag == "<none>" else tagged


def remove_what_the_session_left(before: dict[str, set[str]]) -> None:
    """Removes from the session's engine what its tests made and left, so that runs do not
    pile up images in an engine they may share with the user (the system's, for classic):
    the names in this session's registries (registry.SERVED_PORTS) once they no longer
    answer, the containers made and exited since from the images of test trees (label
    fake_tree.TEST_LABEL; a failed step of the classic builder keeps its container), and
    the images of test trees left dangling since (a rebuild moves a tag off its old
    image). What was there before the session stays, and so does every other name,
    container and image. Best effort: a failure is a warning, never the session's."""
    try:
        _remove_what_the_session_left(before)
    except (OSError, subprocess.SubprocessError) as error:
        warnings.warn(f"could not remove what the tests left in the engine: {error}", stacklevel=1)


def _remove_what_the_session_left(before: dict[str, set[str]]) -> None:
    ports = {port for port in SERVED_PORTS if not listening(port)}

    def ours(name: str) -> bool:
        port = _LOOPBACK_NAME_RE.match(name)
        return port is not None and int(port[1]) in ports

    label = ("--filter", f"label={fake_tree.TEST_LABEL}")
    exited = _listed("ps", "--all", "--quiet", "--no-trunc", "--filter", "status=exited", *label) or set()
    _in_batches("rm", sorted(exited - before["containers"]))
    _in_batches("rmi", sorted(name for name in (_image_names() or set()) - before["names"] if ours(name)))
    dangling = _listed("images", "--quiet", "--no-trunc", "--filter", "dangling=true", *label) or set()
    _in_batches("rmi", sorted(dangling - before["dangling"]))


def _in_batches(command: str, names: list[str]) -> None:
    for start in range(0, len(names), 200):
        docker(command, *names[start : start + 200], check=False, timeout=600)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def registry_binary() -> None:
    """Debian's `docker-registry`, for the tests that need a registry but no engine."""
    if shutil.which("docker-registry") is not None:
        return
    if E2E_REQUIRED:
        pytest.fail("`docker-registry` is not installed; run tests/provision-docker.sh first")
    pytest.skip("`docker-registry` is not installed; run tests/provision-docker.sh")


@pytest.fixture(scope="session")
def plain_registry(registry_binary, tmp_path_factory) -> Registry:
    """A plain-HTTP registry on loopback, with its access log on; no engine involved."""
    with running(tmp_path_factory.mktemp("plain-registry"), access_log=True) as server:
        yield server


@pytest.fixture
def docker_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """An environment of its own for the registry client: an empty DOCKER_CONFIG and HOME,
    a certs.d folder (MANAGE_IMAGES_CERTS_D), and a DOCKER_HOST nothing answers."""
    paths = {name: tmp_path / name for name in ("home", "docker-config", "certs.d")}
    for path in paths.values():
        path.mkdir()
    monkeypatch.setenv("HOME", str(paths["home"]))
    monkeypatch.setenv("DOCKER_CONFIG", str(paths["docker-config"]))
    monkeypatch.setenv(manage_images.CERTS_D_ENV, str(paths["certs.d"]))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    return paths


@pytest.fixture(scope="session")
def registry(engine, tmp_path_factory) -> Registry:
    with running(tmp_path_factory.mktemp("registry"), access_log=True) as server:
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
    """A stand-in `docker` and `gcloud` alone on PATH (with git), and a stand-in registry, for tests
    that need no engine."""
    fake = StandIn(tmp_path / "standin")
    for name, value in fake.environ().items():
        monkeypatch.setenv(name, value)
    # The stand-in says which builder it is (`engine` in its configuration), not the session's engine.
    monkeypatch.delenv("DOCKER_BUILDKIT", raising=False)
    # The engine side's questions to the registry (what a push or pin serves)
    # are answered from the same configuration.
    monkeypatch.setattr(manage_images.Runner, "registry", lambda runner: fake.registry)
    return fake


@pytest.fixture
def second_engine(engine):
    """Another, empty dockerd; yields the environment that points docker at it."""
    with fresh_engine() as env:
        yield env


@pytest.fixture
def user():
    """A real user of this machine and its own group, made for the test and
    removed after it. It may be unable to read the checkout: run the tool as it
    with helpers.run_as."""
    if os.geteuid() != 0:
        message = "making a user needs root"
        unavailable(message)
    name = f"mi{uuid.uuid4().hex[:10]}"
    command = shutil.which("useradd", path=SYSTEM_PATH) or "useradd"
    subprocess.run(
        (command, "--no-create-home", "--user-group", "--shell", "/bin/sh", name),
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run((shutil.which("userdel", path=SYSTEM_PATH) or "userdel", name), capture_output=True)


@pytest.fixture(name="shared_folder")
def shared_folder_fixture():
    """A folder every user may enter (helpers.shared_folder), removed after the test."""
    with shared_folder() as folder:
        yield folder
