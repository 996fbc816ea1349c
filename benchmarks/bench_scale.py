#!/usr/bin/env python3
"""Benchmark: large repositories and large files, against one `git grep`.

The floor for finding references is one full pass of
`git grep -c -I -F gcr.io/iree-oss/` over the tracked files (it reads every
file to its end); everything above it is the tool's overhead. The fixtures
are made once (deterministic seed) under --cache and reused:

- `100k`: a copy of this repository's tree plus 100,000 generated ~2 KB
  source files, 1% of them holding three references (some stale);
- `1k`: the same with 1,000 files;
- `200mb`: a copy of the tree plus one 200 MB tracked text file with a
  reference every 64 KB (3,200 references, half of them stale).

Each case runs alternately with its baseline, several times, in one run;
the table gives the ratio of the medians and, for the 200 MB rewrite, the
peak memory (maximum resident set) against the file's size. Files the tool
changes are restored (`git checkout`) between runs, outside the timing.
Exits 1 if a goal is missed.

The floor column is what any run of such a tool must pay on top of nothing,
timed in the same alternation: the baseline's `git grep`, run as the tool
runs it (below), where the tool must do that work too, plus the Python
interpreter starting and compiling this one-module script (it runs as
`__main__`, so there is no `.pyc`), plus, where
the case needs them, replacing the changed files atomically and durably
(temporary file, fsync, rename; 16 threads, nothing read or scanned) and one
`docker image inspect` of the 17 images.

The tool runs `git grep` with one thread more than the CPUs it may use
(`grep_threads` in the module: git's threads take turns on a lock for each
file's attributes), where git's own default, the baseline's, is one per
CPU. The floor and the least work grep as the tool does, and a reference row
times that `git grep` against the baseline, so the part of the ratio that
is git's own shows apart.

The least-work column (100k files) is one program that does only what any
`--check` must, timed in the same alternation: it starts, compiles this
module, reads each file as `git grep -l` names it, finds its pinned
references with one regex and prints one line for each stale one (plus, for
`--only_references`, the durable replacement of the floor). It looks at no
symbolic link, submodule, encoding, index mark, attribute or Dockerfile.

With --compare PATH (as often as wanted), another copy of
manage_images.py (an earlier revision: `git show
REV:build_tools/docker/manage_images.py > /tmp/old.py`) runs in the same
alternation, and its ratio is printed beside: a before and after from one
run, under the same load. The output starts with the date,
the machine and its load average (before and after the run), so the table
can be pasted as it is.

Usage: python3 benchmarks/bench_scale.py [--repeat N] [--cache DIR] [--compare PATH ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
REGISTRY = "gcr.io/iree-oss"
SEED = 20261129
GIT = ("git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null")
sys.path.insert(0, str(SCRIPT.parent))

import manage_images  # noqa: E402

THREADS = str(manage_images.grep_threads(manage_images.usable_cpus()))  # as the tool greps


def git(repo: Path, *args: str) -> str:
    return subprocess.run((*GIT, "-C", str(repo), *args), check=True, capture_output=True, text=True).stdout


def prod_digests() -> dict[str, str]:
    lines = (ROOT / "build_tools" / "docker" / "prod_digests.txt").read_text().splitlines()
    return {url.rsplit("/", 1)[1]: digest for url, _, digest in (line.partition("@") for line in lines)}


def copy_tree(destination: Path) -> None:
    """This repository's committed tree, as a new git repository."""
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ("git", "-C", str(ROOT), "archive", "HEAD"), check=True, capture_output=True
    ).stdout
    subprocess.run(("tar", "-x", "-C", str(destination)), input=archive, check=True)
    git(destination, "init", "-q", "--template=", "-b", "main")
    git(destination, "config", "user.email", "bench@example.com")
    git(destination, "config", "user.name", "Bench")


def make_files(repo: Path, count: int) -> None:
    """`count` ~2 KB source files; 1% hold three references, a third of those stale."""
    rng = random.Random(SEED)
    pins = prod_digests()
    images = sorted(pins)
    filler = "".join(rng.choice("abcdefghij klmnop\n") for _ in range(1900))
    for number in range(count):
        folder = repo / "src" / f"{number // 1000:03}"
        folder.mkdir(parents=True, exist_ok=True)
        text = f"// file {number}\n" + filler
        if number % 100 == 0:
            for slot in range(3):
                image = images[(number + slot) % len(images)]
                digest = pins[image] if (number + slot) % 3 else "sha256:" + f"{rng.getrandbits(256):064x}"
                text += f"image = {REGISTRY}/{image}@{digest}\n"
        (folder / f"f{number}.cc").write_text(text)


def make_big_file(repo: Path, size: int = 200 * 1024 * 1024, every: int = 64 * 1024) -> None:
    """One tracked text file of `size` bytes with a reference every `every` bytes, half stale."""
    rng = random.Random(SEED)
    pins = prod_digests()
    images = sorted(pins)
    block = ("x" * 99 + "\n") * (every // 100)
    with open(repo / "big.txt", "w") as out:
        for number in range(size // every):
            image = images[number % len(images)]
            digest = pins[image] if number % 2 else "sha256:" + f"{rng.getrandbits(256):064x}"
            reference = f"{REGISTRY}/{image}@{digest}\n"
            out.write(reference + block[: every - len(reference)])


def fixture(cache: Path, name: str) -> Path:
    repo = cache / name
    if (repo / ".made").exists():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    print(f"making the {name} fixture in {repo} (once)", file=sys.stderr)
    copy_tree(repo)
    if name == "100k":
        make_files(repo, 100_000)
    elif name == "1k":
        make_files(repo, 1_000)
    else:
        make_big_file(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{name} fixture")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text(".made\n")
    (repo / ".made").write_text("")
    return repo


def timed(argv: list[str], cwd: Path, ok: tuple[int, ...] = (0, 1)) -> tuple[float, int]:
    """Wall seconds and peak resident memory (KiB) of one command."""
    started = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], cwd=cwd, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode not in ok:
        sys.exit(f"benchmark command failed ({result.returncode}): {' '.join(argv)}\n{result.stderr[-2000:]}")
    return elapsed, int(result.stderr.strip().splitlines()[-1])


def tool(*args: str, script: Path = SCRIPT) -> list[str]:
    return [sys.executable, str(script), *args]


GREP = ["git", "grep", "-c", "-I", "-F", f"{REGISTRY}/"]
GREP_AS_TOOL = ["git", "grep", "--threads", THREADS, "-c", "-I", "-F", f"{REGISTRY}/"]


def compare(
    repo: Path,
    argv: list[str],
    baseline: list[list[str]],
    repeat: int,
    reset: bool,
    floor: list[list[str]] | None = None,
    others: Sequence[list[str]] = (),
    least: list[list[str]] | None = None,
) -> dict[str, float]:
    """Runs `argv` (and `others`, the same run of other copies of the tool), the
    baseline commands, the floor's and the least work's alternately; medians and
    the tool's peak memory."""
    ours, theirs, floors, leasts, memory = [], [], [], [], []
    compared: list[list[float]] = [[] for _ in others]
    for _ in range(repeat):
        seconds, peak = timed(argv, repo)
        ours.append(seconds)
        memory.append(peak)
        if reset:
            git(repo, "checkout", "-q", "--", ".")
        for times, other in zip(compared, others):
            times.append(timed(other, repo)[0])
            if reset:
                git(repo, "checkout", "-q", "--", ".")
        theirs.append(sum(timed(command, repo)[0] for command in baseline))
        floors.append(sum(timed(command, repo)[0] for command in floor or []))
        leasts.append(sum(timed(command, repo)[0] for command in least or []))
    result = {"tool": statistics.median(ours), "base": statistics.median(theirs), "memory_kib": max(memory)}
    if floor:
        result["floor"] = statistics.median(floors)
    if least:
        result["least"] = statistics.median(leasts)
    for number, times in enumerate(compared):
        result[f"other{number}"] = statistics.median(times)
    return result


def other_argvs(argv: list[str], others: Sequence[Path]) -> list[list[str]]:
    """The same command run with each copy of the tool given to --compare."""
    return [[str(other) if part == str(SCRIPT) else part for part in argv] for other in others]


def machine() -> str:
    """The machine the figures were measured on, in one line."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    version = subprocess.run(("git", "--version"), capture_output=True, text=True).stdout.strip()
    return (
        f"{model}{os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {version}"
    )


def load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


# Replaces each file named in argv[1] (NUL-separated) by a copy of itself,
# all or nothing, as the tool does: temporary file beside it, fsync, then
# every rename; 16 threads. The floor of writing that many files durably.
REPLACE = """
import concurrent.futures, os, sys
names = [name for name in open(sys.argv[1], "rb").read().split(b"\\0") if name]
def stage(name):
    data = open(name, "rb").read()
    temporary = name + b".floor.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(descriptor, data)
    os.fsync(descriptor)
    os.close(descriptor)
    return temporary, name
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    staged = list(pool.map(stage, names))
    list(pool.map(lambda pair: os.replace(*pair), staged))
"""


# The least work a --check of the 100k tree could do, as one program: the
# interpreter starting and compiling this module (argv[1]), `git grep -l -z`
# (with argv[2] threads, as the tool) read as git names each file, each named
# file read whole as it is named, its pinned references found with one regex,
# and one line printed for each that prod_digests.txt does not pin. No
# symbolic link, submodule, encoding, index mark or Dockerfile is looked at;
# nothing is written.
LEAST = """
import re, subprocess, sys
compile(open(sys.argv[1]).read(), "m", "exec")
pins = dict(line.strip().partition(b"@")[::2] for line in open("build_tools/docker/prod_digests.txt", "rb"))
pattern = re.compile(rb"gcr\\.io/iree-oss/[a-z0-9-]+@sha256:[0-9a-f]{64}")
git = subprocess.Popen(["git", "grep", "--threads", sys.argv[2], "-l", "-z", "-I", "-F", "-e", "gcr.io/iree-oss/", "--"], stdout=subprocess.PIPE)
stale, rest = [], b""
while chunk := git.stdout.read1(1 << 16):
    *names, rest = (rest + chunk).split(b"\\0")
    for name in names:
        data = open(name, "rb").read()
        for match in pattern.finditer(data):
            url, _, digest = match.group().partition(b"@")
            if pins.get(url) != digest:
                line = data.count(b"\\n", 0, match.start()) + 1
                stale.append(f"{name.decode()}:{line}: {url.decode()} is pinned to {digest.decode()}")
sys.stdout.write("\\n".join(stale) + "\\n")
sys.exit(git.wait())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case (default 5)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/manage-images-bench-scale"))
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="another copy of manage_images.py to time in the same alternation, its ratio printed beside "
        "(repeatable)",
    )
    args = parser.parse_args()
    others = [path.resolve() for path in args.compare]
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load()
    args.cache.mkdir(parents=True, exist_ok=True)
    big, many, few = fixture(args.cache, "200mb"), fixture(args.cache, "100k"), fixture(args.cache, "1k")
    size_kib = (big / "big.txt").stat().st_size // 1024
    copy = ["cp", "big.txt", "/tmp/manage-images-bench-copy.txt"]
    rows: list[tuple[str, dict[str, float], float | None, str]] = []  # (case, result, goal, against)
    repeat = args.repeat
    started = [sys.executable, "-c", "pass"]
    # Start-up: the interpreter starting and compiling the script, nothing run.
    startup = [sys.executable, "-c", f"compile(open({str(SCRIPT)!r}).read(), 'm', 'exec')"]
    changed = Path("/tmp/manage-images-bench-changed")  # the files the 100k rewrite changes
    stale = subprocess.run(
        (*GIT, "-C", str(many), "grep", "-l", "-z", "-I", "-F", "-e", f"{REGISTRY}/", "--", "src"),
        check=True,
        capture_output=True,
    ).stdout
    changed.write_bytes(stale)
    replace = [sys.executable, "-c", REPLACE, str(changed)]
    least_work = [sys.executable, "-c", LEAST, str(SCRIPT), THREADS]
    inspect = [
        "docker", "image", "inspect", "--format", "{{json .RepoDigests}}",
        *(f"{REGISTRY}/{image}:latest" for image in sorted(prod_digests())),
    ]  # fmt: skip
    for repo, label in ((many, "100k files"), (big, "200 MB file")):
        argv = tool("--check", "--images", "all")
        floor = [GREP_AS_TOOL, startup]
        least = [least_work] if repo == many else None
        result = compare(repo, argv, [GREP], repeat, False, floor, other_argvs(argv, others), least)
        rows.append((f"{label}, --check --images all", result, 1.2 if repo == many else 3.0, "git grep"))
        baseline = [GREP] if repo == many else [GREP, copy]
        floor = [GREP_AS_TOOL, startup, replace] if repo == many else None
        least = [least_work, replace] if repo == many else None
        argv = tool("--only_references", "--images", "all")
        result = compare(repo, argv, baseline, repeat, True, floor, other_argvs(argv, others), least)
        against = "git grep" if repo == many else "git grep + cp of the file"
        rows.append(
            (f"{label}, --only_references --images all", result, 1.5 if repo == many else 3.0, against)
        )
        if repo == big:
            memory = {"tool": result["memory_kib"], "base": size_kib, "memory_kib": result["memory_kib"]}
            rows.append((f"{label}, --only_references, peak memory", memory, 2.5, "the file's size"))
    result = compare(many, GREP_AS_TOOL, [GREP], repeat, reset=False)
    rows.append(
        (
            f"(reference) 100k files, `git grep --threads {THREADS}`, as the tool greps",
            result,
            None,
            "git grep",
        )
    )
    check = tool("--check", "--images", "all")
    result = compare(many, [*check, "--changed_since", "HEAD"], [check], repeat, reset=False)
    rows.append(("100k files, --check --images all --changed_since HEAD", result, 1.3, "--check alone"))
    for repo, label, goal in ((many, "100k files", 1.5), (few, "1k files", 5.0)):
        argv = tool("--images", "all", "-n", "--update_references")
        rows.append(
            (
                f"{label}, --images all -n --update_references",
                compare(
                    repo,
                    argv,
                    [GREP],
                    repeat,
                    False,
                    [GREP_AS_TOOL, startup, inspect],
                    other_argvs(argv, others),
                ),
                goal,
                "git grep",
            )
        )
    for args_ in (["--help"], ["--graph", "--images", "all"]):
        argv = tool(*args_)
        result = compare(few, argv, [started], repeat * 4, False, [startup], other_argvs(argv, others))
        rows.append((f"`{' '.join(args_)}`", result, 1.6, "python3 -c pass"))
    # The same, run as a module: Python then caches its bytecode (unless
    # PYTHONDONTWRITEBYTECODE says not to, hence `env -u`), so nothing is compiled.
    cached = ["env", "-u", "PYTHONDONTWRITEBYTECODE", sys.executable]
    subprocess.run(
        [*cached, "-m", "build_tools.docker.manage_images", "--help"], cwd=ROOT, capture_output=True
    )
    for args_ in (["--help"], ["--graph", "--images", "all"]):
        argv = [*cached, "-m", "build_tools.docker.manage_images", *args_]
        result = compare(ROOT, argv, [[*cached, "-c", "pass"]], repeat * 4, reset=False)
        rows.append(
            (
                f"(reference) `python3 -m build_tools.docker.manage_images {' '.join(args_)}`",
                result,
                None,
                "python3 -c pass",
            )
        )
    os.unlink("/tmp/manage-images-bench-copy.txt")
    changed.unlink()
    print(f"Measured {started_at} by benchmarks/bench_scale.py")
    print(f"Machine: {machine()}")
    print(f"Load average (1 / 5 / 15 min): {load_before} before the run, {load()} after")
    cpus = manage_images.usable_cpus()
    print(
        f"git grep: the tool's with {THREADS} threads ({cpus} CPUs to run on); the baseline's with git's default"
    )
    print(f"Medians of {repeat} alternated runs ({repeat * 4} for start-up); fixtures under {args.cache}")
    for number, other in enumerate(others, start=1):
        print(f"compared ({number}): {other}, in the same alternation")
    print()
    extra = ("".join(f" ({number}) |" for number in range(1, len(others) + 1)), "---:|" * len(others))
    print(f"| case | tool | baseline | ratio |{extra[0]} floor | least work | goal | against |")
    print(f"|---|---:|---:|---:|{extra[1]}---:|---:|---:|---|")
    missed = 0
    for case, result, goal, against in rows:
        ratio = result["tool"] / result["base"]
        missed += goal is not None and ratio > goal
        if "memory" in case:
            values = f"{result['tool'] / 1024:.0f} MiB | {result['base'] / 1024:.0f} MiB"
        else:
            values = f"{result['tool']:.3f} s | {result['base']:.3f} s"
        floor = f"{result['floor'] / result['base']:.2f}x" if "floor" in result else "-"
        least = f"{result['least'] / result['base']:.2f}x" if "least" in result else "-"
        compared = "".join(
            f" {result[key] / result['base']:.2f}x |" if key in result else " - |"
            for key in (f"other{number}" for number in range(len(others)))
        )
        print(
            f"| {case} | {values} | {ratio:.2f}x |{compared} {floor} | {least} | {'-' if goal is None else f'<= {goal}x'} | {against} |"
        )
    goals = sum(goal is not None for _, _, goal, _ in rows)
    print(f"\n{goals - missed} of {goals} goals met")
    return 1 if missed else 0


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_scale", main))
