#!/usr/bin/env python3
"""Benchmark: the `prod` flow on a machine that never built the images.

Needs a running Docker engine (tests/provision-docker.sh) and docker-registry.
Starts a private registry on 127.0.0.1, builds, pushes and pins the 17-image
test world (every image's build costs `RUN sleep S`) on the main engine, then,
each time on a fresh, empty second engine, measures in one run:

1. the original's way: `--images all --tag prod --build` (every step runs
   again), and how many of the 17 images it reproduces (same image ID as the
   pinned one);
2. `--images all --tag prod --build --update_references --cache_from_pinned
   --verify_pinned` with -j 1 and -j 4, and how many it reproduces;
3. just pulling the 17 pinned images, one after another (`docker pull
   REGISTRY/NAME@DIGEST`).

Goal: the cached flow within 1.5 x the pull time, with 17 of 17 reproduced;
exits 1 if it is missed.

Usage: python3 benchmarks/bench_reproduce.py [--seconds S] [--repeat N]
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
from helpers import fresh_engine, image_id, pins, pull  # noqa: E402
from registry import Registry, running  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
GOAL = 1.5


def run(argv: list[str], cwd: Path, env: dict[str, str] | None, check: bool = True) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if check and result.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr}")
    return elapsed


def tool(repo: Path, registry: Registry, env: dict[str, str] | None, *args: str, check: bool = True) -> float:
    return run([sys.executable, str(SCRIPT), "--registry", registry.url, *args], repo, env, check)


def reproduced(registry: Registry, pinned: dict[str, str], env: dict[str, str]) -> int:
    """How many images built as REGISTRY/NAME:prod have the pinned image's ID."""
    count = 0
    for image, digest in pinned.items():
        ref = f"{registry.url}/{image}@{digest}"
        if image_id(ref, env) is None:
            pull(ref, env)
        count += image_id(f"{registry.url}/{image}:prod", env) == image_id(ref, env)
    return count


def scenario(
    name: str, repo: Path, registry: Registry, pinned: dict[str, str], repeat: int
) -> tuple[float, int]:
    """Median wall time over `repeat` fresh engines, and the images reproduced in the last."""
    times, count = [], 0
    for _ in range(repeat):
        with fresh_engine() as env:
            if name == "pull":
                started = time.monotonic()
                for image, digest in pinned.items():
                    run(["docker", "pull", "-q", f"{registry.url}/{image}@{digest}"], repo, env)
                times.append(time.monotonic() - started)
                continue
            if name == "original":
                times.append(
                    tool(repo, registry, env, "--images", "all", "--tag", "prod", "--build", "-j", "4")
                )
            else:
                jobs = name.rsplit(" ", 1)[1]
                flags = ("--update_references", "--cache_from_pinned", "--verify_pinned")
                times.append(
                    tool(
                        repo, registry, env, "--images", "all", "--tag", "prod", "--build", *flags, "-j", jobs
                    )
                )
                if fake_tree.git(repo, "status", "--porcelain"):
                    sys.exit(f"{name}: the prod flow changed references")
            count = reproduced(registry, pinned, env)
    return statistics.median(times), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3, help="RUN sleep S in every image (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh engines per scenario (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as scratch:
        folder = Path(scratch)
        with running(folder / "registry") as registry:
            repo = fake_tree.make_tree(folder / "repo", registry.url, GRAPH, sleep=args.seconds)
            tool(
                repo, registry, None, "--images", "all", "--build", "--push", "--update_references", "-j", "4"
            )
            fake_tree.git(repo, "commit", "-q", "-am", "Pin the images")
            pinned = pins(repo, registry)
            rows = {
                name: scenario(name, repo, registry, pinned, args.repeat)
                for name in ("pull", "original", "cache_from_pinned -j 1", "cache_from_pinned -j 4")
            }
    pull = rows["pull"][0]
    version = subprocess.run(
        ("docker", "version", "--format", "{{.Server.Version}}"), capture_output=True, text=True
    )
    print(
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"Docker engine {version.stdout.strip()}"
    )
    print(f"S = {args.seconds:g} s per image build; each scenario on {args.repeat} fresh engines (median)\n")
    print("| scenario on a fresh engine | wall time | ratio to pulling | reproduced |")
    print("|---|---:|---:|---:|")
    labels = {
        "pull": "docker pull the 17 pinned images",
        "original": "original: --build -j 4 (every step reruns)",
        "cache_from_pinned -j 1": "--cache_from_pinned --verify_pinned -j 1",
        "cache_from_pinned -j 4": "--cache_from_pinned --verify_pinned -j 4",
    }
    for name, (seconds, count) in rows.items():
        shown = "-" if name == "pull" else f"{count}/17"
        print(f"| {labels[name]} | {seconds:.1f} s | {seconds / pull:.2f} | {shown} |")
    best = min(rows["cache_from_pinned -j 1"][0], rows["cache_from_pinned -j 4"][0])
    met = best <= GOAL * pull and all(rows[name][1] == 17 for name in rows if name.startswith("cache"))
    print(
        f"\nGoal: cached flow within {GOAL} x the pull time, 17/17 reproduced: {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
