"""`--progress plain` is the output of the tool before --progress existed, byte
for byte apart from timings and the departures README.md lists ("Where the
output departs from the original's"), and only those: the module as it was
(from git history) and as it is run the same commands, through a stand-in
docker, on two copies of a tree.

The module as it was has the 17 images of its time built in, so the module as
it is runs on the same frozen graph (helpers.ORIGINAL_GRAPH): an image added
to the live graph changes nothing here.

The original takes a pushed image's digest from `docker image inspect`'s
RepoDigests; the module now asks the registry (#19, #20), here the stand-in
registry, which serves what the stand-in docker's RepoDigests say. Every
image's :latest is pushed as NEW, whose content differs from its pin's (D1),
so both modules pin NEW: the same work, and so the same output, but for the
inputs label each `docker build` now gets (#30), left out of the comparison."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fake_tree
from helpers import D1, NEW, ORIGINAL_GRAPH, all_digests, unavailable, unlabelled

# The last commit of the module before --progress: the output plain must keep.
BASELINE = "d071efa334f960051e065dce90438f6b31c609be"
ROOT = Path(__file__).resolve().parent.parent
TIMING = re.compile(r"\b\d+\.\ds\b")
# manage_images.py on the frozen graph, its registry questions answered by the stand-in
# registry (a process of its own: the `standin` fixture's in-process registry does not reach it).
LAUNCHER = (
    "import os, sys, pathlib, standin, manage_images as mi; "
    "from helpers import ORIGINAL_GRAPH; "
    "fake = standin.StandInRegistry(pathlib.Path(os.environ['STANDIN_CONFIG'])); "
    "mi.Runner.registry = lambda runner: fake; "
    "raise SystemExit(mi.main(graph=ORIGINAL_GRAPH))"
)
PLAN = re.compile(r"^((?:\[[a-z-]+\] )?)Also processing dependent images\. Will process: (\[.*\])$", re.M)


def with_the_departures(original: str, selected: list[str]) -> str:
    """The original's standard output with the README's departures applied, the ones
    these commands meet: the plan line names dependent images only when the selection
    brought some in, and a count of one file is `1 file`."""

    def plan(match: re.Match[str]) -> str:
        images = ast.literal_eval(match.group(2))  # the original's own repr of a list of names
        added = any(image not in selected for image in images)
        return match.group(0) if added else f"{match.group(1)}Will process: {match.group(2)}"

    return PLAN.sub(plan, original).replace(
        "Updating references in 1 files:", "Updating references in 1 file:"
    )


@pytest.fixture
def original(tmp_path) -> Path:
    shown = subprocess.run(
        ("git", "-C", str(ROOT), "show", f"{BASELINE}:build_tools/docker/manage_images.py"),
        capture_output=True,
    )
    if shown.returncode != 0:
        message = f"the baseline module {BASELINE[:12]} is not in this clone's history"
        unavailable(message)
    path = tmp_path / "original" / "manage_images.py"
    path.parent.mkdir()
    path.write_bytes(shown.stdout)
    return path


def run(argv: list[str], repo: Path, env: dict[str, str]) -> tuple[int, str, str]:
    result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, TIMING.sub("X.Xs", result.stdout), TIMING.sub("X.Xs", result.stderr)


def both(original: Path, tree: Path, tmp_path: Path, env: dict[str, str], *args: str):
    """The original's output and `--progress plain`'s, each on its own copy of `tree`."""
    copy = fake_tree.clone(tree, tmp_path / "copy")
    before = run([sys.executable, str(original), *args], copy, env)
    code, out, err = run([sys.executable, "-c", LAUNCHER, *args, "--progress", "plain"], tree, env)
    after = (code, unlabelled(out), unlabelled(err))
    # The same work (with -j, new lines of prod_digests.txt come in the order images finish).
    assert {name: sorted(data.splitlines()) for name, data in fake_tree.tracked_files(copy).items()} == {
        name: sorted(data.splitlines()) for name, data in fake_tree.tracked_files(tree).items()
    }
    return before, after


def by_image(out: str) -> dict[str, list[str]]:
    """Each `[NAME] ` prefix's lines in order, and the unprefixed lines under ''."""
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"\[([a-z-]+)\] ", line)
        lines.setdefault(match.group(1) if match else "", []).append(line)
    return lines


ARGS = ("--images", "all", "--build", "--push", "--update_references")


def repinned(tree: Path) -> bool:
    """Whether the run re-pinned cmake and cmake-python from D1 to NEW (the pushed
    image differs from its pin), so that the two runs compared did real work."""
    text = (tree / "ci/build.sh").read_text()
    return D1 not in text and text.count(NEW) == 2


ALL = sorted(ORIGINAL_GRAPH)


def test_plain_is_the_original_output_one_image_at_a_time(tree, standin, tmp_path, original):
    standin.set(repo_digests=all_digests())
    before, after = both(original, tree, tmp_path, standin.environ(), *ARGS)
    assert repinned(tree)
    assert after == (before[0], with_the_departures(before[1], ALL), before[2])
    assert "Will process: " in after[1] and "Also processing" not in after[1]
    assert before[0] == 0 and "Running: `docker build" in before[1]


def test_plain_is_the_original_output_four_at_a_time(tree, standin, tmp_path, original):
    standin.set(repo_digests=all_digests())
    before, after = both(original, tree, tmp_path, standin.environ(), *ARGS, "-j", "4")
    assert after[0] == before[0] == 0
    assert repinned(tree)
    # Lines of images running together interleave by timing, and the k of
    # `[k/n]` is the order they start in; each image's own lines, and the
    # lines about no image, come in the same order.
    started = re.compile(r"(Processing image \S+ \[)\d+/")
    before_out, after_out = (
        started.sub(r"\1k/", out) for out in (with_the_departures(before[1], ALL), after[1])
    )
    assert by_image(after_out) == by_image(before_out)
    assert sorted(after_out.splitlines()) == sorted(before_out.splitlines())
    assert after[2] == before[2]


def test_plain_after_a_failure_is_the_original_output_and_the_failed_log(tree, standin, tmp_path, original):
    standin.set(repo_digests=all_digests(), fail={"push": 5})
    before, after = both(original, tree, tmp_path, standin.environ(), "--image", "cmake-python", *ARGS[2:])
    assert after[0] == before[0] == 5
    assert after[2] == before[2]
    # The only addition: the failed image's log and its last lines, under the summary.
    total = after[1].index("Total wall time:")
    end = after[1].index("\n", total) + 1
    tail = after[1][end:]
    assert tail.startswith("cmake-python failed; the last ")
    assert after[1][:end] + after[1][end + len(tail) :] == with_the_departures(before[1], ["cmake-python"])
    assert "Also processing dependent images" in after[1]  # cmake-python brings its dependents in
    assert "  Command failed with exit code 5: `docker push gcr.io/iree-oss/cmake-python:latest`\n" in tail
