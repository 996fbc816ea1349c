"""Regression tests for the README's guarantees, each named after the promise it protects.

Every test here failed on the code before the fix it pins: WORKSPACE read as
Starlark, the repository lock, no write through a symbolic link, all-or-nothing
writes, no silent miss, tracked files only, build contexts inside the work
tree, strict input, and no traceback. They run on real file systems (tmpfs,
symbolic links), real git repositories and real concurrent processes, with a
stand-in `docker`; the engine is not needed to refuse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_tree
import manage_images as mi
from helpers import D1, D2, NEW, SCRIPT, all_digests, files, ref, unavailable, unlabelled, usage_error, write
from standin import script_argv

RBE_URL = "gcr.io/iree-oss/rbe-toolchain"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
OTHER = "sha256:" + "e" * 64


def commit(root: Path, message: str = "change") -> None:
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", message)


def run_script(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    # With the stand-in docker, the stand-in registry answers too.
    argv = script_argv(*args) if env and "STANDIN_CONFIG" in env else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(
        argv,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rbe_workspace(digest_line: bytes, before: bytes = b"", inside: bytes = b"") -> bytes:
    return (
        b'load("@bazel_toolchains//rules:rbe_repo.bzl", "rbe_autoconfig")\n' + before + b"rbe_autoconfig(\n"
        b'    name = "rbe_default",\n' + inside + b"    " + digest_line + b"\n"
        b'    registry = "gcr.io",\n'
        b'    repository = "iree-oss/rbe-toolchain",\n'
        b")\n"
    )


# --- 1. WORKSPACE is read as Starlark: comments and strings never fool it ------


def test_workspace_comment_before_the_rule_does_not_grow_a_placeholder_digest():
    data = rbe_workspace(b'digest = "sha256:TODO",', before=b"# See rbe_autoconfig( below.\n")
    once, count = mi.rewrite_workspace(data, RBE_URL, NEW)
    assert count == 1
    assert once == data.replace(b"sha256:TODO", NEW.encode())
    assert mi.rewrite_workspace(once, RBE_URL, D1)[0] == data.replace(b"sha256:TODO", D1.encode())


def test_workspace_commented_old_digest_inside_the_rule_stays_a_comment():
    old_line = b'    # digest = "' + D2.encode() + b'",\n'
    data = rbe_workspace(b'digest = "' + D1.encode() + b'",', inside=old_line)
    new, _ = mi.rewrite_workspace(data, RBE_URL, NEW)
    assert new == data.replace(D1.encode(), NEW.encode())
    assert old_line in new


def test_workspace_commented_registry_line_does_not_hide_the_rule():
    data = rbe_workspace(b'digest = "' + D1.encode() + b'",', inside=b'    # registry = "example.com",\n')
    assert mi.rewrite_workspace(data, RBE_URL, NEW) == (data.replace(D1.encode(), NEW.encode()), 1)


def test_workspace_single_quoted_digest_is_rewritten_keeping_its_quotes():
    data = rbe_workspace(b"digest = '" + D1.encode() + b"',")
    assert mi.rewrite_workspace(data, RBE_URL, NEW)[0] == data.replace(D1.encode(), NEW.encode())


@pytest.mark.parametrize(
    "digest_line",
    [
        b'digest = "sha256:" + "' + D1.encode()[7:] + b'",',
        b'digest = "sha256:" "' + D1.encode()[7:] + b'",',
        b"digest = DIGEST,",
        b'digest = f"' + D1.encode() + b'",',
    ],
)
def test_workspace_digest_that_is_not_a_plain_literal_is_an_error_naming_its_line(digest_line):
    data = rbe_workspace(digest_line)
    with pytest.raises(
        mi.WorkspaceError, match=r"^WORKSPACE:4: rbe_autoconfig `digest` is not a plain string"
    ):
        mi.rewrite_workspace(data, RBE_URL, NEW)
    (finding,) = mi.workspace_findings(data, RBE_URL, D1, "prod.txt")
    assert (finding.path, finding.line, finding.kind) == ("WORKSPACE", 4, "workspace")


def test_workspace_registry_that_is_not_a_literal_is_an_error():
    data = rbe_workspace(b'digest = "' + D1.encode() + b'",').replace(
        b'registry = "gcr.io"', b"registry = REG"
    )
    with pytest.raises(mi.WorkspaceError, match="^WORKSPACE:5: rbe_autoconfig `registry` is not a plain"):
        mi.rewrite_workspace(data, RBE_URL, NEW)


def test_workspace_that_does_not_parse_is_an_error_naming_its_line():
    data = rbe_workspace(b'digest = "' + D1.encode() + b'",') + b'x = "unterminated\n'
    with pytest.raises(mi.WorkspaceError, match=r"^WORKSPACE:8: does not parse as Starlark"):
        mi.rewrite_workspace(data, RBE_URL, NEW)


def test_workspace_rule_for_another_image_is_never_rewritten():
    data = rbe_workspace(b'digest = "' + D1.encode() + b'",').replace(b"rbe-toolchain", b"other")
    assert mi.rewrite_workspace(data, RBE_URL, NEW) == (data, 0)


@pytest.mark.parametrize("mode", [["--update_references"], ["--only_references"]])
def test_workspace_placeholder_and_a_reference_after_it_are_both_rewritten(tree, standin, mode):
    # Filling in the placeholder makes the file longer: the reference below it
    # must be found in the new content, not at its old offset.
    data = rbe_workspace(b'digest = "sha256:TODO",') + b"# was " + ref("rbe-toolchain", D1) + b"\n"
    (tree / "WORKSPACE").write_bytes(data)
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(prod.read_bytes() + ref("rbe-toolchain", NEW) + b"\n")
    commit(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "rbe-toolchain", *mode]) == 0
    assert (tree / "WORKSPACE").read_bytes() == data.replace(b"sha256:TODO", NEW.encode()).replace(
        D1.encode(), NEW.encode()
    )


def test_workspace_placeholder_is_a_check_finding(tree, capsys):
    (tree / "WORKSPACE").write_bytes(rbe_workspace(b'digest = "sha256:TODO",', before=b"# rbe_autoconfig(\n"))
    commit(tree)
    assert mi.main(["--check", "--image", "rbe-toolchain"]) == 1
    out = capsys.readouterr().out
    assert "WORKSPACE:5: rbe_autoconfig digest 'sha256:TODO' is not a well-formed digest" in out


def test_workspace_problem_stops_the_run_before_any_command(tree, standin, capsys):
    (tree / "WORKSPACE").write_bytes(rbe_workspace(b'digest = "sha256:" + "' + D1.encode()[7:] + b'",'))
    commit(tree)
    before = files(tree)
    assert mi.main(["--image", "rbe-toolchain", "--build", "--push", "--update_references"]) == 1
    assert capsys.readouterr().err.startswith("WORKSPACE:4: rbe_autoconfig `digest` is not a plain string")
    assert standin.commands() == []
    assert files(tree) == before


_FIELD = st.sampled_from(
    [
        b'name = "rbe_default",',
        b'base_container_digest = "' + D2.encode() + b'",',
        b'env = {"A": "(b)", "digest": "x"},',
        b'use_checked_in_confs = "Force",',
        b'# digest = "' + OTHER.encode() + b'",',
        b"# registry = 'elsewhere',",
        b'exec_properties = {"x": ")"},',
    ]
)
_NOISE = st.sampled_from(
    [
        b'# rbe_autoconfig(digest = "sha256:0")\n',
        b'doc = """rbe_autoconfig(\n  digest = "sha256:1"\n)"""\n',
        b"s = \"rbe_autoconfig(digest = 'x')\"\n",
        b'container_pull(name = "p", digest = "'
        + OTHER.encode()
        + b'", registry = "gcr.io", repository = "iree-oss/rbe-toolchain2")\n',
        b'rbe_autoconfig(name = "google", digest = "' + OTHER.encode() + b'")\n',
        b"\n",
        b"   \n",
    ]
)


@st.composite
def workspaces(draw) -> tuple[bytes, int]:
    """A WORKSPACE with noise around one or two rules pinning RBE_URL; and how many."""
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    space = draw(st.sampled_from([b" ", b"", b"  ", b"\t"]))
    quote = draw(st.sampled_from([b'"', b"'"]))
    rules = draw(st.integers(min_value=1, max_value=2))
    parts = []
    for _ in range(rules):
        parts += draw(st.lists(_NOISE, max_size=3))
        fields = draw(st.lists(_FIELD, max_size=4))
        fields += [
            b"digest" + space + b"=" + space + quote + D1.encode() + quote + b",",
            b'registry = "gcr.io",',
            b"repository" + space + b"=" + b'"iree-oss/rbe-toolchain",',
        ]
        order = draw(st.permutations(fields))
        parts.append(
            b"rbe_autoconfig" + space + b"(\n" + b"".join(b"    " + f + b"\n" for f in order) + b")\n"
        )
    parts += draw(st.lists(_NOISE, max_size=3))
    return b"".join(parts).replace(b"\n", newline), rules


@given(workspaces())
@settings(max_examples=200, deadline=None)
def test_workspace_rewrite_changes_only_the_rule_digest_literals(case):
    data, rules = case
    new, count = mi.rewrite_workspace(data, RBE_URL, NEW)
    assert count == rules
    # Exactly the real digest literals changed: every other byte stays.
    digest_literals = [b'"' + D1.encode() + b'"', b"'" + D1.encode() + b"'"]
    expected = data
    for literal in digest_literals:
        expected = expected.replace(literal, literal.replace(D1.encode(), NEW.encode()))
    assert new == expected
    assert new.count(OTHER.encode()) == data.count(OTHER.encode())


# --- 2. The repository lock: two runs at once never lose an edit ---------------


def many_files(root: Path, count: int) -> None:
    for number in range(count):
        write(
            root, f"many/{number:04}.txt", ref("cmake-android") + b"\n" + ref("cmake-python-nvidia") + b"\n"
        )
    commit(root, "many files")


def test_two_runs_at_once_lose_no_edit(tree, standin):
    many_files(tree, 2000)
    standin.set(repo_digests=all_digests())
    env = {**os.environ, **standin.environ()}
    images = ("cmake-android", "cmake-python-nvidia")
    runs = [
        subprocess.Popen(
            script_argv("--image", image, "--update_references"),
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for image in images
    ]
    outcomes = [(image, *run.communicate(timeout=300), run.returncode) for image, run in zip(images, runs)]
    for image, _, err, code in outcomes:
        if code != 0:  # it found the lock taken: it says so, and a rerun completes the job
            assert "another manage_images.py run holds the repository lock" in err, err
            assert run_script(tree, "--image", image, "--update_references", env=env).returncode == 0
    expected = ref("cmake-android", NEW) + b"\n" + ref("cmake-python-nvidia", NEW) + b"\n"
    assert all((tree / f"many/{n:04}.txt").read_bytes() == expected for n in range(2000))
    assert b"cmake-android@" + NEW.encode() in (tree / "build_tools/docker/prod_digests.txt").read_bytes()


HOLDER = """
import sys, time
from pathlib import Path
import manage_images as mi
root = Path(sys.argv[1])
lock = mi.RepositoryLock.acquire(root, "manage_images.py --image base --update_references", mi.Console(sys.stdout))
temporary = root / "ci" / ".manage_images.0123456789ab.tmp"
lock.record([temporary])
temporary.write_bytes(b"half")
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_run_fails_at_once_naming_the_lock_holder(tree, standin):
    standin.set(repo_digests=all_digests())
    env = {**os.environ, **standin.environ()}
    holder = hold_lock(tree)
    try:
        before = files(tree)
        result = run_script(tree, "--image", "cmake", "--update_references", env=env)
        lock = tree / ".git" / "manage_images.lock"
        assert result.returncode == 1
        assert result.stderr == (
            f"another manage_images.py run holds the repository lock {lock} (pid {holder.pid}: "
            "manage_images.py --image base --update_references); wait for it to finish and run again "
            f"(if no such process runs, delete {lock})\n"
        )
        assert files(tree) == before
        # Read-only modes need no lock.
        checked = run_script(tree, "--check", "--image", "cmake", env=env)
        assert (
            f"Checked {len(mi.ordered_images_to_process(['cmake'], mi.IMAGES_TO_DEPENDENCIES))} images"
            in checked.stdout
        )
        assert "lock" not in checked.stderr
        dry_run = run_script(tree, "-n", "--image", "cmake", "--update_references", env=env)
        assert dry_run.returncode == 0, dry_run.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_run_blocks_nothing_and_its_temporary_file_is_removed(tree, standin):
    standin.set(repo_digests=all_digests())
    env = {**os.environ, **standin.environ()}
    holder = hold_lock(tree)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    leftover = tree / "ci" / ".manage_images.0123456789ab.tmp"
    assert leftover.exists()
    result = run_script(tree, "--image", "cmake-python", "--update_references", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        f"A run that was killed left {tree / '.git' / 'manage_images.lock'} (pid {holder.pid}: "
        in result.stdout
    )
    assert "removed the 1 temporary files it was writing" in result.stdout
    assert not leftover.exists()
    assert not (tree / ".git" / "manage_images.lock").exists()


# --- 3. Never a write through a symbolic link ----------------------------------


def test_a_folder_replaced_by_a_symlink_out_of_the_tree_is_not_written(tree, standin, capsys):
    outside = tree.parent / "outside-ci"
    (tree / "ci").rename(outside)
    (tree / "ci").symlink_to(outside)
    before = (outside / "build.sh").read_bytes()
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake-python", "--update_references"]) == 0
    assert (outside / "build.sh").read_bytes() == before
    err = capsys.readouterr().err
    assert (
        err
        == "warning: not updating ci/build.sh: ci is a symbolic link, and the tool never reads or writes through one\n"
    )
    assert mi.main(["--check", "--image", "cmake-python"]) == 1
    assert "ci/build.sh:1: not checked: ci is a symbolic link" in capsys.readouterr().out


def test_build_tools_docker_as_a_symlink_is_never_written_or_built(tree, standin, capsys):
    docker_dir = tree / "build_tools" / "docker"
    outside = tree.parent / "outside-docker"
    docker_dir.rename(outside)
    docker_dir.symlink_to(outside)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--build", "--update_references"]) == 1
    assert capsys.readouterr().err.startswith(
        "refusing to build cmake: build_tools/docker is a symbolic link, and the tool never reads or writes"
    )
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert (
        "build_tools/docker/prod_digests.txt: build_tools/docker is a symbolic link"
        in capsys.readouterr().err
    )
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    assert [c for c in standin.commands() if c[1] != "version"] == []


# --- 4. All or nothing, for real ---------------------------------------------


@pytest.fixture
def small_tmpfs(tree):
    """`tree/full`: a tracked folder on a 64 KiB tmpfs with almost no space left."""
    mount = tree / "full"
    mount.mkdir()
    result = subprocess.run(
        [
            shutil.which("mount", path=SYSTEM_PATH) or "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            str(mount),
        ],
        capture_output=True,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}"
        unavailable(message)
    try:
        yield mount
    finally:
        subprocess.run([shutil.which("umount", path=SYSTEM_PATH) or "umount", "-l", str(mount)], check=True)


def test_disk_full_while_writing_changes_no_file(tree, standin, small_tmpfs, capsys):
    write(tree, "full/pin.txt", ref("cmake") + b"\n")
    commit(tree, "a pin on the small file system")
    (tree / ".git" / "info").mkdir(exist_ok=True)
    with open(tree / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write("full/filler\n")
    with open(small_tmpfs / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 1024)
        except OSError:
            pass
    standin.set(repo_digests=all_digests())
    before = files(tree)
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "cannot write full/pin.txt: No space left on device; no file was changed for this image, "
        "fix the cause and run again\n"
    )
    assert files(tree) == before
    assert not [name for name in os.listdir(tree / "ci") + os.listdir(small_tmpfs) if name.endswith(".tmp")]
    assert ref("cmake") in (tree / "ci/build.sh").read_bytes()


def test_a_folder_that_cannot_be_written_is_named_whatever_folder_came_before(tree, small_tmpfs):
    # Which folders are writable is asked once per folder: a writable one never vouches for another.
    mount = shutil.which("mount", path=SYSTEM_PATH) or "mount"
    subprocess.run([mount, "-o", "remount,ro", str(small_tmpfs)], check=True)
    changes = [
        mi.FileChange.whole(path, b"", b"new\n") for path in ("ci/new.txt", "ci/other.txt", "full/new.txt")
    ]
    before = files(tree)
    with pytest.raises(mi.ManageImagesError) as raised:
        mi.write_all_or_nothing(tree, changes, None)
    assert str(raised.value) == (
        f"cannot write full/new.txt: its folder {small_tmpfs} is not writable; make it writable and run again "
        "(no file was changed for this image)"
    )
    assert files(tree) == before


def test_a_folder_that_cannot_be_written_is_named_as_it_is_when_the_root_is_the_file_system_root(small_tmpfs):
    # The tree's root may be `/` itself: its folders are `/NAME`, never `//NAME`.
    mount = shutil.which("mount", path=SYSTEM_PATH) or "mount"
    subprocess.run([mount, "-o", "remount,ro", str(small_tmpfs)], check=True)
    change = mi.FileChange.whole(f"{small_tmpfs.relative_to('/')}/new.txt", b"", b"new\n")
    with pytest.raises(mi.ManageImagesError) as raised:
        mi.write_all_or_nothing(Path("/"), [change], None)
    assert f"its folder {small_tmpfs} is not writable;" in str(raised.value)
    assert not (small_tmpfs / "new.txt").exists()


def test_a_file_name_as_long_as_the_file_system_allows_is_rewritten(tree, standin):
    name = "n" * 255
    write(tree, f"ci/{name}", ref("cmake") + b"\n")
    commit(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--images", "all", "--update_references"]) == 0
    assert (tree / "ci" / name).read_bytes() == ref("cmake", NEW) + b"\n"


# --- 5. No silent miss -------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_updated_and_checked(tree, standin, capsys):
    name = os.fsdecode(b"ci/\xff\xfe-build.sh")
    write(tree, name, ref("cmake", OTHER) + b"\n")
    commit(tree)
    assert mi.main(["--check", "--image", "cmake"]) == 1
    assert (
        "ci/\\udcff\\udcfe-build.sh:1: gcr.io/iree-oss/cmake is pinned to sha256:eeeeeeeeeeee"
        in capsys.readouterr().out
    )
    standin.set(repo_digests=all_digests())
    assert mi.main(["--images", "all", "--update_references"]) == 0
    assert (tree / name).read_bytes() == ref("cmake", NEW) + b"\n"
    assert "ci/\\udcff\\udcfe-build.sh" in capsys.readouterr().out


def sparse(tree: Path) -> None:
    fake_tree.git(tree, "sparse-checkout", "set", "--no-cone", "/build_tools/", "/WORKSPACE")
    assert not (tree / "ci" / "build.sh").exists()


def test_a_sparse_checkout_hiding_a_reference_is_an_error_for_rewrites(tree, standin, capsys):
    sparse(tree)
    standin.set(repo_digests=all_digests())
    before = files(tree)
    assert mi.main(["--image", "cmake-python", "--update_references"]) == 1
    assert capsys.readouterr().err == (
        "ci/build.sh: outside the sparse checkout, yet it names gcr.io/iree-oss/, so the tool can neither "
        "check nor update it; widen the checkout (`git sparse-checkout add FOLDER` or `git sparse-checkout "
        "disable`); then run again\n"
    )
    assert files(tree) == before


def test_a_sparse_checkout_hiding_a_reference_is_a_check_finding(tree, capsys):
    sparse(tree)
    assert mi.main(["--check", "--image", "cmake"]) == 1
    assert (
        "ci/build.sh:1: outside the sparse checkout, yet it names gcr.io/iree-oss/" in capsys.readouterr().out
    )


@pytest.mark.parametrize("index_version", ["3", "4"])
def test_a_file_marked_skip_worktree_by_hand_is_a_check_finding(tree, capsys, index_version):
    # Not a sparse checkout: one file marked by `git update-index`, in an
    # index of version 3 (git's own upgrade) or 4 (index.version=4).
    fake_tree.git(tree, "update-index", "--index-version", index_version)
    fake_tree.git(tree, "update-index", "--skip-worktree", "ci/build.sh")
    (tree / "ci" / "build.sh").unlink()
    assert (tree / ".git" / "index").read_bytes()[:8] == b"DIRC\0\0\0" + bytes([int(index_version)])
    assert mi.main(["--check", "--image", "cmake"]) == 1
    assert (
        "ci/build.sh:1: outside the sparse checkout, yet it names gcr.io/iree-oss/" in capsys.readouterr().out
    )


def test_a_git_grep_error_is_not_ignored(tree, standin, capsys):
    write(tree, "sub/pin.txt", ref("cmake") + b"\n")
    commit(tree)
    (tree / "sub" / "pin.txt").unlink()
    (tree / "sub").rmdir()
    (tree / "sub").write_bytes(b"a file where a folder was\n")
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "`git grep -l -z --no-color --no-textconv --recurse-submodules -e gcr.io/iree-oss/` failed in "
    )
    assert "sub/pin.txt" in err and err.endswith("fix the cause and run again\n")
    assert mi.main(["--check", "--image", "cmake"]) == 1


def test_a_reference_to_an_image_outside_the_graph_is_still_compared(tree, capsys):
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(prod.read_bytes() + ref("old-image") + b"\n")
    write(tree, "ci/old.sh", ref("old-image") + b"\n" + ref("old-image", OTHER) + b"\n")
    commit(tree)
    assert mi.main(["--check", "--images", "all"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        "build_tools/docker/prod_digests.txt:3: gcr.io/iree-oss/old-image is not an image of the graph under gcr.io/iree-oss"
        in out
    )
    assert (
        "ci/old.sh:2: gcr.io/iree-oss/old-image is pinned to sha256:eeeeeeeeeeee, but "
        "build_tools/docker/prod_digests.txt says sha256:111111111111 (old-image is not an image of the graph)"
    ) in out
    assert not [line for line in out if line.startswith("ci/old.sh:1:")]


# --- 6. Only tracked files ----------------------------------------------------


def test_an_untracked_ignored_workspace_is_never_rewritten(tree, standin, capsys):
    fake_tree.git(tree, "rm", "-q", "--cached", "WORKSPACE")
    (tree / ".gitignore").write_text("WORKSPACE\n")
    commit(tree)
    before = (tree / "WORKSPACE").read_bytes()
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "rbe-toolchain", "--update_references"]) == 0
    assert (tree / "WORKSPACE").read_bytes() == before
    assert (
        "Not updating WORKSPACE: git does not track it, and the tool edits tracked files only"
        in capsys.readouterr().out
    )


def test_an_untracked_prod_digests_is_refused(tree, standin, capsys):
    fake_tree.git(tree, "rm", "-q", "--cached", "build_tools/docker/prod_digests.txt")
    (tree / ".gitignore").write_text("prod_digests.txt\n")
    commit(tree)
    before = files(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert capsys.readouterr().err == (
        "build_tools/docker/prod_digests.txt: git does not track it, and the tool edits tracked files only; "
        "fix that and run again\n"
    )
    assert files(tree) == before


def test_a_missing_prod_digests_is_created_for_its_first_line(tree, standin):
    fake_tree.git(tree, "rm", "-q", "build_tools/docker/prod_digests.txt")
    commit(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "rbe-toolchain", "--update_references"]) == 0
    assert (tree / "build_tools/docker/prod_digests.txt").read_bytes() == ref("rbe-toolchain", NEW) + b"\n"


# --- 7. Build contexts stay inside the work tree ------------------------------


def test_a_build_context_outside_the_tree_is_refused_before_any_docker_command(tree, standin, capsys):
    context = tree / "build_tools" / "docker" / "cmake-android"
    outside = tree.parent / "elsewhere"
    context.rename(outside)
    context.symlink_to(outside)
    assert mi.main(["--image", "cmake", "--build", "--push"]) == 1
    assert capsys.readouterr().err == (
        "refusing to build cmake-android: build_tools/docker/cmake-android is a symbolic link, and the tool "
        "never reads or writes through one; its build context build_tools/docker/cmake-android must be a real "
        "folder inside the work tree\n"
    )
    assert standin.commands() == []


# --- 8. Bad input that used to get through -------------------------------------


def test_a_registry_too_long_for_docker_is_a_usage_error(capsys):
    registry = "example.com/" + "a" * 230
    assert "--registry is too long" in usage_error(
        ["--image", "cmake", "--build", "--registry", registry], capsys
    )


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_prod_digests_that_is_not_a_regular_file_is_one_clear_line(tree, standin, kind):
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.unlink()
    os.mkfifo(prod) if kind == "fifo" else prod.mkdir()
    standin.set(repo_digests=all_digests())
    env = {**os.environ, **standin.environ()}
    for args in (["--image", "cmake", "--update_references"], ["--image", "cmake", "--only_references"]):
        result = run_script(tree, *args, env=env, timeout=60)
        assert result.returncode == 1
        assert result.stderr == (
            "build_tools/docker/prod_digests.txt: it is not a regular file; fix that and run again\n"
        )
    result = run_script(tree, "--check", "--image", "cmake", env=env, timeout=60)
    assert "build_tools/docker/prod_digests.txt:1: cannot be read: it is not a regular file" in result.stdout


def test_two_digests_for_one_image_are_refused_naming_both_lines(tree, standin, capsys):
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(prod.read_bytes() + ref("cmake", OTHER) + b"\n")
    commit(tree)
    before = files(tree)
    standin.set(repo_digests=all_digests())
    for args in (["--update_references"], ["--only_references"]):
        assert mi.main(["--image", "cmake-python", *args]) == 1
        assert capsys.readouterr().err == (
            "build_tools/docker/prod_digests.txt:3: gcr.io/iree-oss/cmake is listed again with another digest "
            "than on build_tools/docker/prod_digests.txt:1, so its pin is ambiguous; keep the right line only; "
            "fix it and run again\n"
        )
    assert files(tree) == before


# --- 9. No traceback, ever ----------------------------------------------------


def test_output_of_docker_inspect_that_is_not_json_fails_the_image_with_a_summary(tree, standin, capsys):
    standin.set(inspect_raw={"gcr.io/iree-oss/cmake-python:latest": "{not json"})
    assert mi.main(["--image", "cmake-python", "--update_references"]) == 1
    out, err = capsys.readouterr()
    assert "Summary:" in out
    assert err.count("\n") == 1 and "printed no image as JSON; check the docker client" in err


def test_a_git_that_hangs_times_out_with_one_line(tree, standin, monkeypatch, capsys):
    slow_git = Path(standin.bin) / "git"
    slow_git.write_text(
        f'#!/bin/sh\ncase " $* " in *" grep "*) exec {shutil.which("sleep", path=SYSTEM_PATH)} 30;; esac\nexec {shutil.which("git", path=SYSTEM_PATH)} "$@"\n'
    )
    slow_git.chmod(0o755)
    monkeypatch.setattr(mi, "COMMAND_TIMEOUT", 1)
    standin.set(repo_digests=all_digests())
    started = time.monotonic()
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not finish within 1 s" in err


def test_an_unexpected_error_in_a_worker_fails_that_image_only():
    def work(image: str, builder: str) -> None:
        if image == "b":
            raise RuntimeError("boom")

    results = mi.run_graph(["a", "b", "c"], {"a": (), "b": (), "c": ("b",)}, 1, True, work, lambda i, v: v)
    assert [results[i].result for i in "abc"] == ["done", "failed", "skipped"]
    assert "unexpected RuntimeError: boom" in str(results["b"].error)


def test_a_docker_command_killed_by_a_signal_exits_128_plus_n(tree, standin, capsys):
    standin.set(signal={"build": 9})
    assert mi.main(["--image", "cmake-python", "--build"]) == 137
    out, err = capsys.readouterr()
    assert "Summary:" in out
    assert unlabelled(err) == (
        "Command failed with exit code 137: `docker build --tag gcr.io/iree-oss/cmake-python:latest "
        "build_tools/docker/cmake-python` (killed by SIGKILL)\n"
    )


def test_an_unexpected_exception_in_main_is_one_line(tree, standin, capsys, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(mi, "check", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its traceback goes (--check has no logs)
    assert mi.main(["--check", "--image", "cmake"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unexpected OSError: [Errno 5] Input/output error")


@pytest.mark.parametrize("changed_since_read", [False, True])
def test_a_big_file_is_written_byte_exact_even_if_it_changed_since_it_was_read(tmp_path, changed_since_read):
    # Big files are copied by the kernel and patched where they differ; the
    # copy is read back, and written whole if the file was not what was read.
    old = (b"x" * 1000 + b"\n") * 3000  # 3 MB
    new = bytearray(old)
    new[5:10] = b"yyyyy"
    new[2_000_000:2_000_005] = b"zzzzz"
    target = tmp_path / "big.txt"
    target.write_bytes(old[:-1] + b"!" if changed_since_read else old)
    temporary = tmp_path / ".manage_images.0123456789ab.tmp"
    mi._write_new(
        temporary,
        mi.FileChange("big.txt", old, ((5, 10, b"yyyyy"), (2_000_000, 2_000_005, b"zzzzz"))),
        0o640,
        target,
    )
    assert temporary.read_bytes() == bytes(new)
    assert temporary.stat().st_mode & 0o777 == 0o640
