#!/usr/bin/env python3
"""Benchmark: the `prod` flow on a machine that never built the images.

Needs the engines to compare (tests/provision-engines.sh) and docker-registry.
For each engine asked for (`--engine classic|buildkit|containerd|all`,
repeatable; default: the one MANAGE_IMAGES_ENGINE names, else the engine the
environment points at): starts a private registry on 127.0.0.1, builds,
pushes and pins the 17-image test world (every image's build costs `RUN
sleep S`) on that engine, then, each time on a fresh, empty engine of the
same kind (same dockerd, image store and buildx), measures in one run:

1. the original's way: `--images all --tag prod --build` (every step runs
   again), and how many of the 17 images it reproduces (the content of the
   config the registry serves for the pin);
2. `--images all --tag prod --build --update_references --cache_from_pinned
   --verify_pinned` with -j 1 and -j 4, and how many it reproduces;
3. just pulling the 17 pinned images, one after another (`docker pull
   REGISTRY/NAME@DIGEST`);
4. the -j 1 flow of 2. run again on the engine that just ran it, every step
   now a local cache hit and nothing to pull: what one `docker build` per
   image costs on that engine at the least, with this tool or any other.

Goal, on each engine: the cached flow within 1.5 x the pull time, with 17 of
17 reproduced; exits 1 if it is missed on any. A flow that fails or changes
references is reported in the table (its exit code), not stopped.

`--layer-mb M` gives every image a layer of M MB of random bytes of its own
(`RUN head -c ... /dev/urandom`), as real CI images carry hundreds of MB:
the pull and the cold build then move the same bytes, and the ratio shows
what each build costs beyond them.

Usage: python3 benchmarks/bench_reproduce.py [--engine NAME]... [--seconds S] [--repeat N] [--layer-mb M]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build_tools" / "docker"), str(ROOT / "tests")]

import fake_tree  # noqa: E402
import manage_images  # noqa: E402
from helpers import ENGINES, engine_environ, engine_kind, fresh_engine, holds_the_pins_content, pins  # noqa: E402
from registry import Registry, running  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
GOAL = 1.5


def run(argv: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> tuple[float, int, str]:
    """Wall time, exit code and last line on stderr of `argv`; a failure stops the
    benchmark when `check`."""
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if check and result.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr}")
    return elapsed, result.returncode, (result.stderr.strip().splitlines() or [""])[-1]


def tool(
    repo: Path, registry: Registry, env: dict[str, str], *args: str, check: bool = True
) -> tuple[float, int, str]:
    return run([sys.executable, str(SCRIPT), "--registry", registry.url, *args], repo, env, check)


def reproduced(registry: Registry, pinned: dict[str, str], env: dict[str, str]) -> int:
    """How many images built as REGISTRY/NAME:prod hold their pin's content: the layers,
    runtime config and creation time of the config the registry serves for the pin
    (BuildKit's cache record in it may differ: see "Identity is content" in build_tools/docker/README.md)."""
    return sum(
        holds_the_pins_content(registry, image, digest, f"{registry.url}/{image}:prod", env)
        for image, digest in pinned.items()
    )


def scenario(
    name: str, repo: Path, registry: Registry, pinned: dict[str, str], repeat: int, environ: dict[str, str]
) -> tuple[float, int, str]:
    """Median wall time over `repeat` fresh engines of the kind `environ`
    points at, the images reproduced in the last, and what went wrong, if anything."""
    times, count, problems = [], 0, set()
    for _ in range(repeat):
        with fresh_engine(environ) as env:
            if name == "pull":
                started = time.monotonic()
                for image, digest in pinned.items():
                    run(["docker", "pull", "-q", f"{registry.url}/{image}@{digest}"], repo, env)
                times.append(time.monotonic() - started)
                continue
            if name == "original":
                args: tuple[str, ...] = ("-j", "4")
            elif name == "warm -j 1":
                args = ("--update_references", "--cache_from_pinned", "--verify_pinned", "-j", "1")
                tool(repo, registry, env, "--images", "all", "--tag", "prod", "--build", *args, check=False)
            else:
                args = (
                    "--update_references",
                    "--cache_from_pinned",
                    "--verify_pinned",
                    "-j",
                    name.rsplit(" ", 1)[1],
                )
            seconds, code, said = tool(
                repo, registry, env, "--images", "all", "--tag", "prod", "--build", *args, check=False
            )
            times.append(seconds)
            if code != 0 and name != "original":
                problems.add(f"exit {code}: {said[:300]}")
            if fake_tree.git(repo, "status", "--porcelain"):
                problems.add("references changed")
                fake_tree.git(repo, "checkout", "-q", "--", ".")
            count = reproduced(registry, pinned, env)
    return statistics.median(times), count, ", ".join(sorted(problems))


SCENARIOS = {
    "pull": "docker pull the 17 pinned images",
    "original": "original: --build -j 4 (every step reruns)",
    "cache_from_pinned -j 1": "--cache_from_pinned --verify_pinned -j 1",
    "cache_from_pinned -j 4": "--cache_from_pinned --verify_pinned -j 4",
    "warm -j 1": "the -j 1 flow again on the same engine (all cached locally)",
}


def bench_engine(engine: str | None, folder: Path, seconds: float, repeat: int, layer_mb: float) -> bool:
    """Prints the table for one engine; whether it met the goal."""
    environ = engine_environ(engine, folder / "docker-config")
    with running(folder / "registry") as registry:
        repo = fake_tree.make_tree(folder / "repo", registry.url, GRAPH, sleep=seconds)
        if layer_mb:
            for image in GRAPH:
                dockerfile = repo / "build_tools" / "docker" / image / "Dockerfile"
                dockerfile.write_text(
                    dockerfile.read_text()
                    + f"RUN head -c {int(layer_mb * 1e6)} /dev/urandom > /layer-{image}\n"
                )
            fake_tree.git(repo, "commit", "-q", "-am", f"A layer of {layer_mb:g} MB in each image")
        tool(
            repo, registry, environ, "--images", "all", "--build", "--push", "--update_references", "-j", "4"
        )
        fake_tree.git(repo, "commit", "-q", "-am", "Pin the images")
        pinned = pins(repo, registry)
        rows = {name: scenario(name, repo, registry, pinned, repeat, environ) for name in SCENARIOS}
    version, driver, store, builder = engine_kind(environ)
    print(
        f"Engine {engine or 'from the environment'}: Docker {version}, {builder} builder, "
        f"{driver} ({store} image store); "
        + (
            f"each image adds a layer of {layer_mb:g} MB of random bytes\n"
            if layer_mb
            else "busybox images\n"
        )
    )
    print("| scenario on a fresh engine | wall time | ratio to pulling | reproduced | problem |")
    print("|---|---:|---:|---:|---|")
    pull = rows["pull"][0]
    for name, (wall, count, problem) in rows.items():
        shown = "-" if name == "pull" else f"{count}/17"
        print(f"| {SCENARIOS[name]} | {wall:.1f} s | {wall / pull:.2f} | {shown} | {problem or '-'} |")
    best = min(rows["cache_from_pinned -j 1"][0], rows["cache_from_pinned -j 4"][0])
    met = best <= GOAL * pull and all(
        rows[name][1] == 17 and not rows[name][2] for name in rows if name.startswith("cache")
    )
    print(
        f"\nGoal on {engine or 'this engine'}: cached flow within {GOAL} x the pull time, 17/17 reproduced: "
        f"{'met' if met else 'MISSED'}\n"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine",
        action="append",
        choices=(*ENGINES, "all"),
        help="engine of the matrix to measure (repeatable; all: the three); "
        "default: MANAGE_IMAGES_ENGINE, else the engine the environment points at",
    )
    parser.add_argument("--seconds", type=float, default=3, help="RUN sleep S in every image (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh engines per scenario (default 3)")
    parser.add_argument(
        "--layer-mb", type=float, default=0, help="a layer of M MB of random bytes in each image (default 0)"
    )
    args = parser.parse_args()
    engines: list[str | None] = list(args.engine or [os.environ.get("MANAGE_IMAGES_ENGINE") or None])
    if "all" in engines:
        engines = list(ENGINES)
    print(f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}")
    print(f"S = {args.seconds:g} s per image build; each scenario on {args.repeat} fresh engines (median)\n")
    met = []
    for engine in dict.fromkeys(engines):
        with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as scratch:
            met.append(bench_engine(engine, Path(scratch), args.seconds, args.repeat, args.layer_mb))
    return 0 if all(met) else 1


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_reproduce", main))
