"""The suite passes wherever the checkout lives (issue 33).

A newcomer's first step is often `git clone` into /root or into a `mktemp -d`
folder, both 0700, and a path may hold a space or a non-ASCII character.
Tests that run the tool as a second user (marker as_user: every test using
the `user` fixture) must first put what that user needs where it can read it
(helpers.run_as), and programs the tests write must start from an
interpreter whose path holds a space (standin.python_executable): .ci/run's
interpreter is the clone's own .venv.

The first test runs the as_user tests from such a clone: a real `git clone`
of this checkout, its working tree laid over it (so uncommitted edits are
what is tested), inside a `mktemp -d` folder, under a path with a space and a
non-ASCII character, nothing in it readable by anyone but root (as under
umask 077), with an interpreter in the clone's .venv. It needs root, as the
as_user tests do.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import fake_tree
from auth_servers import credential_helper
from helpers import TESTS, unavailable
from standin import StandIn

CHECKOUT = TESTS.parent
# Where the clone goes, under a `mktemp -d` folder: a space and a non-ASCII character.
PLACE = Path("checkouts de Zoë") / "iree oss"
# What the nested run may not pass on: the module under test is the clone's.
NOT_PASSED_ON = ("MANAGE_IMAGES_SCRIPT", "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")


def clone_of_this_checkout(destination: Path) -> Path:
    """A `git clone` of this checkout at `destination` holding its working tree
    as it is (edits, new files and deletions git does not ignore included),
    every file readable and every folder enterable by its owner alone."""
    destination.parent.mkdir(parents=True)
    # No hard links: the modes set below must not reach this checkout's objects.
    subprocess.run(
        ("git", *fake_tree.GIT_ISOLATION, "clone", "-q", "--no-hardlinks", str(CHECKOUT), str(destination)),
        check=True,
        capture_output=True,
    )
    listed = fake_tree.git(CHECKOUT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in dict.fromkeys(filter(None, listed.split("\0"))):
        source, target = CHECKOUT / name, destination / name
        if source.is_file() and not source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            shutil.copymode(source, target)
        elif not source.exists() and not source.is_symlink():
            target.unlink(missing_ok=True)
    return destination


def owner_only(root: Path) -> None:
    """Every file and folder under `root` as `umask 077` would have made it."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)


def interpreter_in(clone: Path) -> Path:
    """A .venv in `clone`, as .ci/run makes, seeing this interpreter's packages
    (pytest and the test extra) instead of installing them again."""
    venv = clone / ".venv"
    subprocess.run(
        (sys.executable, "-m", "venv", "--without-pip", str(venv)), check=True, capture_output=True
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        (str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [path for path in (*site.getsitepackages(), site.getusersitepackages()) if os.path.isdir(path)]
    added = "; ".join(f"site.addsitedir({path!r})" for path in ours)
    (Path(purelib) / "this-sessions-packages.pth").write_text(f"import site; {added}\n")
    return python


def test_the_user_switching_tests_pass_from_a_clone_in_a_0700_folder_with_a_space_and_non_ascii():
    if os.geteuid() != 0:
        message = "the as_user tests need root, to add a user"
        unavailable(message)
    top = Path(tempfile.mkdtemp(prefix="mi-clone-"))
    try:
        assert top.stat().st_mode & 0o777 == 0o700
        clone = clone_of_this_checkout(top / PLACE)
        python = interpreter_in(clone)
        owner_only(top)
        env = {name: value for name, value in os.environ.items() if name not in NOT_PASSED_ON}
        result = subprocess.run(
            (
                str(python),
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-m",
                "as_user",
                f"--basetemp={top / 'basetemp'}",
            ),
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        report = result.stdout[-6000:] + result.stderr[-2000:]
        assert result.returncode == 0, report
        # Every as_user test passed: none skipped, none failed.
        closing = result.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"[1-9]\d* passed, \d+ deselected in .*", closing), report
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def spaced_interpreter(tmp_path, monkeypatch) -> Path:
    """This interpreter, as sys.executable, at a path with a space and a non-ASCII character."""
    python = tmp_path / "py thön" / "python3"
    python.parent.mkdir()
    python.symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setattr(sys, "executable", str(python))
    return python


def test_the_stand_in_docker_and_a_credential_helper_start_from_an_interpreter_path_with_a_space(
    spaced_interpreter, tmp_path
):
    standin = StandIn(tmp_path / "standin")
    env = {**os.environ, **standin.environ()}
    version = subprocess.run(("docker", "version"), env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert standin.commands() == [["docker", "version"]]
    folder, asked = credential_helper(tmp_path / "helper", {"r.test": {"Username": "u", "Secret": "s"}})
    got = subprocess.run(
        (str(folder / "docker-credential-test"), "get"), input="r.test\n", capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == '{"ServerURL": "r.test", "Username": "u", "Secret": "s"}\n'
    assert asked.read_text() == '[["get"], "r.test"]\n'
