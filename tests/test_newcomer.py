"""The front page's promises to a newcomer, in the try-it world.

`examples/try-locally.sh` runs the main job for real on this machine (twice);
then, in the scratch repository it leaves (the "try-it world", whose
prod_digests.txt names its own registry), every shell block of README.md
runs as written, for real, and every `manage_images.py` command of README.md
and of the manual runs as written, in a dry run where it would build or push.
No command is given `--registry`: the tree names it."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

import fake_tree
from helpers import TESTS, engine_kind
from registry import free_port, served_digest

pytestmark = pytest.mark.e2e

ROOT = TESTS.parent
README = ROOT / "README.md"
MANUAL = ROOT / "build_tools" / "docker" / "README.md"
TRY = ROOT / "examples" / "try-locally.sh"
STEP_FLAGS = ("--pull", "--build", "--push", "--update_references", "--only_references", "--promote")
# What a placeholder in the documents stands for when a command is run.
NAME = "cmake-python-nvidia"
SHOWN = ("Summary:", "files changed", "before: FROM", "after:  FROM", "agree.", "To remove what this started")


class TryIt(NamedTuple):
    runs: list[subprocess.CompletedProcess[str]]
    repo: Path  # the try-it world, every pin committed
    port: int
    home: Path  # a fresh HOME, that must stay without a .docker folder


@pytest.fixture(scope="module")
def try_it(engine, tmp_path_factory):
    """examples/try-locally.sh, run twice as the README says, and the world it leaves."""
    folder = tmp_path_factory.mktemp("try")
    port = free_port()
    state = folder / "state"
    home = folder / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "MANAGE_IMAGES_TRY_PORT": str(port),
        "MANAGE_IMAGES_TRY_DIR": str(state),
        "PYTHON": sys.executable,
    }
    env.pop("DOCKER_CONFIG", None)
    try:
        runs = [
            subprocess.run(["bash", str(TRY)], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)
        ]
        repo = state / "repo"
        if all(run.returncode == 0 for run in runs):
            fake_tree.git(repo, "commit", "-q", "-am", "Pin the images the main job built")
        yield TryIt(runs, repo, port, home)
    finally:
        pid_file = state / "registry" / "pid"
        if pid_file.exists():
            stop_and_wait(int(pid_file.read_text()))


def stop_and_wait(pid: int, seconds: float = 10) -> None:
    """Stops the registry the script started and waits (a bounded time) until it is gone:
    the session's cleanup removes the images named in it once its port no longer answers."""
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(int(seconds / 0.05)):
            os.kill(pid, 0)
            time.sleep(0.05)
    except ProcessLookupError:
        pass


def test_try_locally_runs_the_main_job_twice_without_touching_the_users_docker_config(try_it):
    version, driver, store, builder = engine_kind()
    for result in try_it.runs:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # It says which engine it used: the session's, with its builder and image store.
        said = next(line for line in result.stdout.splitlines() if line.startswith("Engine: "))
        assert said.startswith(f"Engine: Docker {version} "), said
        assert f"builder: {builder.split()[0]}" in said, said
        assert ("image store: containerd" in said) == (store == "containerd"), said
        for shown in SHOWN:
            assert shown in result.stdout, shown
        # The main job, as the README shows it: no --registry, the tree names it.
        assert "--registry" not in result.stdout
        assert f"cd {try_it.repo}" in result.stdout
    # The re-pin is real: cmake's FROM line names the base the registry serves now.
    base = served_digest(f"127.0.0.1:{try_it.port}", "iree-oss/base", "latest")
    dockerfile = (try_it.repo / "build_tools/docker/cmake/Dockerfile").read_text()
    assert f"FROM 127.0.0.1:{try_it.port}/iree-oss/base@{base} AS final" in dockerfile
    assert not (try_it.home / ".docker").exists()


def clone(try_it: TryIt, tmp_path: Path) -> Path:
    """A clone of the try-it world, as a user's own checkout of it."""
    return fake_tree.clone(try_it.repo, tmp_path / "repo")


def environment(try_it: TryIt, tmp_path: Path) -> dict[str, str]:
    """The session's environment, its HOME the try-it one, and `python3` this interpreter."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "python3").symlink_to(sys.executable)
    return {**os.environ, "HOME": str(try_it.home), "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}"}


def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```shell\n(.*?)```", path.read_text(), re.S)


def workflow_blocks() -> list[str]:
    """The README's shell blocks but the first, whose two commands are this file's first
    test and CI itself; a block whose every line another block runs too is run there."""
    blocks = shell_blocks(README)[1:]
    lines = [set(block.splitlines()) for block in blocks]
    return [
        block
        for index, block in enumerate(blocks)
        if not any(lines[index] < other for other in lines[:index] + lines[index + 1 :])
    ]


def commands(path: Path) -> list[str]:
    """Every manage_images.py command in a document (shell blocks, continuation
    lines joined, and inline code), each once."""
    found = re.findall(r"`(python3 build_tools/docker/manage_images\.py [^`]*)`", path.read_text())
    for block in shell_blocks(path):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if "build_tools/docker/manage_images.py" in command:
                found.append(" ".join(command.split()))
    return list(dict.fromkeys(found))


def test_the_documents_have_example_commands():
    assert len(commands(README)) >= 10 and len(commands(MANUAL)) >= 10
    assert len(workflow_blocks()) >= 4


def pushed_images(block: str) -> list[str]:
    """The images a block pushes by name (`--image X ... --push`)."""
    pushed = []
    for line in block.splitlines():
        words = shlex.split(line.split(" #", 1)[0])
        if "--push" in words:
            pushed += [words[i + 1] for i, word in enumerate(words) if word in ("--image", "--images")]
    return list(dict.fromkeys(image for image in pushed if image != "all"))


@pytest.mark.parametrize("block", workflow_blocks(), ids=lambda block: block.splitlines()[0][:60])
def test_every_readme_workflow_runs_as_written_in_the_try_it_world(block, try_it, tmp_path):
    repo = clone(try_it, tmp_path)
    # A block that pushes an image runs after a change to it, as a user would.
    for image in pushed_images(block):
        stamp = repo / "build_tools" / "docker" / image / "stamp"
        stamp.write_text(f"{stamp.read_text()}edited for {tmp_path.name}\n")
        fake_tree.git(repo, "commit", "-q", "-am", f"Edit {image}")
    before = fake_tree.tracked_files(repo)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=repo,
        env=environment(try_it, tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{block}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "warning:" not in result.stderr
    assert "gcloud" not in result.stdout and "Found no references" not in result.stdout
    after = fake_tree.tracked_files(repo)
    if "--verify_pinned" in block and "--build" in block:
        assert after == before  # reproduced: every pin kept
    for image in pushed_images(block):
        pinned = served_digest(f"127.0.0.1:{try_it.port}", f"iree-oss/{image}", "latest")
        assert f"/{image}@{pinned}" in after["build_tools/docker/prod_digests.txt"].decode(), image
    assert not (try_it.home / ".docker").exists()


@pytest.mark.parametrize("command", list(dict.fromkeys(commands(README) + commands(MANUAL))))
def test_every_documented_command_runs_in_the_try_it_world(command, try_it, tmp_path):
    repo = clone(try_it, tmp_path)
    env = environment(try_it, tmp_path)
    words = shlex.split(command)
    words = ["python3", "build_tools/docker/manage_images.py"] + [
        NAME if word == "NAME" else word
        for word in words[next(i for i, word in enumerate(words) if word.endswith("manage_images.py")) + 1 :]
    ]
    if "--verify_pinned" in words and not any(flag in words for flag in STEP_FLAGS):
        # The registry must serve the pins under the tag being verified.
        tag = words[words.index("--tag") + 1] if "--tag" in words else "latest"
        promote = [*words[:2], "--images", "all", "--promote", "--tag", tag]
        promoted = subprocess.run(promote, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert promoted.returncode == 0, promoted.stderr
    if any(flag in words for flag in STEP_FLAGS):
        words.append("--dry-run")
    result = subprocess.run(words, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "warning:" not in result.stderr
