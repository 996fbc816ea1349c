#!/usr/bin/env python3
"""Benchmark: parallel rebuilds against the critical path, and the tool's overhead.

Needs a running Docker engine (tests/provision-docker.sh) and docker-registry.
Starts a private registry on 127.0.0.1, builds a throwaway repository with the
17-image graph where every image's build costs `RUN sleep S`, then measures,
in one run:

1. "Edit base, rebuild the world": `--build --push --update_references
   --images all` after a change to base (14 images rebuild, uncached, because
   each parent's digest changes), with -j 1, 2, 4, 8. Reported against the
   critical-path bound: the longest chain of images that rebuild, times S.
2. "Nothing changed": the same command with everything cached, against the
   same docker commands (build, push, inspect) issued by a plain shell loop.

Usage: python3 benchmarks/bench_parallel.py [--seconds S] [--jobs 1 2 4 8] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
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
from registry import Registry, running  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
STEPS = ("--build", "--push", "--update_references")


def timed_tool(
    repo: Path, registry: Registry, *args: str, env: dict[str, str] | None = None
) -> tuple[float, str]:
    """Runs the tool in `repo` against `registry`; its wall time and its standard output. A
    failed run ends the benchmark, with the tool's last output."""
    started = time.monotonic()
    result = subprocess.run(
        (sys.executable, str(SCRIPT), "--registry", registry.url, *args),
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(args)}):\n{result.stdout[-3000:]}\n{result.stderr}")
    return elapsed, result.stdout


def tool(repo: Path, registry: Registry, *args: str) -> tuple[float, dict[str, float]]:
    """Runs the tool; returns its wall time and the seconds its summary gives each image."""
    elapsed, output = timed_tool(repo, registry, *args)
    per_image = {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"^  (\S+)\s+done\s+\S+\s+([\d.]+)s", output, re.M)
    }
    return elapsed, per_image


def shell_loop(repo: Path, registry: Registry, order: list[str]) -> float:
    """The same docker commands as the tool's cached run, from a plain shell loop."""
    script = (
        "set -e\nfor image in "
        + " ".join(order)
        + "; do\n"
        + (
            f'  docker build --tag "{registry.url}/$image:latest" "build_tools/docker/$image"\n'
            f'  docker push "{registry.url}/$image:latest"\n'
            f'  docker image inspect --format "{{{{json .RepoDigests}}}}" "{registry.url}/$image:latest"\n'
            "done\n"
        )
    )
    started = time.monotonic()
    subprocess.run(("bash", "-c", script), cwd=repo, check=True, capture_output=True)
    return time.monotonic() - started


def longest_chain(images: set[str], cost=lambda image: 1.0) -> float:
    """The total cost of the costliest dependency chain within `images`."""
    depth: dict[str, float] = {}
    for image in manage_images.ordered_images_to_process(sorted(GRAPH), GRAPH):
        if image in images:
            depth[image] = cost(image) + max(
                (depth[parent] for parent in GRAPH[image] if parent in images), default=0
            )
    return max(depth.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=3, help="S: the cost of each image's build (default 3)"
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the nothing-changed comparison (median)"
    )
    args = parser.parse_args()

    rebuilt = set(manage_images.ordered_images_to_process(["base"], GRAPH))
    chain = int(longest_chain(rebuilt))
    bound = chain * args.seconds
    order = manage_images.ordered_images_to_process(sorted(GRAPH), GRAPH)
    with tempfile.TemporaryDirectory(prefix="mi-bench-") as folder:
        folder = Path(folder)
        with running(folder / "registry") as registry:
            world = fake_tree.make_tree(folder / "world", registry.url, GRAPH, sleep=args.seconds)
            tool(world, registry, "--images", "all", *STEPS, "-j", "8")
            fake_tree.git(world, "commit", "-q", "-am", "bootstrap")

            rebuilds = []
            for jobs in args.jobs:
                repo = fake_tree.clone(world, folder / f"j{jobs}")
                stamp = repo / "build_tools" / "docker" / "base" / "stamp"
                stamp.write_text(f"base bench -j{jobs} {time.time()}\n")
                fake_tree.git(repo, "commit", "-q", "-am", "change base")
                rebuilds.append((jobs, *tool(repo, registry, "--images", "all", *STEPS, "-j", str(jobs))))

            cached, cached_parallel, loop = [], [], []
            for attempt in range(args.repeat):
                # Alternate which goes first, so neither gains from the other's warm caches.
                runs = [
                    lambda: loop.append(shell_loop(world, registry, order)),
                    lambda: cached.append(tool(world, registry, "--images", "all", *STEPS)[0]),
                    lambda: cached_parallel.append(
                        tool(world, registry, "--images", "all", *STEPS, "-j", "8")[0]
                    ),
                ]
                for run in runs if attempt % 2 == 0 else reversed(runs):
                    run()
            if fake_tree.git(world, "status", "--porcelain"):
                sys.exit("the nothing-changed run changed files: the benchmark tree is inconsistent")

    engine = subprocess.run(
        ("docker", "version", "--format", "{{.Server.Version}}"), capture_output=True, text=True
    ).stdout.strip()
    print(
        f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Docker engine {engine}"
    )
    print(
        f"S = {args.seconds:g} s per image build; {len(rebuilt)} images rebuild after a change to base; "
        f"critical-path bound = {chain} x S = {bound:.1f} s"
    )
    sequential = next((seconds for jobs, seconds, _ in rebuilds if jobs == 1), None)
    if sequential is not None:
        per_image = next(times for jobs, _, times in rebuilds if jobs == 1)
        measured = longest_chain(rebuilt, lambda image: per_image.get(image, 0.0))
        print(
            f"Measured critical path (each image's own time in the -j 1 run, build + push + "
            f"rewrite, along the costliest chain) = {measured:.1f} s"
        )
    print()
    print("| scenario | wall time | ratio | against | speedup over -j 1 |")
    print("|---|---:|---:|---|---:|")
    for jobs, seconds, _ in rebuilds:
        speedup = f"{sequential / seconds:.2f}x" if sequential else "-"
        print(
            f"| edit base, rebuild the world, -j {jobs} | {seconds:.1f} s | {seconds / bound:.2f} | "
            f"critical-path bound ({chain} x S) | {speedup} |"
        )
    loop_median = statistics.median(loop)
    for label, times in (("-j 1", cached), ("-j 8", cached_parallel)):
        median = statistics.median(times)
        print(
            f"| nothing changed, tool {label} | {median:.1f} s | {median / loop_median:.2f} | "
            f"plain shell loop | - |"
        )
    print(f"| nothing changed, plain shell loop | {loop_median:.1f} s | 1.00 | itself | - |")
    print(f"(nothing-changed times are medians of {args.repeat} runs)")
    return 0


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_parallel", main))
