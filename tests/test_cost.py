"""The cost model, counted rather than timed, so a regression cannot land
silently (benchmarks/bench_scale.py measures the times): each candidate file
is read once per run whatever the number of images; one `git grep` per run,
with one thread more than the CPUs the run may use (one on one CPU); at most
one `docker image inspect` in a dry run; line numbers for all the findings
in a file cost one pass over it."""

from __future__ import annotations

import collections
import errno
import json
import os
import time
import tracemalloc
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
    """Counts file reads for rewriting, the heads the scan reads, and the git and docker commands run."""
    seen: dict[str, list] = {"reads": [], "heads": [], "commands": []}
    read_file, read_head, capture_bytes = mi.read_file, mi.read_head, mi.capture_bytes

    def counting_read(path):
        seen["reads"].append(path)
        return read_file(path)

    def counting_head(path, size):
        seen["heads"].append(path)
        return read_head(path, size)

    def counting_capture(argv, cwd=None, env=None, timeout=None, each=None, stdin=None):
        seen["commands"].append(tuple(argv))
        return capture_bytes(argv, cwd, env, timeout, each, stdin)

    monkeypatch.setattr(mi, "read_file", counting_read)
    monkeypatch.setattr(mi, "read_head", counting_head)
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
    reads, heads = collections.Counter(counted["reads"]), collections.Counter(counted["heads"])
    assert reads and max(reads.values()) == 1, reads.most_common(3)
    assert max(heads.values()) == 1 and sum(1 for path in heads if "notes" in str(path)) == 50
    # --only_references rewrites a small file from the scan's one read of it; a
    # run that builds first reads it again, after the builds.
    again = 50 if mode == ["--update_references"] else 0
    assert sum(1 for path in reads if "notes" in str(path)) == again
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


@pytest.mark.parametrize("cpus", ["one", "all"])
def test_git_grep_runs_with_one_thread_more_than_the_cpus_the_run_may_use_and_one_on_one_cpu(
    world, counted, cpus
):
    # git's default is one thread per CPU of the machine, whatever the run may use;
    # its threads take turns on a lock for each file's attributes, so one more keeps
    # the CPUs busy, and on one CPU a second thread only waits.
    before = os.sched_getaffinity(0)
    allowed = {min(before)} if cpus == "one" else before
    os.sched_setaffinity(0, allowed)  # the scan's threads are started after: they inherit it
    try:
        assert mi.main(["--check", "--images", "all"]) == 0
    finally:
        os.sched_setaffinity(0, before)
    (grep,) = [argv for argv in counted["commands"] if "grep" in argv]
    threads = grep[grep.index("--threads") + 1]
    assert threads == ("1" if len(allowed) == 1 else str(len(allowed) + 1))


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


def test_the_scan_asks_git_for_the_index_once_and_greps_once(world, counted):
    # One `git ls-files -v` tells the marks and which of WORKSPACE and
    # prod_digests.txt git tracks: no second listing of a 100,000-file index.
    assert mi.main(["--check", "--images", "all"]) == 0
    listings = [argv for argv in counted["commands"] if "ls-files" in argv]
    greps = [argv for argv in counted["commands"] if "grep" in argv]
    assert (len(listings), len(greps)) == (1, 1), counted["commands"]


def test_check_never_holds_a_big_file_whole_in_memory(world):
    # 16 pieces' worth of lines, a stale pin on the first line and on the last:
    # --check reads it in pieces, and counts lines across them.
    line = b"x" * 99 + b"\n"
    filler = line * (16 * mi.BIG_FILE // len(line))
    stale = f"{REGISTRY}/cmake@{NEW}\n".encode()
    (world / "big.cfg").write_bytes(stale + filler + stale)
    fake_tree.git(world, "add", "big.cfg")
    fake_tree.git(world, "commit", "-q", "-m", "a big file")
    size = (world / "big.cfg").stat().st_size
    tracemalloc.start()
    try:
        assert mi.main(["--check", "--images", "all", "--json", "report.json"]) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * mi.BIG_FILE < size / 2, f"peak {peak} bytes for a {size}-byte file"
    report = json.loads((world / "report.json").read_text())
    lines = [(f["line"], f["kind"]) for f in report["findings"] if f["path"] == "big.cfg"]
    assert lines == [(1, "stale"), (2 + filler.count(b"\n"), "stale")]


def test_a_rewrite_of_many_files_leaves_no_temporary_or_backup_file(world, standin):
    # 50 files and more: staged, committed and cleaned up by a few threads, each
    # given a run of files; every file gets its new content, nothing is left beside it.
    prod = world / "build_tools/docker/prod_digests.txt"
    prod.write_text(prod.read_text().replace(P, NEW))
    assert mi.main(["--images", "all", "--only_references"]) == 0
    assert all((world / f"notes/{n}.txt").read_text().count(NEW) == len(GRAPH) for n in range(50))
    left = [path for path in world.rglob("*") if mi.TEMPORARY_RE.match(path.name)]
    assert left == []


def test_each_staged_file_is_handled_once_in_order_whatever_the_threads():
    staged = [
        mi.Staged(mi.FileChange.whole(str(n), b"", b""), Path(str(n)), Path(), Path(), True)
        for n in range(101)
    ]
    seen: list[str] = []
    assert mi._each(lambda item: seen.append(item.change.path) or item.change.path, staged) == [
        str(n) for n in range(101)
    ]
    assert sorted(seen, key=int) == [str(n) for n in range(101)]


def test_the_scan_looks_at_each_file_while_git_greps_on(monkeypatch):
    # capture_bytes hands each NUL-terminated record over as it is printed:
    # the first before the command ends, a last one without its NUL too.
    script = "printf 'first\\0'; sleep 1; printf 'second\\0last'; echo oops >&2"
    started, seen = time.monotonic(), []
    result = mi.capture_bytes(
        ["sh", "-c", script], each=lambda record: seen.append((record, time.monotonic()))
    )
    assert [record for record, _ in seen] == [b"first", b"second", b"last"]
    assert seen[0][1] - started < 0.8 <= time.monotonic() - started
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"oops\n")
    # A command that hangs is stopped at the deadline, as without `each`.
    monkeypatch.setattr(mi, "COMMAND_TIMEOUT", 1)
    with pytest.raises(mi.ManageImagesError, match="did not finish within 1 s"):
        mi.capture_bytes(["sh", "-c", "printf 'a\\0'; exec sleep 30"], each=lambda record: None)
    assert time.monotonic() - started < 10


def test_a_failure_while_looking_at_a_file_stops_the_grep():
    def fails(record: bytes) -> None:
        raise OSError(errno.EIO, "unreadable")

    started = time.monotonic()
    with pytest.raises(OSError):
        mi.capture_bytes(["sh", "-c", "printf 'a\\0'; exec sleep 30"], each=fails)
    assert time.monotonic() - started < 10
