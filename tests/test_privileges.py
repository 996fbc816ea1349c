"""The README's two commands work as written whether the user is root or not
and whether sudo exists or not (README, "Try it"): a script that needs root
runs itself again through sudo, keeping the variables the scripts read; with
no sudo it says in one line to run it as root; as root, or when there is
nothing to do as root, sudo is never called. Real users (`useradd`), a
stand-in `sudo` that records how it was called, and the real scripts."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import TESTS, unavailable

ROOT = TESTS.parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What as-root.sh and the scripts run before they decide (no docker: no engine answers).
TOOLS = ("bash", "id", "readlink", "basename", "dirname", "grep", "paste", "cat")
# script -> what its line says needs root
SCRIPTS = {
    ".ci/run": "the test suite (it provisions engines, adds users, mounts file systems)",
    "tests/provision-engines.sh": "provisioning engines",
    "examples/try-locally.sh": "reaching or starting a Docker engine",
}
# Scripts with nothing to do as root on a provisioned machine.
PROVISIONED = ("tests/provision-terminal.sh", "tests/provision-locale.sh")
SUDO = """#!/bin/bash
printf '%s\\n' "$@" >"{log}"
"""


@pytest.fixture
def user():
    """A real user, removed after the test."""
    if os.geteuid() != 0:
        unavailable("making a user needs root")
    name = f"mi{uuid.uuid4().hex[:10]}"
    subprocess.run(
        (shutil.which("useradd", path=SYSTEM_PATH) or "useradd", "--no-create-home", name),
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run((shutil.which("userdel", path=SYSTEM_PATH) or "userdel", name), capture_output=True)


@pytest.fixture
def folder():
    """A folder any user may write in (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mi-root-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def checkout(folder):
    """The scripts, and what they read before they decide, copied where any user may read
    them: the checkout itself may be under a folder only root can pass (/root, mktemp -d)."""
    copy = folder / "checkout"
    for relative in (*SCRIPTS, "tests/as-root.sh", "tests/provision-docker.sh", *PROVISIONED):
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, target)
        target.chmod(0o755)
    for path in (copy, *copy.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)
    return copy


def bin_folder(folder: Path, sudo: bool) -> Path:
    """A PATH of its own: the few tools the scripts run before deciding, and a stand-in
    sudo that records its arguments (or no sudo at all)."""
    path = folder / ("bin-sudo" if sudo else "bin")
    path.mkdir()
    for tool in TOOLS:
        (path / tool).symlink_to(shutil.which(tool, path=SYSTEM_PATH))
    if sudo:
        (path / "sudo").write_text(SUDO.format(log=folder / "sudo.log"))
        (path / "sudo").chmod(0o755)
    path.chmod(0o755)
    return path


def run_as(user: pwd.struct_passwd | None, folder: Path, argv, sudo: bool, env=()):
    environ = {
        "PATH": str(bin_folder(folder, sudo)),
        "HOME": str(folder),
        "MANAGE_IMAGES_E2E": "1",
        "MANAGE_IMAGES_TRY_DIR": str(folder / "try"),
        "DOCKER_HOST": f"unix://{folder / 'no-engine.sock'}",
        "UNRELATED": "not kept",
        **dict(env),
    }
    ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(argv, cwd=folder, env=environ, capture_output=True, text=True, timeout=60, **ids)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_user_with_sudo_gets_the_script_run_again_as_root(script, user, folder, checkout):
    result = run_as(user, folder, ["bash", str(checkout / script), "one", "two words"], sudo=True)
    assert result.returncode == 0, result.stderr
    name = Path(script).name
    assert result.stderr == f"{name}: {SCRIPTS[script]} needs root: running it again with sudo\n"
    preserve, *argv = (folder / "sudo.log").read_text().splitlines()
    assert argv == ["bash", str(checkout / script), "one", "two words"]
    # The variables the scripts read go through sudo; nothing else is asked for.
    assert preserve.startswith("--preserve-env=")
    assert set(preserve.removeprefix("--preserve-env=").split(",")) == {
        "DOCKER_HOST",
        "MANAGE_IMAGES_E2E",
        "MANAGE_IMAGES_TRY_DIR",
    }
    assert not (folder / "try").exists(), "the script went on before it was root"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_user_without_sudo_is_told_in_one_line(script, user, folder, checkout):
    result = run_as(user, folder, ["bash", str(checkout / script)], sudo=False)
    assert result.returncode == 1
    name = Path(script).name
    assert result.stderr == (
        f"{name}: {SCRIPTS[script]} needs root, and sudo is not installed: run it again as root\n"
    )
    assert result.stdout == ""
    assert not (folder / "try").exists()


def test_root_goes_on_without_sudo(folder):
    if os.geteuid() != 0:
        unavailable("the test runs as root")
    helper = ROOT / "tests" / "as-root.sh"
    result = run_as(None, folder, ["bash", "-c", f'. "{helper}"; as_root why "$0"; echo went on'], sudo=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "went on\n", "")
    assert not (folder / "sudo.log").exists()


@pytest.mark.parametrize("script", PROVISIONED)
def test_a_provisioned_machine_needs_no_root(script, user, folder, checkout):
    # Provisioned already (.ci/run provisions both before the tests): nothing to do as root.
    if subprocess.run(("dpkg", "-s", "tmux"), capture_output=True).returncode != 0:
        unavailable("tmux is not installed: run tests/provision-terminal.sh")
    result = run_as(
        user,
        folder,
        ["bash", str(checkout / script)],
        sudo=True,
        env={"PATH": f"{folder}/bin-sudo:{SYSTEM_PATH}"},
    )
    assert result.returncode == 0, result.stderr
    assert not (folder / "sudo.log").exists()
