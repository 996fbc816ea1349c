"""End-to-end #31: --builder spreads a run over several engines of this machine, each a
docker context of its own (its own socket, data root, exec root and pid file), with one
registry between them; and a builder whose dockerd is killed in the middle of a run.

Each engine is of the session's kind (MANAGE_IMAGES_ENGINE); the tool's own engine is the
session's. Results come from the registry, the engines' image stores, the files and the
tool's --json report, never only from what it printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import manage_images
from helpers import GRAPH, Tool, change_stamp, fresh_engine, image_id, pins, references, run_tool, stamp

pytestmark = pytest.mark.e2e

POOL = ("one", "two", "three")  # "one" is the session's engine; the others are fresh ones
REBUILD = ("--build", "--push", "--update_references")


def docker_in(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ("docker", *args),
        env={**env, "DOCKER_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_context(config: Path, name: str, env: dict[str, str]) -> None:
    """A docker context NAME, in the docker config `config`, for the engine `env` points at."""
    made = docker_in(config, os.environ, "context", "create", name, "--docker", f"host={env['DOCKER_HOST']}")
    assert made.returncode == 0, made.stderr


@pytest.fixture(scope="module")
def contexts(engine, tmp_path_factory) -> Iterator[tuple[Path, dict[str, dict[str, str]]]]:
    """A docker config of its own (the session's buildx plugin in it) holding a context for each
    builder of POOL: the session's engine and two fresh ones; yields it and each builder's
    environment."""
    config = tmp_path_factory.mktemp("builders-docker-config")
    plugins = Path(os.environ["DOCKER_CONFIG"]) / "cli-plugins"
    if plugins.is_dir():
        (config / "cli-plugins").symlink_to(plugins)
    with contextlib.ExitStack() as stack:
        engines = {POOL[0]: dict(os.environ)}
        for name in POOL[1:]:
            engines[name] = stack.enter_context(fresh_engine())
        for name, env in engines.items():
            make_context(config, name, env)
        yield config, engines


def tool_env(config: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    return {**(base or os.environ), "DOCKER_CONFIG": str(config)}


def listed_images(env: dict[str, str], registry) -> list[str]:
    """The images of the test registry the engine `env` points at holds: `REPOSITORY:TAG ID`."""
    listed = subprocess.run(
        ("docker", "image", "ls", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    return sorted({line for line in listed.stdout.splitlines() if line.startswith(f"{registry.url}/")})


def assert_every_pin_is_served(repo: Path, registry) -> None:
    for image, digests in references(repo, registry).items():
        for digest in digests:
            assert registry.digest(image, digest) == digest, (image, digest)


def test_one_builder_takes_the_whole_run_and_the_tools_engine_holds_none_of_it(repo, registry, contexts):
    config, engines = contexts
    leaf = "rbe-toolchain"  # built on vulkan alone, nothing is built on it
    assert GRAPH[leaf] and not manage_images.dependents_map(GRAPH)[leaf]
    change_stamp(repo, leaf, "one builder")
    before = listed_images(engines["two"], registry)
    # The tool's own engine is "two": the run goes to "three".
    result = run_tool(
        repo, "--image", leaf, *REBUILD, "--builder", "three", registry=registry,
        env=tool_env(config, engines["two"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert listed_images(engines["two"], registry) == before
    assert image_id(f"{registry.url}/{leaf}:latest", engines["three"]) is not None
    assert pins(repo, registry)[leaf] == registry.digest(leaf, "latest")
    assert_every_pin_is_served(repo, registry)
    if docker_in(config, engines["two"], "buildx", "version").returncode == 0:
        # buildx lists the context as a builder of its `docker` driver: the same builder.
        inspected = docker_in(config, engines["two"], "buildx", "inspect", "three")
        assert manage_images.inspect_fields(inspected.stdout, "Driver") == ["docker"], inspected.stderr


def test_a_rebuild_after_a_base_change_spreads_over_the_pool(repo, registry, contexts):
    config, engines = contexts
    base = "cmake"  # the subtree of cmake: a few images, on several branches
    run = manage_images.ordered_images_to_process([base], GRAPH)
    new_stamp = change_stamp(repo, base, "pool")
    pool = [arg for name in POOL for arg in ("--builder", name)]
    result = run_tool(
        repo, "--image", base, *REBUILD, *pool, "--json", "-", registry=registry, env=tool_env(config)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    built_on = {image["name"]: image["builder"] for image in report["images"]}
    assert sorted(built_on) == sorted(run)
    assert set(built_on.values()) == set(POOL)
    assert [builder["name"] for builder in report["builders"]] == list(POOL)
    # Each builder's engine was asked on its own: the fresh ones are of the session's kind.
    kinds = [(builder["engine"]["builder"], builder["engine"]["store"]) for builder in report["builders"]]
    assert kinds == [kinds[0]] * len(POOL) and report["engine"] == report["builders"][0]["engine"]
    # Each image is on the engine that built it (and the fresh ones hold only what they built or read).
    for name in POOL[1:]:
        for image in (image for image, on in built_on.items() if on == name):
            assert image_id(f"{registry.url}/{image}:latest", engines[name]) is not None, (image, name)
    pinned = pins(repo, registry)
    assert_every_pin_is_served(repo, registry)
    for image in run:
        assert pinned[image] == registry.digest(image, "latest"), image
    crossed = [(image, GRAPH[image][0]) for image in run if GRAPH[image][0] in built_on]
    crossed = [(image, parent) for image, parent in crossed if built_on[image] != built_on[parent]]
    assert crossed, built_on
    for image, parent in crossed:
        dockerfile = (repo / manage_images.DOCKER_DIR / image / "Dockerfile").read_text()
        assert f"FROM {registry.url}/{parent}@{pinned[parent]} " in dockerfile, image
        assert stamp(registry, image, pinned[image], base) == new_stamp, image
    check = run_tool(repo, "--check", "--images", "all", registry=registry, env=tool_env(config))
    assert check.returncode == 0, check.stdout + check.stderr


@contextlib.contextmanager
def killable_engine() -> Iterator[tuple[dict[str, str], int]]:
    """A fresh engine (see `fresh_engine`) and its dockerd's pid; whatever a kill -9 of it
    leaves behind (its containerd's shims, their mounts) is cleared after."""
    with fresh_engine() as env:
        folder = Path(env["DOCKER_HOST"].removeprefix("unix://")).parent
        try:
            yield env, int((folder / "docker.pid").read_text())
        finally:
            leftovers(folder)


def leftovers(folder: Path) -> None:
    """Ends the processes that still run from FOLDER (a killed dockerd's containerd and shims)
    and unmounts what is mounted under it."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(folder))), reverse=True):
        subprocess.run(("umount", "-l", mount), capture_output=True)


def test_a_builder_killed_in_the_middle_of_a_run(repo, registry, contexts, monkeypatch):
    config, engines = contexts
    image = "swiftshader"  # built on cmake; two images are built on it
    dockerfile = repo / manage_images.DOCKER_DIR / image / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN sleep 8\n")
    change_stamp(repo, image, "killed")
    run = manage_images.ordered_images_to_process([image], GRAPH)
    with killable_engine() as (victim, pid):
        make_context(config, "victim", victim)
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        tool = Tool(
            repo, "--registry", registry.url, "--image", image, *REBUILD,
            "--builder", "victim", "--builder", POOL[0], "--json", "report.json",
        )  # fmt: skip
        tool.wait_for_line(f"[{image}] Running on victim: `docker build", timeout=120)
        tool.wait_for_line("sleep 8", timeout=60)  # its RUN step is running
        os.kill(pid, signal.SIGKILL)
        code, out, err = tool.finish(timeout=240)
    assert code == 0, out + err
    report = {item["name"]: item for item in json.loads((repo / "report.json").read_text())["images"]}
    assert report[image]["builder"] == POOL[0]
    assert "builder victim (docker context, unix://" in report[image]["retried"]
    assert "cannot be reached any more" in report[image]["retried"]
    assert {report[name]["builder"] for name in run} == {POOL[0]}
    assert_every_pin_is_served(repo, registry)
    pinned = pins(repo, registry)
    for name in run:
        assert pinned[name] == registry.digest(name, "latest"), name
