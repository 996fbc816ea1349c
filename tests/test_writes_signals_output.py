"""Regression tests for the README's guarantees on writes, signals and output,
each named after the promise it protects.

The disk is the truth at the moment of writing (an edit saved while the tool
runs is never written over; owner, group, ACL and extended attributes are
kept); all or nothing for every image through a rename that fails midway;
INT, TERM and HUP stop every mode the same way; output that cannot be
written stops the run cleanly. Real file systems, real users (`useradd`),
real ACLs and attributes (Debian's `acl` and `attr`), real signals and real
pipes; the stand-in `docker` only where the engine cannot be made to hang or
misbehave on purpose.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import (
    after_engine_questions,
    D1,
    NEW,
    SCRIPT,
    SYSTEM_PATH,
    Tool,
    all_digests,
    files,
    gone,
    ref,
    run_as,
    unavailable,
    usage_error,
    write,
)
from standin import script_argv


def system_tool(name: str) -> str:
    """The absolute path of a system command (the stand-in's PATH holds only docker and git)."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        message = f"`{name}` is not installed (.ci/run installs it with tests/provision-docker.sh)"
        unavailable(message)
    return found


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def commit(root: Path, message: str = "change") -> None:
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", message)


def temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob(".manage_images.*")]


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- 1. The disk is the truth at the moment of writing ------------------------


@pytest.mark.parametrize("save", ["in place", "by rename"])
def test_an_edit_saved_while_the_run_is_between_images_is_never_reverted(tree, standin, tmp_path, save):
    # cmake's rewrite has written ci/build.sh; while cmake-python builds, an
    # editor saves the file; cmake-python's rewrite must start from that.
    go = tmp_path / "go"
    standin.set(repo_digests=all_digests(), hang={"build": {"match": "cmake-python:", "until": str(go)}})
    tool = Tool(tree, "--image", "cmake", "--build", "--update_references")
    try:
        tool.wait_for_line("Processing image cmake-python ")
        script = tree / "ci" / "build.sh"
        edited = script.read_bytes() + b"echo saved by an editor\n"
        assert ref("cmake", NEW) in edited
        if save == "in place":
            script.write_bytes(edited)
        else:
            saved = tree / "ci" / ".build.sh.swp"
            saved.write_bytes(edited)
            saved.chmod(0o755)
            saved.rename(script)
        go.touch()
        code, out, err = tool.finish(timeout=120)
    finally:
        go.touch()
    assert code == 0, out + err
    assert script.read_bytes() == edited.replace(ref("cmake-python"), ref("cmake-python", NEW))
    assert "ci/build.sh changed on disk while the tool ran: computing the change again" in out


def test_a_file_that_changed_after_its_change_was_computed_is_never_written(tmp_path):
    target = write(tmp_path, "ci/build.sh", b"edited by someone else\n")
    change = mi.FileChange.whole("ci/build.sh", b"what the tool read\n", b"what it computed\n")
    with pytest.raises(mi.ChangedOnDisk) as raised:
        mi.write_all_or_nothing(tmp_path, [change], None)
    assert raised.value.paths == ("ci/build.sh",)
    assert target.read_bytes() == b"edited by someone else\n"
    assert temporaries(tmp_path) == []


def test_an_edit_saved_after_the_scan_read_a_file_is_kept_by_only_references(tree, monkeypatch, capsys):
    # --only_references rewrites a small file from the scan's read of it; an
    # edit saved after that read is found when the file is replaced, and the
    # change is computed again from the disk.
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(b"".join(ref(image, NEW) + b"\n" for image in mi.IMAGES_TO_DEPENDENCIES))
    script = tree / "ci" / "build.sh"
    edited = script.read_bytes() + b"echo saved by an editor\n"
    taken = mi.TrackedFiles.read_by_the_scan

    def then_edited(files):
        taken(files)
        assert files.scan.heads["ci/build.sh"] != edited
        script.write_bytes(edited)

    monkeypatch.setattr(mi.TrackedFiles, "read_by_the_scan", then_edited)
    assert mi.main(["--images", "all", "--only_references"]) == 0
    assert script.read_bytes() == edited.replace(D1.encode(), NEW.encode())
    assert (
        "ci/build.sh changed on disk while the tool ran: computing the change again"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "size", [100, 3 * mi.BLOCK * 16 + 5]
)  # one read; several blocks, changed in the last
def test_a_file_that_changed_to_as_many_bytes_is_never_written(tmp_path, size):
    # The same size says nothing: what the file holds is compared, to its last byte.
    read = b"r" * (size - 1) + b"\n"
    edited = b"r" * (size - 2) + b"e\n"
    target = write(tmp_path, "ci/build.sh", edited)
    change = mi.FileChange.whole("ci/build.sh", read, b"what it computed\n")
    with pytest.raises(mi.ChangedOnDisk):
        mi.write_all_or_nothing(tmp_path, [change], None)
    assert target.read_bytes() == edited
    assert temporaries(tmp_path) == []


def test_a_run_as_root_in_a_users_checkout_leaves_every_file_the_users(tree, standin, user, monkeypatch):
    # `sudo manage_images.py ...` where docker needs root: sudo sets SUDO_UID,
    # which is also how git accepts the user's repository from root.
    for path in [tree, *tree.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    monkeypatch.setenv("SUDO_UID", str(user.pw_uid))
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert ref("cmake", NEW) in (tree / "ci" / "build.sh").read_bytes()
    owners = {
        str(path.relative_to(tree)): (path.lstat().st_uid, path.lstat().st_gid)
        for path in tree.rglob("*")
        if ".git" not in path.parts
    }
    assert {name for name, owner in owners.items() if owner != (user.pw_uid, user.pw_gid)} == set()


def test_a_rewritten_file_keeps_its_acl_and_extended_attributes_and_its_group_gains_nothing(tree, standin):
    script = tree / "ci" / "build.sh"
    script.chmod(0o740)
    # The owning group may read; one other user may also write. The mode's
    # group bits then show the ACL's mask (rw), not the group's permissions.
    run(system_tool("setfacl"), "-m", "user:nobody:rw-,group::r--", str(script))
    run(system_tool("setfattr"), "-n", "user.origin", "-v", "kept", str(script))
    acl = run(system_tool("getfacl"), "--omit-header", str(script))
    mode = script.stat().st_mode
    assert "group::r--" in acl and "user:nobody:rw-" in acl
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert ref("cmake", NEW) in script.read_bytes()
    assert run(system_tool("getfacl"), "--omit-header", str(script)) == acl
    assert os.getxattr(script, "user.origin") == b"kept"
    assert script.stat().st_mode == mode


def test_a_folders_default_acl_gives_a_rewritten_file_no_permission_it_did_not_have(tree, standin):
    script = tree / "ci" / "build.sh"
    assert "system.posix_acl_access" not in os.listxattr(script)
    # Set after the file was made: files created in ci/ from now on inherit it.
    run(system_tool("setfacl"), "-d", "-m", "user:nobody:rwx", str(tree / "ci"))
    mode = script.stat().st_mode
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert ref("cmake", NEW) in script.read_bytes()
    assert "system.posix_acl_access" not in os.listxattr(script)
    assert script.stat().st_mode == mode


@pytest.fixture
def other_group():
    """A real group the test's user is not a member of."""
    name = f"mg{uuid.uuid4().hex[:10]}"
    run(system_tool("groupadd"), name)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run((system_tool("groupdel"), name), capture_output=True)


def test_a_file_whose_group_cannot_be_kept_is_refused_naming_it(tree, user, other_group, shared_folder):
    # The user runs the tool in its own checkout, where one file belongs to a
    # group the user is not in: only root could give the new file that group.
    pin_cmake_anew(tree)
    repo = shared_folder / "repo"
    shutil.copytree(tree, repo, symlinks=True)
    for path in [repo, *repo.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    script = repo / "ci" / "build.sh"
    os.chown(script, user.pw_uid, other_group.gr_gid)
    before = files(repo)
    result = run_as(user, shared_folder, repo, "--image", "cmake", "--only_references")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        f"cannot write ci/build.sh: cannot keep its owner and group (uid {user.pw_uid}, gid "
        f"{other_group.gr_gid}): Operation not permitted; run as its owner, or as root; no file was "
        "changed for this image, fix the cause and run again\n"
    )
    assert files(repo) == before
    assert (script.stat().st_uid, script.stat().st_gid) == (user.pw_uid, other_group.gr_gid)
    assert temporaries(repo) == []


# --- 2. All or nothing, through a rename that fails midway --------------------


@pytest.fixture(params=["append-only", "bind mount"])
def unreplaceable(request, tree, tmp_path):
    """ci/build.sh, the last file cmake's rewrite replaces, made impossible to
    replace for real: `chattr +a`, or another file bind-mounted over it."""
    script = tree / "ci" / "build.sh"
    if request.param == "append-only":
        result = subprocess.run((system_tool("chattr"), "+a", str(script)), capture_output=True, text=True)
        undo = (system_tool("chattr"), "-a", str(script))
        hint = "(an append-only or immutable file? see `lsattr`)"
        error = "Operation not permitted"
    else:
        source = tmp_path / "mounted-build.sh"
        shutil.copy2(script, source)
        result = subprocess.run(
            (system_tool("mount"), "--bind", str(source), str(script)), capture_output=True, text=True
        )
        undo = (system_tool("umount"), str(script))
        hint = "(a mount point, such as a file bind-mounted there, cannot be replaced)"
        error = "Device or resource busy"
    if result.returncode != 0:
        message = f"cannot make a file unreplaceable here ({request.param}): {result.stderr.strip()}"
        unavailable(message)
    try:
        yield f"{error} {hint}"
    finally:
        subprocess.run(undo, check=True)


def pin_cmake_anew(tree: Path) -> None:
    """prod_digests.txt pins every image, cmake to NEW (its references in the tree say D1)."""
    lines = [ref(image, NEW if image == "cmake" else D1) + b"\n" for image in mi.IMAGES_TO_DEPENDENCIES]
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(b"".join(lines))
    commit(tree)


def test_a_rename_that_fails_midway_puts_back_every_file_of_the_image(tree, standin, unreplaceable, capsys):
    others = ["build_tools/docker/cmake-python/Dockerfile", "build_tools/docker/prod_digests.txt"]
    inodes = {name: (tree / name).stat().st_ino for name in others}
    before = files(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert capsys.readouterr().err == (
        f"cannot replace ci/build.sh: {unreplaceable}; every file of this image was put back as it was, "
        "fix the cause and run again\n"
    )
    assert files(tree) == before
    # Put back means the old files themselves, not copies of them.
    assert {name: (tree / name).stat().st_ino for name in others} == inodes
    assert temporaries(tree) == []


def test_a_refused_write_is_not_summarised_as_done(tree, standin, unreplaceable, capsys, tmp_path):
    pin_cmake_anew(tree)
    before = files(tree)
    report = tmp_path / "report.json"
    assert mi.main(["--image", "cmake", "--only_references", "--json", str(report)]) == 1
    out, err = capsys.readouterr()
    assert err == (
        f"cannot replace ci/build.sh: {unreplaceable}; every file of this image was put back as it was, "
        "fix the cause and run again\n"
    )
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("  cmake ")] == [
        ["cmake", "failed"]
    ]
    results = {image["name"]: image["result"] for image in json.loads(report.read_text())["images"]}
    assert results["cmake"] == "failed"
    assert set(results.values()) == {"failed", "done"}  # the others had nothing to write
    assert files(tree) == before


# --- 3. Signals stop every mode the same way -----------------------------------


class SilentEngine:
    """A Docker socket that accepts connections and never answers: a hung engine."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "docker.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(8)

    def accepted(self, timeout: float = 60) -> socket.socket:
        self.server.settimeout(timeout)
        client, _ = self.server.accept()
        return client


def test_sigterm_before_the_steps_start_stops_the_run_writes_the_report_and_exits_143(tree, tmp_path):
    engine = SilentEngine(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": SYSTEM_PATH,
        "DOCKER_HOST": f"unix://{engine.path}",
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
    }
    system_tool("docker")
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--image",
            "cmake",
            "--build",
            "--update_references",
            "--json",
            str(report),
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        connection = engine.accepted()  # `docker version` waits for the engine
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, out + err
    assert "Interrupted by SIGTERM" in out
    document = json.loads(report.read_text())
    assert (document["exit_code"], document["error"]) == (143, "interrupted by SIGTERM")
    connection.settimeout(10)  # the docker client is gone: its end of the socket closes
    while connection.recv(65536):
        pass
    assert not (tree / ".git" / "manage_images.lock").exists()


def test_sigterm_during_check_stops_it_even_when_nobody_reads_its_output(tree, tmp_path):
    # Over 64 KiB of findings into a pipe nobody reads: --check blocks writing them.
    write(tree, "ci/many.txt", b"".join(ref("cmake", "sha256:" + "e" * 64) + b"\n" for _ in range(2000)))
    commit(tree)
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--check", "--image", "cmake", "--json", str(report)],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while "pipe_write" not in Path(f"/proc/{process.pid}/wchan").read_text():
            assert time.monotonic() < deadline and process.poll() is None, "never blocked on its output"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        process.kill()
    assert code == 143
    document = json.loads(report.read_text())
    assert document["exit_code"] == 143
    assert len([finding for finding in document["findings"] if finding["path"] == "ci/many.txt"]) == 2000


def test_a_signal_while_only_references_writes_leaves_no_temporary_file_and_writes_the_report(
    tree, standin, tmp_path
):
    notes = tree / "notes"
    for number in range(3000):
        write(tree, f"notes/{number:04}.txt", b"note\n" + ref("cmake") + b"\n")
    pin_cmake_anew(tree)
    old = fake_tree.tracked_files(tree)
    report = tmp_path / "report.json"
    tool = Tool(tree, "--image", "cmake", "--only_references", "--json", str(report))
    deadline = time.monotonic() + 120
    while not any(name.startswith(".manage_images.") for name in os.listdir(notes)):
        assert time.monotonic() < deadline and tool.process.poll() is None, "never saw the write under way"
    tool.send_signal(signal.SIGTERM)
    code, out, err = tool.finish(timeout=120)
    assert code == 143, out + err
    assert temporaries(tree) == []
    assert json.loads(report.read_text())["exit_code"] == 143
    # All or nothing: every file of the image old, or every one new.
    after = fake_tree.tracked_files(tree)
    changed = {name for name in after if after[name] != old[name]}
    assert changed in (set(), {name for name in old if ref("cmake") in old[name]})
    assert not (tree / ".git" / "manage_images.lock").exists()


def test_sighup_during_a_docker_step_stops_the_command(tree, standin, tmp_path):
    pidfile = tmp_path / "build.pid"
    standin.set(hang={"build": {"pidfile": str(pidfile)}})
    report = tmp_path / "report.json"
    tool = Tool(tree, "--image", "cmake", "--build", "--json", str(report))
    wait_for(pidfile)
    child = int(pidfile.read_text())
    try:
        tool.send_signal(signal.SIGHUP)
        code, out, err = tool.finish(timeout=60)
        assert code == 129, out + err
        assert gone(child)
    finally:
        kill_quietly(child)
    assert json.loads(report.read_text())["exit_code"] == 129
    assert [command[1] for command in after_engine_questions(standin.commands())] == ["build"]


def test_a_command_that_ignores_sigterm_is_killed_after_a_short_grace_period(tree, standin, tmp_path):
    pidfile = tmp_path / "build.pid"
    standin.set(hang={"build": {"pidfile": str(pidfile), "ignore_term": True}})
    tool = Tool(tree, "--image", "cmake", "--build")
    wait_for(pidfile)
    child = int(pidfile.read_text())
    try:
        started = time.monotonic()
        tool.send_signal(signal.SIGTERM)
        code, out, err = tool.finish(timeout=mi.STOP_GRACE + 30)
        assert code == 143, out + err
        assert mi.STOP_GRACE - 1 <= time.monotonic() - started < mi.STOP_GRACE + 15
        assert gone(child)
    finally:
        tool.process.kill()
        kill_quietly(child)


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_docker_image_inspect_killed_by_a_signal_exits_128_plus_n(tree, standin, capsys, dry_run):
    standin.set(signal={"image": 9})
    assert mi.main(["--image", "cmake-python", "--update_references", *dry_run]) == 137
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("Command failed with exit code 137: `docker image inspect --format ")
    assert "gcr.io/iree-oss/cmake-python:latest" in err and err.endswith("` (killed by SIGKILL)\n")


# --- 4. Output that cannot be written is not an error of the job --------------


def test_a_closed_standard_output_stops_the_run_with_one_line_and_changes_nothing(tree, standin):
    standin.set(repo_digests=all_digests())
    before = files(tree)
    result = subprocess.run(
        [system_tool("bash"), "-c", 'exec "$@" >&-', "-"]
        + script_argv("--image", "cmake-python", "--update_references"),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr == "manage_images.py: cannot write to standard output: Bad file descriptor; stopped\n"
    )
    assert files(tree) == before
    assert after_engine_questions(standin.commands()) == []  # none after the first line


def piped(
    tree: Path, reader: list[str], *args: str
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The tool run as `manage_images.py ARGS | READER`, the pipe's read end held by READER alone."""
    tool = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert tool.stdout is not None
    head = subprocess.Popen(reader, stdin=tool.stdout, stdout=subprocess.PIPE)
    tool.stdout.close()
    return tool, head


@pytest.mark.parametrize("reader", [["head", "-1"], ["grep", "-m1", "still working"]])
def test_a_pipe_closed_early_stops_the_run_quietly_and_stops_its_commands(tree, standin, tmp_path, reader):
    # `head -1` leaves after the first line, before any docker command or
    # while the first one starts; `grep -m1` once the build prints.
    # The line `head` must get: the first of the same run, read to its end.
    whole = subprocess.run(
        [sys.executable, str(SCRIPT), "--image", "cmake", "--build"],
        cwd=tree,
        capture_output=True,
        timeout=60,
    )
    assert whole.returncode == 0, whole.stdout + whole.stderr
    standin.log.unlink()
    pidfile = tmp_path / "build.pid"
    standin.set(hang={"build": {"pidfile": str(pidfile), "tick": 0.1}})
    tool, head = piped(tree, [system_tool(reader[0]), *reader[1:]], "--image", "cmake", "--build")
    try:
        first, _ = head.communicate(timeout=60)
        _, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
        if pidfile.exists():
            kill_quietly(int(pidfile.read_text()))
    assert tool.returncode == 128 + signal.SIGPIPE
    assert err == b""
    if reader[0].endswith("head"):
        assert first == whole.stdout.splitlines(keepends=True)[0]
    else:
        assert first.startswith(b"standin")
    builds = [command for command in standin.commands() if command[1] == "build"]
    assert len(builds) <= 1  # nothing started after the pipe closed
    if reader[0].endswith("grep"):
        assert pidfile.exists() and builds
    if pidfile.exists():
        assert gone(int(pidfile.read_text()))


def test_dev_full_as_standard_output_gives_one_line(tree, standin):
    standin.set(repo_digests=all_digests())
    before = files(tree)
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            script_argv("--image", "cmake-python", "--update_references"),
            cwd=tree,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr == (
        "manage_images.py: cannot write to standard output: No space left on device; stopped\n"
    )
    assert files(tree) == before


def unwritable_standard_error(kind: str):
    """A standard error that takes no line: /dev/full, or a pipe whose reader is gone."""
    if kind == "/dev/full":
        return open("/dev/full", "w")
    read, write = os.pipe()
    os.close(read)
    return os.fdopen(write, "w")


@pytest.mark.parametrize("json_out", [False, True], ids=["summary", "json"])
@pytest.mark.parametrize("kind", ["/dev/full", "closed pipe"])
def test_a_standard_error_that_cannot_be_written_drops_its_lines_and_the_run_ends_as_it_would(
    tree, standin, kind, json_out
):
    # The failed build's line goes to standard error, which cannot take it: the
    # run still ends as it would have, the command's own exit code passed on,
    # and standard output holds its summary (or, with --json -, the report).
    standin.set(fail={"build": 7}, repo_digests=all_digests())
    before = files(tree)
    args = ("--image", "cmake", "--build", "--update_references", "-j", "2")
    with unwritable_standard_error(kind) as stderr:
        result = subprocess.run(
            script_argv(*args, *(("--json", "-") if json_out else ())),
            cwd=tree,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=60,
        )
    assert result.returncode == 7, result.stdout
    if json_out:
        report = json.loads(result.stdout)
        results = {image["name"]: image["result"] for image in report["images"]}
        assert report["exit_code"] == 7 and results["cmake"] == "failed", report
    else:
        assert "Summary:" in result.stdout and "Traceback" not in result.stdout
    assert [command[1] for command in standin.commands()].count("build") == 1  # its dependents wait
    assert files(tree) == before


def test_json_with_an_empty_file_name_is_a_usage_error(capsys):
    assert "--json '': give a file name, or - for standard output" in usage_error(
        ["--check", "--image", "cmake", "--json", ""], capsys
    )


def test_an_unwritable_json_path_is_found_before_any_work(tree, standin, capsys):
    standin.set(repo_digests=all_digests())
    before = files(tree)
    err = usage_error(["--image", "cmake", "--update_references", "--json", "missing/report.json"], capsys)
    assert "--json 'missing/report.json': the folder missing does not exist" in err
    assert files(tree) == before
    assert standin.commands() == []


def test_the_json_report_is_created_with_the_umask(tree, tmp_path):
    report = tmp_path / "report.json"
    umask = os.umask(0o027)
    try:
        assert (
            mi.main(["--check", "--image", "cmake", "--json", str(report)]) == 1
        )  # the small tree has findings
    finally:
        os.umask(umask)
    assert report.stat().st_mode & 0o777 == 0o640
    assert json.loads(report.read_text())["exit_code"] == 1
