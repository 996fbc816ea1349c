"""End-to-end: the two builders of the matrix that no engine file names, on the
engines of the matrix (tests/provision-engines.sh starts all three), against
the session's registry and world:

- Docker 20.10's own client with BuildKit built in (`DOCKER_BUILDKIT=1`, no
  buildx): inline cache through the `BUILDKIT_INLINE_CACHE` build argument;
- the 26.1.5 engine's legacy builder on the containerd image store
  (`DOCKER_BUILDKIT=0`, no buildx plugin visible), as Debian 13's engine
  gives with the legacy builder forced.

Each pins a changed subtree (3 images), rebuilds it unchanged, then
reproduces it on a cold engine of the same kind, and asserts on what the
registry serves and the engines hold. Marked `variants`, not `e2e`: .ci/run
runs them once, in the whole-suite run, whatever engine that run is on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import fake_tree
from helpers import (
    ENGINES_DIR,
    assert_holds_the_pins_content,
    engine_environ,
    engine_kind,
    engine_variables,
    fresh_engine,
    pins,
    references,
    run_tool,
    unavailable,
)
from registry import DOCKER_MANIFEST, OCI_MANIFEST

pytestmark = pytest.mark.variants

ROOT = "cmake-python-vulkan"  # with its two dependents: a subtree of 3 images
SUBTREE = ("cmake-python-vulkan", "cmake-python-swiftshader", "cmake-python-nvidia")
STEPS = ("--image", ROOT, "--build", "--push", "--update_references", "-j", "3")
COLD = ("--image", ROOT, "--tag", "prod", "--build", "--update_references", "-j", "3")
REPRODUCE = ("--cache_from_pinned", "--verify_pinned", "--json", "-")


def variant(name: str, tmp_path: Path) -> dict[str, str]:
    """The environment of engine NAME of the matrix, its DOCKER_CONFIG in tmp_path."""
    if not (ENGINES_DIR / name / "engine.env").is_file():
        unavailable(f"no {name} engine here; run tests/provision-engines.sh {name}")
    env = engine_environ(name, tmp_path / f"{name}-docker-config", {**os.environ})
    if subprocess.run(("docker", "info"), env=env, capture_output=True).returncode != 0:
        unavailable(f"the {name} engine does not answer; run tests/provision-engines.sh {name}")
    return env


@pytest.fixture
def buildkit_in_the_20_10_client(engine, tmp_path) -> dict[str, str]:
    """The classic engine (dockerd 20.10) driven by Docker 20.10's own client with
    DOCKER_BUILDKIT=1: the client found beside that dockerd (its package's)."""
    env = variant("classic", tmp_path)
    dockerd = Path(engine_variables("classic").get("MANAGE_IMAGES_ENGINE_DOCKERD") or "/usr/sbin/dockerd")
    client = dockerd.parent.parent / "bin" / "docker"
    version = subprocess.run(
        (str(client), "version", "--format", "{{.Client.Version}}"), env=env, capture_output=True, text=True
    ).stdout
    if not version.startswith("20.10"):
        unavailable(f"no Docker 20.10 client at {client} (found {version.strip() or 'none'})")
    env.update(PATH=f"{client.parent}{os.pathsep}{env['PATH']}", DOCKER_BUILDKIT="1")
    return env


@pytest.fixture
def legacy_builder_on_containerd(engine, tmp_path) -> dict[str, str]:
    """The containerd-store engine (26.1.5) with DOCKER_BUILDKIT=0 and no buildx plugin."""
    env = variant("containerd", tmp_path)
    plugins = Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-buildx"
    plugins.unlink(missing_ok=True)
    env["DOCKER_BUILDKIT"] = "0"
    assert engine_kind(env)[2:] == ("containerd", "classic")
    return env


def edit_the_subtree(repo: Path) -> None:
    (repo / "build_tools" / "docker" / ROOT / "stamp").write_text(f"{ROOT}, edited\n")
    fake_tree.git(repo, "commit", "-q", "-am", f"Edit {ROOT}")


def pin_rebuild_and_reproduce(repo: Path, registry, env: dict[str, str]) -> dict[str, dict]:
    """Pins the edited subtree, rebuilds it unchanged, reproduces it on a cold engine;
    asserts on the registry and the engines at each step. The cold run's JSON report."""
    old = pins(repo, registry)
    edit_the_subtree(repo)
    pinned_run = run_tool(repo, *STEPS, registry=registry, env=env)
    assert pinned_run.returncode == 0, pinned_run.stdout + pinned_run.stderr
    pinned = pins(repo, registry)
    for image in SUBTREE:
        assert pinned[image] != old[image], image
        assert registry.digest(image, pinned[image]) == pinned[image], image
        media_type, _ = registry.manifest(image, pinned[image])
        assert media_type in (DOCKER_MANIFEST, OCI_MANIFEST), (image, media_type)
        assert references(repo, registry)[image] == {pinned[image]}, image
    fake_tree.git(repo, "commit", "-q", "-am", "Pin the subtree")
    before = fake_tree.tracked_files(repo)

    rebuilt = run_tool(repo, *STEPS, "--verify_pinned", registry=registry, env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert fake_tree.tracked_files(repo) == before

    with fresh_engine(env) as cold:
        result = run_tool(repo, *COLD, *REPRODUCE, registry=registry, env=cold)
        assert result.returncode == 0, result.stderr
        assert fake_tree.tracked_files(repo) == before
        for image in SUBTREE:
            assert_holds_the_pins_content(
                registry, image, pinned[image], f"{registry.url}/{image}:prod", cold
            )
    return {image["name"]: image for image in json.loads(result.stdout)["images"]}


def test_buildkit_in_the_20_10_client_pins_rebuilds_and_reproduces(
    repo, registry, buildkit_in_the_20_10_client
):
    report = pin_rebuild_and_reproduce(repo, registry, buildkit_in_the_20_10_client)
    assert set(report) == set(SUBTREE)
    assert {image["identity"] for image in report.values()} <= {"identical", "same content"}, report
    # The pins carry the inline cache a cold engine needs: BuildKit built them.
    pinned = pins(repo, registry)
    for image in SUBTREE:
        assert "moby.buildkit.cache.v0" in registry.image_config(image, pinned[image]), image


def test_the_legacy_builder_on_the_containerd_store_pins_rebuilds_and_reproduces(
    repo, registry, legacy_builder_on_containerd
):
    report = pin_rebuild_and_reproduce(repo, registry, legacy_builder_on_containerd)
    assert set(report) == set(SUBTREE)
    assert {image["identity"] for image in report.values()} <= {"identical", "same content"}, report
