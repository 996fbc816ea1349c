"""The cost model, counted rather than timed, so a regression cannot land
silently (benchmarks/bench_scale.py measures the times): each candidate file
is read once per run whatever the number of images; one `git grep` per run;
at most one `docker image inspect` in a dry run; line numbers for all the
findings in a file cost one pass over it."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import GRAPH, NEW, all_digests

REGISTRY = "gcr.io/iree-oss"
P = fake_tree.PLACEHOLDER


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """The fake world plus 50 files that each pin every image."""
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, GRAPH)
    notes = root / "notes"
    notes.mkdir()
    for number in range(50):
        (notes / f"{number}.txt").write_text("".join(f"{REGISTRY}/{image}@{P}\n" for image in GRAPH))
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", "many pins")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """Counts file reads for rewriting and the git and docker commands run."""
    seen: dict[str, list] = {"reads": [], "commands": []}
    read_file, capture_bytes = mi.read_file, mi.capture_bytes

    def counting_read(path):
        seen["reads"].append(path)
        return read_file(path)

    def counting_capture(argv, cwd=None, env=None, timeout=None):
        seen["commands"].append(tuple(argv))
        return capture_bytes(argv, cwd, env, timeout)

    monkeypatch.setattr(mi, "read_file", counting_read)
    monkeypatch.setattr(mi, "capture_bytes", counting_capture)
    return seen


@pytest.mark.parametrize("mode", [["--update_references"], ["--only_references"]])
def test_each_candidate_file_is_read_once_per_run_whatever_the_number_of_images(
    world, standin, counted, mode
):
    standin.set(repo_digests=all_digests())
    if mode == ["--only_references"]:
        prod = world / "build_tools/docker/prod_digests.txt"
        prod.write_text(prod.read_text().replace(P, NEW))
    assert mi.main(["--images", "all", *mode]) == 0
    reads = collections.Counter(counted["reads"])
    assert reads and max(reads.values()) == 1, reads.most_common(3)
    assert sum(1 for path in reads if "notes" in str(path)) == 50
    assert all((world / f"notes/{n}.txt").read_text().count(NEW) == len(GRAPH) for n in range(50))


def test_a_dry_run_runs_one_git_grep_and_one_docker_image_inspect(world, standin, counted):
    standin.set(repo_digests=all_digests())
    assert mi.main(["--images", "all", "--update_references", "-n"]) == 0
    greps = [argv for argv in counted["commands"] if "grep" in argv]
    assert len(greps) == 1
    inspects = [argv for argv in standin.commands() if argv[1:3] == ["image", "inspect"]]
    assert len(inspects) == 1 and len(inspects[0]) == 5 + len(
        GRAPH
    )  # docker image inspect --format F, a ref per image


def test_the_index_is_listed_once_per_run_as_any_index_version_can_mark_a_file_assume_unchanged(
    world, counted
):
    # assume-unchanged is a bit of every index entry, version 2 included, so
    # the one `git ls-files -v` that finds it (and skip-worktree) runs on every run.
    fake_tree.git(world, "update-index", "--assume-unchanged", "notes/0.txt")
    assert (world / ".git" / "index").read_bytes()[:8] == b"DIRC\0\0\0\2"
    assert mi.main(["--check", "--images", "all"]) == 1
    listings = [argv for argv in counted["commands"] if "ls-files" in argv and "-v" in argv]
    assert len(listings) == 1


def test_a_real_run_asks_the_registry_not_the_engine_for_a_pushed_digest(world, standin):
    standin.set(repo_digests=all_digests())
    assert mi.main(["--images", "all", "--push", "--update_references"]) == 0
    # The registry serves the push's digest (#30: no `docker image inspect` per image).
    assert [argv for argv in standin.commands() if argv[1:3] == ["image", "inspect"]] == []
    assert [argv[1] for argv in standin.commands() if argv[:2] == ["docker", "push"]] == ["push"] * len(GRAPH)


class CountingBytes(bytes):
    """bytes that add up how many bytes `count` looks at."""

    scanned = 0

    def count(self, sub, start=None, end=None):  # type: ignore[override]
        start = 0 if start is None else start
        end = len(self) if end is None else end
        CountingBytes.scanned += max(0, end - start)
        return super().count(sub, start, end)


def test_line_numbers_of_many_findings_cost_one_pass_over_the_file():
    line = f"{REGISTRY}/cmake@{NEW} is stale\n".encode() + b"x" * 200 + b"\n"
    data = CountingBytes(line * 5000)
    CountingBytes.scanned = 0
    findings = mi.reference_findings({"big.txt": data}, REGISTRY, ["cmake"], {"cmake": P}, "prod.txt", GRAPH)
    assert len(findings) == 5000
    assert [finding.line for finding in findings[:3]] == [1, 3, 5]
    assert CountingBytes.scanned <= len(data)


@pytest.mark.parametrize("mode", [["--update_references"], ["--only_references"]])
def test_a_big_file_is_copied_and_patched_never_built_whole_in_memory(world, standin, monkeypatch, mode):
    standin.set(repo_digests=all_digests())
    prod = world / "build_tools/docker/prod_digests.txt"
    prod.write_text(prod.read_text().replace(P, NEW))
    filler = (b"x" * 999 + b"\n") * 31
    old = b"".join(f"{REGISTRY}/{image}@{P}\n".encode() + filler for image in GRAPH) * 3
    assert len(old) >= mi.BIG_FILE
    (world / "big.txt").write_bytes(old)
    fake_tree.git(world, "add", "big.txt")
    fake_tree.git(world, "commit", "-q", "-m", "a big file")
    built, patched = [], []
    apply_splices, copy_and_patch = mi.apply_splices, mi._copy_and_patch

    def counting_apply(data, splices):
        result = apply_splices(data, splices)
        if len(result) >= mi.BIG_FILE:
            built.append(len(result))
        return result

    def counting_copy(descriptor, base, change):
        patched.append(copy_and_patch(descriptor, base, change))
        return patched[-1]

    monkeypatch.setattr(mi, "apply_splices", counting_apply)
    monkeypatch.setattr(mi, "_copy_and_patch", counting_copy)
    assert mi.main(["--images", "all", *mode]) == 0
    assert (world / "big.txt").read_bytes() == old.replace(P.encode(), NEW.encode())
    expected_builds = (
        len(GRAPH) if mode == ["--update_references"] else 0
    )  # each image's run reads the last one's
    assert patched == [True] * (len(GRAPH) if mode == ["--update_references"] else 1)
    assert len(built) == expected_builds
