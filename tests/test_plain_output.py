"""`--progress plain` is the output of the tool before --progress existed, byte
for byte apart from timings: the module as it was (from git history) and as it
is run the same commands, through a stand-in docker, on two copies of a tree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fake_tree
from helpers import E2E_REQUIRED, SCRIPT, all_digests

# The last commit of the module before --progress: the output plain must keep.
BASELINE = "d071efa334f960051e065dce90438f6b31c609be"
ROOT = Path(__file__).resolve().parent.parent
TIMING = re.compile(r"\b\d+\.\ds\b")


@pytest.fixture
def original(tmp_path) -> Path:
    shown = subprocess.run(
        ("git", "-C", str(ROOT), "show", f"{BASELINE}:build_tools/docker/manage_images.py"),
        capture_output=True,
    )
    if shown.returncode != 0:
        message = f"the baseline module {BASELINE[:12]} is not in this clone's history"
        if E2E_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path / "original" / "manage_images.py"
    path.parent.mkdir()
    path.write_bytes(shown.stdout)
    return path


def run(script: Path, repo: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = subprocess.run(
        (sys.executable, str(script), *args), cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    return result.returncode, TIMING.sub("X.Xs", result.stdout), TIMING.sub("X.Xs", result.stderr)


def both(original: Path, tree: Path, tmp_path: Path, env: dict[str, str], *args: str):
    """The original's output and `--progress plain`'s, each on its own copy of `tree`."""
    copy = fake_tree.clone(tree, tmp_path / "copy")
    before = run(original, copy, env, *args)
    after = run(SCRIPT, tree, env, *args, "--progress", "plain")
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


def test_plain_is_the_original_output_one_image_at_a_time(tree, standin, tmp_path, original):
    standin.set(repo_digests=all_digests())
    before, after = both(original, tree, tmp_path, standin.environ(), *ARGS)
    assert after == before
    assert before[0] == 0 and "Running: `docker build" in before[1]


def test_plain_is_the_original_output_four_at_a_time(tree, standin, tmp_path, original):
    standin.set(repo_digests=all_digests())
    before, after = both(original, tree, tmp_path, standin.environ(), *ARGS, "-j", "4")
    assert after[0] == before[0] == 0
    # Lines of images running together interleave by timing, and the k of
    # `[k/n]` is the order they start in; each image's own lines, and the
    # lines about no image, come in the same order.
    started = re.compile(r"(Processing image \S+ \[)\d+/")
    before_out, after_out = (started.sub(r"\1k/", out) for out in (before[1], after[1]))
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
    assert after[1][:end] + after[1][end + len(tail) :] == before[1]
    assert "  Command failed with exit code 5: `docker push gcr.io/iree-oss/cmake-python:latest`\n" in tail
