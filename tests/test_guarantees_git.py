"""Regression tests for the README's promises about git and the tool's inputs,
each named after the promise it protects: git asked in a way no user
configuration changes, GIT_DIR never redirecting the tool, git's own refusals
passed on, every tracked file that names the registry handled or named
(binary, UTF-16, assume-unchanged, submodules, WORKSPACE.bazel, files that
WORKSPACE loads), prod_digests.txt's encodings, any locale, and
--changed_since seeing what git ignores.

Every test here failed on the code before the fix it pins. They run on real
git repositories, with real users (`useradd`) where ownership matters and a
real Latin-1 locale (tests/provision-locale.sh), with a stand-in `docker`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import (
    D1,
    GRAPH,
    NEW,
    SCRIPT,
    SYSTEM_PATH,
    WORKSPACE,
    all_digests,
    files,
    ref,
    run_as,
    small_tree,
    write,
)

OTHER = "sha256:" + "e" * 64
PROD = "build_tools/docker/prod_digests.txt"
LATIN1 = "en_US.ISO-8859-1"


def commit(root: Path, message: str = "change") -> None:
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", message)


def user_config(tmp_path: Path, monkeypatch, text: str) -> Path:
    """The user's own git configuration (what ~/.gitconfig would say), and no system one."""
    config = tmp_path / "user.gitconfig"
    config.write_text(text)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return config


def outcome(argv: list[str], capsys) -> tuple[int, str, str]:
    code = mi.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def new_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    fake_tree.git(root, "init", "-q", "--template=", "-b", "main")
    fake_tree.git(root, "config", "user.email", "test@example.com")
    fake_tree.git(root, "config", "user.name", "Test")
    return root


def owned_tree(folder: Path, owner: pwd.struct_passwd) -> Path:
    """The small tree, every file of it (.git included) owned by `owner`."""
    repo = small_tree(new_repo(folder / "repo"))
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, owner.pw_uid, owner.pw_gid)
    return repo


# --- Git is asked in a way no user configuration can change --------------------


def test_colour_always_in_the_user_git_config_changes_nothing(tree, standin, tmp_path, monkeypatch, capsys):
    standin.set(repo_digests=all_digests())
    write(tree, "ci/stale.sh", ref("cmake", OTHER) + b"\n")
    commit(tree)
    plain = outcome(["--check", "--images", "all"], capsys)
    user_config(tmp_path, monkeypatch, "[color]\n\tui = always\n\tgrep = always\n\tdiff = always\n")
    assert outcome(["--check", "--images", "all"], capsys) == plain
    assert "ci/stale.sh:1: gcr.io/iree-oss/cmake is pinned to sha256:eeeeeeeeeeee" in plain[1]
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert (tree / "ci/stale.sh").read_bytes() == ref("cmake", NEW) + b"\n"
    assert (tree / "ci/build.sh").read_bytes().count(NEW.encode()) == 2


def test_core_autocrlf_with_an_edited_dockerfile_is_no_failure(tree, tmp_path, monkeypatch, capsys):
    # git warns on stderr that it would change the line ends; the exit status decides.
    user_config(tmp_path, monkeypatch, "[core]\n\tautocrlf = true\n")
    write(tree, "build_tools/docker/cmake/Dockerfile", b"FROM scratch\nRUN true\n")
    code, out, err = outcome(["--changed_since", "HEAD", "--build", "-n", "--json", "-"], capsys)
    assert code == 0, err
    assert [image["name"] for image in json.loads(out)["images"]] == mi.ordered_images_to_process(
        ["cmake"], GRAPH
    )


def test_git_trace_on_stderr_is_no_failure(tree, standin, monkeypatch, capsys):
    standin.set(repo_digests=all_digests())
    plain = outcome(["--check", "--images", "all", "--changed_since", "HEAD"], capsys)
    monkeypatch.setenv("GIT_TRACE", "1")
    monkeypatch.setenv("GIT_TRACE2_PERF", "2")
    assert outcome(["--check", "--images", "all", "--changed_since", "HEAD"], capsys) == plain
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert (tree / "ci/build.sh").read_bytes().count(NEW.encode()) == 2


def test_repo_root_wins_over_git_dir_and_git_work_tree(tree, standin, tmp_path, monkeypatch, capsys):
    other = new_repo(tmp_path / "other")
    write(other, "ci/build.sh", ref("cmake") + b"\n")
    commit(other)
    before = files(other)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    standin.set(repo_digests=all_digests())
    monkeypatch.chdir(tmp_path)
    assert mi.main(["--repo_root", str(tree), "--image", "cmake", "--update_references"]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: ignoring GIT_DIR={other / '.git'}: the tool works on the repository at {tree} "
        "(--repo_root, or the one holding the current folder)\n"
    ) in err
    assert f"warning: ignoring GIT_WORK_TREE={other}:" in err
    assert files(other) == before
    assert (tree / "ci/build.sh").read_bytes().count(NEW.encode()) == 2
    # Without --repo_root, the current folder's repository is the one, as the flag's default says.
    write(tree, "ci/build.sh", ref("cmake", OTHER) + b"\n")  # tracked, edited
    monkeypatch.chdir(tree / "ci")
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert (tree / "ci/build.sh").read_bytes() == ref("cmake", NEW) + b"\n"
    assert files(other) == before


def test_git_refusing_a_repository_of_another_owner_is_one_line_with_git_s_reason_and_fix(
    user, shared_folder, tmp_path, monkeypatch, capsys
):
    repo = owned_tree(shared_folder, user)
    config = user_config(tmp_path, monkeypatch, "")
    monkeypatch.delenv("SUDO_UID", raising=False)  # git lets root through for the user sudo came from
    monkeypatch.chdir(shared_folder)
    for mode in (["--check"], ["--only_references"], ["--update_references", "-n"]):
        code, out, err = outcome(["--repo_root", str(repo), "--image", "cmake", *mode], capsys)
        assert code == 1
        assert err == (
            f"git refuses to work in {repo}: detected dubious ownership in repository at '{repo}'; "
            f"if you trust it, run `git config --global --add safe.directory {repo}` (or run as its owner)\n"
        )
    # The fix it names is enough.
    config.write_text(f"[safe]\n\tdirectory = {repo}\n")
    code, out, err = outcome(["--repo_root", str(repo), "--check", "--image", "cmake"], capsys)
    assert (
        "refuses" not in err
        and f"Checked {len(mi.ordered_images_to_process(['cmake'], mi.IMAGES_TO_DEPENDENCIES))} images" in out
    )


def test_an_unwritable_git_directory_is_one_line_naming_the_lock_and_the_fix(user, shared_folder):
    repo = owned_tree(shared_folder, user)
    prod = repo / PROD
    prod.write_bytes(prod.read_bytes().replace(D1.encode(), NEW.encode()))  # so the run would change files
    (repo / ".git").chmod(0o555)
    before = files(repo)
    result = run_as(user, shared_folder, repo, "--image", "cmake", "--only_references")
    lock = repo / ".git" / "manage_images.lock"
    assert result.returncode == 1
    assert result.stderr == (
        f"cannot create the repository lock {lock}: Permission denied; every run that changes files takes "
        "it in the git directory, so run as a user who may write there (the checkout's owner) or fix its "
        "permissions\n"
    )
    assert files(repo) == before
    # What takes no lock still works.
    checked = run_as(user, shared_folder, repo, "--check", "--image", "cmake")
    assert (
        checked.stderr == ""
        and f"Checked {len(mi.ordered_images_to_process(['cmake'], mi.IMAGES_TO_DEPENDENCIES))} images"
        in checked.stdout
    )


def test_a_checkout_under_a_folder_name_that_is_not_utf8_works(tmp_path, standin, monkeypatch, capsys):
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe-checkouts"))
    repo = small_tree(new_repo(folder / "repo"))
    write(repo, "ci/stale.sh", ref("cmake", OTHER) + b"\n")
    commit(repo)
    monkeypatch.chdir(repo / "ci")
    code, out, err = outcome(["--check", "--image", "cmake"], capsys)
    assert "ci/stale.sh:1: gcr.io/iree-oss/cmake is pinned to sha256:eeeeeeeeeeee" in out, err
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0, capsys.readouterr().err
    assert (repo / "ci/stale.sh").read_bytes() == ref("cmake", NEW) + b"\n"
    assert not (repo / ".git" / "manage_images.lock").exists()


def latin1_environment() -> dict[str, str]:
    env = {**os.environ, "LC_ALL": LATIN1}
    env.pop("PYTHONIOENCODING", None)
    env.pop("PYTHONUTF8", None)
    probe = subprocess.run(
        ["python3", "-c", "import sys; print(sys.stdout.encoding)"], env=env, capture_output=True, text=True
    )
    if probe.stdout.strip() != "iso8859-1":
        pytest.fail(f"the {LATIN1} locale is missing: run tests/provision-locale.sh")
    return env


def test_check_under_a_latin1_locale_prints_every_finding(tree):
    # A finding quotes a line with characters Latin-1 cannot encode, and a file name that is not UTF-8.
    prod = tree / PROD
    prod.write_bytes(prod.read_bytes() + "gcr.io/iree-oss/cmake → sha256:…\n".encode())
    write(tree, os.fsdecode(b"ci/\xff-stale.sh"), ref("cmake", OTHER) + b"\n")
    commit(tree)
    result = subprocess.run(
        ["python3", str(SCRIPT), "--check", "--image", "cmake"],
        cwd=tree,
        env=latin1_environment(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == b""
    out = result.stdout.decode("latin-1").splitlines()
    assert (
        f"{PROD}:3: malformed line 'gcr.io/iree-oss/cmake \\u2192 sha256:\\u2026': expected gcr.io/iree-oss/NAME"
        "@sha256:<64 lowercase hex>"
    ) in out
    assert "ci/\xff-stale.sh:1: gcr.io/iree-oss/cmake is pinned to sha256:eeeeeeeeeeee" in "\n".join(out)
    assert out[-1].startswith(
        f"Checked {len(mi.ordered_images_to_process(['cmake'], mi.IMAGES_TO_DEPENDENCIES))} images: "
    )


# --- Every tracked file that names the registry is handled or named ------------


@pytest.mark.parametrize("attribute", ["binary", "-diff"])
def test_a_text_file_git_treats_as_binary_by_its_attributes_is_checked_and_rewritten(
    tree, standin, capsys, attribute
):
    write(tree, ".gitattributes", f"ci/*.sh {attribute}\n".encode())
    write(tree, "ci/stale.sh", ref("cmake", OTHER) + b"\n")
    commit(tree)
    assert mi.main(["--check", "--image", "cmake"]) == 1
    assert "ci/stale.sh:1: gcr.io/iree-oss/cmake is pinned to sha256:eeeeeeeeeeee" in capsys.readouterr().out
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert (tree / "ci/stale.sh").read_bytes() == ref("cmake", NEW) + b"\n"
    assert (tree / "ci/build.sh").read_bytes().count(NEW.encode()) == 2


def assert_named_never_written(tree, standin, capsys, path: str, why: str, kind: str) -> None:
    """`path` is named by a warning in the rewriting modes and by --check, and never written."""
    before = (tree / path).read_bytes()
    standin.set(repo_digests=all_digests())
    prod = tree / PROD
    prod.write_bytes(prod.read_bytes().replace(D1.encode(), NEW.encode()))
    for mode in (["--update_references"], ["--only_references"]):
        code, out, err = outcome(["--image", "cmake", *mode], capsys)
        assert code == 0, err
        assert f"warning: not updating {path}: {why}" in err
        assert (tree / path).read_bytes() == before
    code, out, err = outcome(
        ["--check", "--image", "cmake", "--json", str(tree.parent / "check.json")], capsys
    )
    assert f"{path}:1: not checked: {why}" in out
    findings = json.loads((tree.parent / "check.json").read_text())["findings"]
    assert [finding["kind"] for finding in findings if finding["path"] == path] == [kind]


def test_a_file_with_a_nul_byte_is_named_and_never_rewritten(tree, standin, capsys):
    write(tree, "ci/layers.bin", b"\x00\x01" + ref("cmake") + b"\n")
    commit(tree)
    why = "git takes it for binary data (a NUL byte in its first 8000 bytes), which the tool never rewrites"
    assert_named_never_written(tree, standin, capsys, "ci/layers.bin", why, "binary")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_naming_the_registry_is_named_and_never_rewritten(tree, standin, capsys, encoding):
    write(tree, "ci/run.ps1", f"docker run {ref('cmake').decode()}\r\n".encode(encoding))
    commit(tree)
    why = "it is UTF-16 text, which the tool cannot rewrite byte for byte; save it as UTF-8"
    assert_named_never_written(tree, standin, capsys, "ci/run.ps1", why, "encoding")


@pytest.mark.parametrize("where", ["committed", "only in the work tree"])
def test_an_assume_unchanged_file_is_named_and_never_rewritten(tree, standin, capsys, where):
    # git would never see the change (nor commit it); git grep reads its staged copy instead.
    write(tree, "ci/local.sh", ref("cmake") + b"\n" if where == "committed" else b"echo local\n")
    commit(tree)
    fake_tree.git(tree, "update-index", "--assume-unchanged", "ci/local.sh")
    write(tree, "ci/local.sh", b"# edited\n" + ref("cmake") + b"\n")
    why = (
        "git marks it assume-unchanged, so git would never see the tool's change to it; run "
        "`git update-index --no-assume-unchanged ci/local.sh`, then run again"
    )
    assert_named_never_written(tree, standin, capsys, "ci/local.sh", why, "assume-unchanged")


@pytest.mark.parametrize("recurse", ["true", "false"])
def test_a_submodule_is_named_and_never_written_whatever_submodule_recurse_says(
    tree, standin, tmp_path, capsys, recurse
):
    library = new_repo(tmp_path / "library")
    write(library, "ci/build.sh", ref("cmake") + b"\n")
    commit(library)
    subprocess.run(  # git submodule is a shell script: the stand-in's PATH lacks its tools
        ("git", *fake_tree.GIT_ISOLATION, "-c", "protocol.file.allow=always", "-C", str(tree), "submodule")
        + ("add", "-q", str(library), "third_party/lib"),
        env={**os.environ, "PATH": SYSTEM_PATH},
        check=True,
        capture_output=True,
    )
    commit(tree, "add a submodule")
    fake_tree.git(tree, "config", "submodule.recurse", recurse)
    why = (
        "it is in the submodule third_party/lib, and the tool never writes inside a submodule; update it "
        "in that repository, then commit the new submodule commit here"
    )
    assert_named_never_written(tree, standin, capsys, "third_party/lib/ci/build.sh", why, "submodule")


@pytest.mark.parametrize("mode", ["--update_references", "--only_references"])
def test_workspace_bazel_wins_over_workspace_as_in_bazel(tree, standin, capsys, mode):
    write(tree, "WORKSPACE.bazel", WORKSPACE)
    prod = tree / PROD
    prod.write_bytes(prod.read_bytes() + ref("rbe-toolchain", OTHER) + b"\n")
    commit(tree)
    code, out, err = outcome(["--check", "--image", "rbe-toolchain"], capsys)
    assert f"WORKSPACE.bazel:6: rbe_autoconfig digest {D1[:19]} differs from" in out
    ignored = (
        "WORKSPACE:3: Bazel reads WORKSPACE.bazel, not this file, so its rbe_autoconfig rule for "
        "gcr.io/iree-oss/rbe-toolchain is never updated; delete the rule (or the file)"
    )
    assert ignored in out.splitlines()
    standin.set(repo_digests=all_digests())
    prod.write_bytes(prod.read_bytes().replace(OTHER.encode(), NEW.encode()))  # what --only_references pins
    assert mi.main(["--image", "rbe-toolchain", mode]) == 0
    assert (tree / "WORKSPACE.bazel").read_bytes() == WORKSPACE.replace(
        b'digest = "' + D1.encode(), b'digest = "' + NEW.encode()
    )
    assert (tree / "WORKSPACE").read_bytes() == WORKSPACE
    assert f"warning: not updating {ignored}\n" in capsys.readouterr().err
    assert mi.main(["--check", "--image", "rbe-toolchain"]) == 1
    assert [line for line in capsys.readouterr().out.splitlines() if "WORKSPACE" in line] == [ignored]


def test_a_workspace_bazel_linked_to_workspace_makes_workspace_the_file_updated(tree, standin):
    (tree / "WORKSPACE.bazel").symlink_to("WORKSPACE")
    commit(tree)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "rbe-toolchain", "--update_references"]) == 0
    assert (tree / "WORKSPACE").read_bytes() == WORKSPACE.replace(
        b'digest = "' + D1.encode(), b'digest = "' + NEW.encode()
    )
    assert (tree / "WORKSPACE.bazel").is_symlink()


def test_a_rule_in_a_file_workspace_loads_is_named(tree, standin, capsys):
    write(tree, "WORKSPACE", b'load("//build_tools/bazel:rbe.bzl", "rbe_setup")\n\nrbe_setup()\n')
    rule = WORKSPACE.split(b"\n\n")[1].replace(b"\n", b"\n    ")
    bzl = b'load(":toolchain.bzl", "rbe_autoconfig")\n\ndef rbe_setup():\n    ' + rule + b"\n"
    write(tree, "build_tools/bazel/rbe.bzl", bzl)
    write(tree, "build_tools/bazel/toolchain.bzl", b"def rbe_autoconfig(**kwargs):\n    pass\n")
    commit(tree)
    named = (
        "build_tools/bazel/rbe.bzl:4: an rbe_autoconfig rule for gcr.io/iree-oss/rbe-toolchain in a file "
        "WORKSPACE loads, and the tool updates only the rule in WORKSPACE; move the rule there, or update "
        "its digest by hand"
    )
    standin.set(repo_digests=all_digests())
    code, out, err = outcome(["--image", "rbe-toolchain", "--update_references"], capsys)
    assert code == 0, err
    assert f"warning: not updating {named}\n" in err
    assert (tree / "build_tools/bazel/rbe.bzl").read_bytes() == bzl
    assert mi.main(["--check", "--image", "rbe-toolchain"]) == 1
    assert named in capsys.readouterr().out.splitlines()


# --- Input encodings -----------------------------------------------------------


def test_a_byte_order_mark_at_the_start_of_prod_digests_is_kept_and_ignored(tree, standin, capsys):
    prod = tree / PROD
    prod.write_bytes(b"\xef\xbb\xbf" + prod.read_bytes())
    commit(tree)
    assert mi.main(["--check", "--image", "cmake-python"]) == 1  # the small tree's Dockerfiles
    assert f"{PROD}:" not in capsys.readouterr().out
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    lines = prod.read_bytes().splitlines()
    assert lines[:2] == [b"\xef\xbb\xbf" + ref("cmake", NEW), ref("cmake-python", NEW)]
    assert sum(b"/cmake@" in line for line in lines) == 1
    assert len(lines) == len(mi.ordered_images_to_process(["cmake"], GRAPH))


@pytest.mark.parametrize(
    "data, line, problem",
    [
        (
            (ref("cmake") + b"\n").decode().encode("utf-16"),
            1,
            "holds NUL bytes (it is UTF-16 text, or binary); save it as plain UTF-8 text",
        ),
        (ref("cmake") + b"\n\xe9" + ref("cmake-python") + b"\n", 2, "the line is not UTF-8 (byte 1 is 0xe9)"),
        (ref("cmake-python") + b"\n\xe2\x80\x8b" + ref("cmake") + b"\n", 2, "malformed line '\\u200b"),
        (
            ref("cmake-python") + b"\n\xef\xbb\xbf" + ref("cmake") + b"\n",
            2,
            "the line holds a byte-order mark",
        ),
    ],
)
def test_other_encoding_oddities_in_prod_digests_are_refused_with_path_and_line(
    tree, standin, capsys, data, line, problem
):
    (tree / PROD).write_bytes(data)
    commit(tree)
    before = files(tree)
    standin.set(repo_digests=all_digests())
    for mode in (["--update_references"], ["--only_references"]):
        code, out, err = outcome(["--image", "cmake", *mode], capsys)
        assert code == 1
        assert err.startswith(f"{PROD}:{line}: {problem}") and err.count("\n") == 1, err
        assert files(tree) == before
    code, out, err = outcome(["--check", "--image", "cmake"], capsys)
    assert f"{PROD}:{line}: {problem}" in out


# --- --changed_since names what git cannot see -------------------------------


def test_a_git_ignored_file_in_a_build_context_counts_as_a_change(tree, capsys):
    # docker sends every file of the context; git cannot tell whether an ignored one changed.
    write(tree, ".gitignore", b"*.log\n")
    commit(tree)
    assert mi.main(["--changed_since", "HEAD", "--build", "-n"]) == 0
    assert capsys.readouterr().out == "No image changed since HEAD\n"
    write(tree, "build_tools/docker/cmake/notes.log", b"a local file docker sends\n")
    code, out, err = outcome(["--changed_since", "HEAD", "--build", "-n", "--json", "-"], capsys)
    assert code == 0, err
    assert [image["name"] for image in json.loads(out)["images"]] == mi.ordered_images_to_process(
        ["cmake"], GRAPH
    )


@pytest.mark.parametrize(
    "label, loaded",
    [
        ("//build_tools/bazel:rbe.bzl", ["build_tools/bazel/rbe.bzl"]),
        ("@//build_tools/bazel:rbe.bzl", ["build_tools/bazel/rbe.bzl"]),
        ("//:rbe.bzl", ["rbe.bzl"]),
        ("//pkg:sub/rbe.bzl", ["pkg/sub/rbe.bzl"]),
        (":rbe.bzl", ["third_party/rbe.bzl"]),
        ("@bazel_toolchains//rules:rbe_repo.bzl", []),
        ("//pkg", []),
    ],
)
def test_workspace_loads_maps_labels_of_this_repository_to_paths(label, loaded):
    data = f'load("{label}", "x")\n# load("//not:this.bzl", "y")\ns = \'load("//nor:this.bzl")\'\n'.encode()
    assert mi.workspace_loads(data, "third_party/defs.bzl") == loaded


@pytest.mark.parametrize("mark", ["", "--assume-unchanged", "--skip-worktree"])
def test_which_of_workspace_and_prod_digests_git_tracks_is_read_exactly_from_the_index(tree, mark):
    # One listing of the index (`git ls-files -v`) tells the marks and which of
    # the files the tool edits git tracks: a path that ends like one, or lies
    # in a folder named like one, is not it; an untracked one is never edited.
    for decoy in ("docs/WORKSPACE", "x WORKSPACE", "WORKSPACE~", "sub/build_tools/docker/prod_digests.txt"):
        write(tree, decoy, b"# not the file\n")
        fake_tree.git(tree, "add", decoy)
    fake_tree.git(tree, "rm", "-q", "--cached", "WORKSPACE")
    fake_tree.git(tree, "commit", "-q", "-m", "WORKSPACE untracked, decoys tracked")
    scan = mi.scan_tree(tree, mi.DEFAULT_REGISTRY)
    assert scan.tracked == {PROD}
    assert scan.problems == {"WORKSPACE": "git does not track it, and the tool edits tracked files only"}
    fake_tree.git(tree, "add", "WORKSPACE")
    commit(tree)
    if mark:
        fake_tree.git(tree, "update-index", mark, "WORKSPACE")
    scan = mi.scan_tree(tree, mi.DEFAULT_REGISTRY)
    hidden = mark == "--skip-worktree"  # git keeps it out of the work tree's view: not the tool's to edit
    assert scan.tracked == ({PROD} if hidden else {PROD, "WORKSPACE"})
    assert ("WORKSPACE" in scan.problems) == hidden


def test_a_git_without_perl_regexes_still_finds_every_reference_in_utf8_text(tree, standin, capsys):
    # git built without PCRE refuses `grep -P`: the scan says what it cannot
    # search (UTF-16) and greps again for the registry as a fixed string.
    no_pcre = Path(standin.bin) / "git"
    no_pcre.write_text(
        '#!/bin/sh\ncase " $* " in *" grep "*" -P "*)\n'
        "  echo 'fatal: cannot use Perl-compatible regexes when not compiled with USE_LIBPCRE' >&2; exit 128;;\n"
        f'esac\nexec {shutil.which("git", path=SYSTEM_PATH)} "$@"\n'
    )
    no_pcre.chmod(0o755)
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert capsys.readouterr().err == (
        "warning: this git cannot search with Perl regexes (PCRE), so UTF-16 files are not searched\n"
    )
    assert ref("cmake", NEW) in (tree / "ci/build.sh").read_bytes()
    assert mi.scan_tree(tree, mi.DEFAULT_REGISTRY).candidates == (
        "build_tools/docker/cmake-python/Dockerfile",
        PROD,
        "ci/build.sh",
    )
