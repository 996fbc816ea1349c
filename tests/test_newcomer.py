"""The README's promises to a newcomer: the try-it script runs the main job
for real on this machine (twice), and every example command in the README
runs against the test world (in a dry run where it would build or push)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

import fake_tree
from helpers import SCRIPT, TESTS, engine_kind, run_tool
from registry import free_port, served_digest

pytestmark = pytest.mark.e2e

ROOT = TESTS.parent
README = ROOT / "README.md"
TRY = ROOT / "examples" / "try-locally.sh"
STEP_FLAGS = ("--pull", "--build", "--push", "--update_references", "--only_references", "--promote")


def test_try_locally_runs_the_main_job_twice_without_touching_the_users_docker_config(engine, tmp_path):
    port = free_port()
    state = tmp_path / "try"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "MANAGE_IMAGES_TRY_PORT": str(port),
        "MANAGE_IMAGES_TRY_DIR": str(state),
        "PYTHON": sys.executable,
    }
    env.pop("DOCKER_CONFIG", None)
    version, driver, store, builder = engine_kind()
    try:
        for _ in range(2):
            result = subprocess.run(["bash", str(TRY)], env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            # It says which engine it used: the session's, with its builder and image store.
            said = next(line for line in result.stdout.splitlines() if line.startswith("Engine: "))
            assert said.startswith(f"Engine: Docker {version} "), said
            assert f"builder: {builder.split()[0]}" in said, said
            assert ("image store: containerd" in said) == (store == "containerd"), said
            repo = state / "repo"
            # The re-pin is real: cmake's FROM line names the base the registry serves now.
            base = served_digest(f"127.0.0.1:{port}", "iree-oss/base", "latest")
            assert (
                f"FROM 127.0.0.1:{port}/iree-oss/base@{base} AS final"
                in (repo / "build_tools/docker/cmake/Dockerfile").read_text()
            )
            assert fake_tree.git(repo, "diff", "--stat").strip(), "no re-pin to show"
            check = subprocess.run(
                [
                    sys.executable,
                    str(SCRIPT),
                    "--registry",
                    f"127.0.0.1:{port}/iree-oss",
                    "--check",
                    "--images",
                    "all",
                ],
                cwd=repo,
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stdout
            for shown in (
                "Summary:",
                "files changed",
                "before: FROM",
                "after:  FROM",
                "agree.",
                "To remove what this started",
            ):
                assert shown in result.stdout, shown
        assert not (home / ".docker").exists()
    finally:
        pid_file = state / "registry" / "pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def readme_commands() -> list[str]:
    """Every manage_images.py command in the README (shell blocks, continuation
    lines joined, and inline code), each once."""
    text = README.read_text()
    blocks = re.findall(r"```shell\n(.*?)```", text, re.S)
    commands = re.findall(r"`(python3 build_tools/docker/manage_images\.py [^`]*)`", text)
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if "build_tools/docker/manage_images.py" in command:
                commands.append(" ".join(command.split()))
    return list(dict.fromkeys(commands))


def test_the_readme_has_example_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_runs(command, repo, registry):
    words = shlex.split(command)
    words = words[next(i for i, word in enumerate(words) if word.endswith("manage_images.py")) + 1 :]
    words = ["cmake-python-nvidia" if word == "NAME" else word for word in words]
    if "--verify_pinned" in words and not any(flag in words for flag in STEP_FLAGS):
        # The registry must serve the pins under the tag being verified.
        tag = words[words.index("--tag") + 1] if "--tag" in words else "latest"
        promoted = run_tool(repo, "--images", "all", "--promote", "--tag", tag, registry=registry)
        assert promoted.returncode == 0, promoted.stderr
    if any(flag in words for flag in STEP_FLAGS):
        words.append("--dry-run")
    result = run_tool(repo, *words, registry=registry)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr}"
    assert "Traceback" not in result.stderr
