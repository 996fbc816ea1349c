"""Output that tells the truth (README, "Where the output departs from the
original's"): no "Updating references" line when no file changes, counts with
the right plural, no "dependent images" when a selection has none. On a
frozen graph, with the stand-in docker: no engine needed."""

from __future__ import annotations

import pytest

import fake_tree
import manage_images as mi
from helpers import D1, NEW, ORIGINAL_GRAPH, files, ref

URL = "gcr.io/" + "iree-oss"  # in pieces: this tree's own --check must not read test data
# Two images of the small tree (helpers.small_tree): cmake named in three files, cmake-python in two.
SMALL = {"cmake": (), "cmake-python": ("cmake",)}


@pytest.mark.parametrize(
    ("selected", "images", "line"),
    [
        (
            ["cmake"],
            ["cmake", "cmake-python"],
            "Also processing dependent images. Will process: ['cmake', 'cmake-python']",
        ),
        (["cmake-python"], ["cmake-python"], "Will process: ['cmake-python']"),
        (["cmake-python", "cmake"], ["cmake", "cmake-python"], "Will process: ['cmake', 'cmake-python']"),
    ],
)
def test_the_plan_line_says_dependents_only_when_there_are_some(selected, images, line):
    assert mi.plan_line(selected, images) == line


@pytest.mark.parametrize(("number", "text"), [(0, "0 files"), (1, "1 file"), (2, "2 files")])
def test_counts_have_the_right_plural(number, text):
    assert mi.counted(number, "file") == text
    assert mi.failure_tail("x", "x.log", ["one"] * number).startswith(f"x failed; the last {number} line")
    assert (" lines " in mi.failure_tail("x", "x.log", ["one"] * number)) == (number != 1)


def run(capsys, *argv: str, graph=SMALL) -> tuple[int, str, str]:
    code = mi.main(list(argv), graph=graph)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_kept_pin_says_no_file_changed_instead_of_updating(tree, standin, capsys):
    # The registry serves the pin D1 as :latest, holding what the engine holds: every pin is kept.
    standin.set(repo_digests={f"{URL}/{image}:latest": [f"{URL}/{image}@{D1}"] for image in SMALL})
    before = files(tree)
    code, out, err = run(capsys, "--image", "cmake", "--update_references")
    assert (code, err) == (0, "")
    assert files(tree) == before
    assert "Updating references in" not in out
    assert f"Every reference to {URL}/cmake (3 files) already pins {D1}: no file to change\n" in out
    assert f"Every reference to {URL}/cmake-python (2 files) already pins {D1}: no file to change\n" in out


def test_updating_references_lists_only_the_files_that_change(tree, standin, capsys):
    # ci/build.sh already pins cmake at NEW (edited by hand); the Dockerfile and prod_digests.txt do not.
    build = tree / "ci/build.sh"
    build.write_bytes(build.read_bytes().replace(ref("cmake"), ref("cmake", NEW)))
    fake_tree.git(tree, "commit", "-q", "-am", "cmake at NEW in ci/build.sh")
    standin.set(repo_digests={f"{URL}/cmake:latest": [f"{URL}/cmake@{NEW}"]})
    code, out, err = run(capsys, "--image", "cmake", "--update_references", graph={"cmake": ()})
    assert (code, err) == (0, "")
    assert (
        "Updating references in 2 files: "
        "['build_tools/docker/cmake-python/Dockerfile', 'build_tools/docker/prod_digests.txt']\n"
    ) in out
    assert ref("cmake", NEW) in (tree / "build_tools/docker/prod_digests.txt").read_bytes()


def test_one_file_is_one_file(tree, standin, capsys):
    standin.set(repo_digests={f"{URL}/cmake-python:latest": [f"{URL}/cmake-python@{NEW}"]})
    build = tree / "ci/build.sh"
    build.write_bytes(build.read_bytes().replace(ref("cmake-python"), ref("cmake-python", NEW)))
    fake_tree.git(tree, "commit", "-q", "-am", "cmake-python at NEW in ci/build.sh")
    code, out, err = run(capsys, "--image", "cmake-python", "--update_references")
    assert (code, err) == (0, "")
    assert "Updating references in 1 file: ['build_tools/docker/prod_digests.txt']\n" in out


def test_a_kept_workspace_pin_says_so(tree, standin, capsys):
    # WORKSPACE pins rbe-toolchain at D1 (helpers.WORKSPACE); the registry serves D1 as :latest.
    graph = {"rbe-toolchain": ()}
    standin.set(repo_digests={f"{URL}/rbe-toolchain:latest": [f"{URL}/rbe-toolchain@{D1}"]})
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(prod.read_bytes() + ref("rbe-toolchain") + b"\n")
    fake_tree.git(tree, "commit", "-q", "-am", "rbe-toolchain at D1")
    before = files(tree)
    code, out, err = run(capsys, "--image", "rbe-toolchain", "--update_references", graph=graph)
    assert (code, err) == (0, "")
    assert files(tree) == before
    assert f"The rbe_autoconfig rule in WORKSPACE already pins {D1}: no change\n" in out
    assert "Updating WORKSPACE" not in out and "Updating references in" not in out


def test_only_references_says_what_changes_too(tree, standin, capsys):
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_bytes(prod.read_bytes().replace(ref("cmake-python"), ref("cmake-python", NEW)))
    fake_tree.git(tree, "commit", "-q", "-am", "cmake-python at NEW")
    code, out, err = run(capsys, "--image", "cmake", "--only_references")
    assert (code, err) == (0, "")
    assert f"Every reference to {URL}/cmake (3 files) already pins {D1}: no file to change\n" in out
    assert "Updating references in 1 file: ['ci/build.sh']\n" in out
    assert ref("cmake-python", NEW) in (tree / "ci/build.sh").read_bytes()


def test_all_selected_is_no_dependent(tree, standin, capsys):
    code, out, err = run(capsys, "--images", "all", graph=ORIGINAL_GRAPH)
    assert (code, err) == (0, "")
    assert (
        out.splitlines()[0]
        == f"Will process: {mi.ordered_images_to_process(sorted(ORIGINAL_GRAPH), ORIGINAL_GRAPH)}"
    )
