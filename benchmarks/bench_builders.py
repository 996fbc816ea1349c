#!/usr/bin/env python3
"""Benchmark: one rebuild after a change to base on 1, 2 and 3 builders (#31, --builder).

Needs a running Docker engine (tests/provision-engines.sh; MANAGE_IMAGES_ENGINE names one
of the matrix, else the engine the environment points at) and docker-registry. Starts a
private registry on 127.0.0.1 and two more engines of the same kind (each its own
socket, data root, exec root and pid file), makes a docker context for each engine in a
docker config of its own, and lays out the test tree of tests/fake_tree.py with every
image's build costing `RUN sleep S`: a build step that waits rather than burns CPU, so
three engines on a small machine behave like three machines.

After the tree is built, pushed and pinned once (on the first engine), each pool size
N in 1, 2, 3 gets a clone with base edited (every image built on base rebuilds, each
parent's digest changing), rebuilt with `--build --push --update_references --images
all -j J --builder ...` on the first N engines. Reported: wall time, its ratio to the
critical-path bound (the longest chain of images that rebuild, times S) and to one
builder, and the images each builder built.

Goal: 3 builders within 1.1 x the critical-path bound. Exits 1 if missed.

Usage: python3 benchmarks/bench_builders.py [--seconds S] [--jobs J]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build_tools" / "docker"), str(ROOT / "tests")]

import fake_tree  # noqa: E402
import manage_images  # noqa: E402
from helpers import engine_environ, engine_kind, fresh_engine  # noqa: E402
from registry import Registry, running  # noqa: E402

from bench_parallel import longest_chain, timed_tool  # noqa: E402  (the same graph, the same chain)

GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
STEPS = ("--images", "all", "--build", "--push", "--update_references")
NAMES = ("one", "two", "three")
GOAL = 1.1


def tool(repo: Path, registry: Registry, env: dict[str, str], *args: str) -> tuple[float, dict]:
    """Runs the tool; its wall time and its --json report."""
    elapsed, output = timed_tool(repo, registry, *args, "--json", "-", env=env)
    return elapsed, json.loads(output)


def make_contexts(config: Path, engines: dict[str, dict[str, str]]) -> None:
    for name, env in engines.items():
        subprocess.run(
            ("docker", "context", "create", name, "--docker", f"host={env['DOCKER_HOST']}"),
            env={**env, "DOCKER_CONFIG": str(config)},
            check=True,
            capture_output=True,
        )


def rebuilds(folder: Path, registry: Registry, env: dict[str, str], world: Path, jobs: int) -> list:
    """(pool size, wall time, images done per builder, seconds per image) for each pool size."""
    measured = []
    for size in range(1, len(NAMES) + 1):
        repo = fake_tree.clone(world, folder / f"pool{size}")
        (repo / "build_tools/docker/base/stamp").write_text(f"base bench {size} {time.time()}\n")
        fake_tree.git(repo, "commit", "-q", "-am", "change base")
        pool = [arg for name in NAMES[:size] for arg in ("--builder", name)]
        seconds, report = tool(repo, registry, env, *STEPS, "-j", str(jobs), *pool)
        counts = {name: 0 for name in NAMES[:size]}
        for image in report["images"]:
            counts[image["builder"]] += image["result"] == "done"
        measured.append(
            (size, seconds, counts, {image["name"]: image["seconds"] for image in report["images"]})
        )
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4, help="S: each image build's sleep (default 4)")
    parser.add_argument("--jobs", type=int, default=1, help="J: images at a time per builder (default 1)")
    args = parser.parse_args()
    rebuilt = set(manage_images.ordered_images_to_process(["base"], GRAPH))
    chain = int(longest_chain(rebuilt))
    bound = chain * args.seconds
    with tempfile.TemporaryDirectory(prefix="mi-bench-builders-") as name, contextlib.ExitStack() as stack:
        folder = Path(name)
        env = engine_environ(os.environ.get("MANAGE_IMAGES_ENGINE") or None, folder / "docker-config")
        engines = {NAMES[0]: env}
        for other in NAMES[1:]:
            engines[other] = stack.enter_context(fresh_engine(env))
        make_contexts(folder / "docker-config", engines)
        registry = stack.enter_context(running(folder / "registry"))
        world = fake_tree.make_tree(folder / "world", registry.url, GRAPH, sleep=args.seconds)
        tool(world, registry, env, *STEPS, "-j", "4")
        fake_tree.git(world, "commit", "-q", "-am", "bootstrap")
        measured = rebuilds(folder, registry, env, world, args.jobs)
        version, driver, store, builder = engine_kind(env)  # (its buildx is in the folder)
    print(
        f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; {len(NAMES)} engines of one kind: Docker {version}, {builder} builder, "
        f"{driver} ({store} image store)"
    )
    print(
        f"S = {args.seconds:g} s per image build (RUN sleep); {len(rebuilt)} images rebuild after a change to "
        f"base; critical-path bound = {chain} x S = {bound:.1f} s; -j {args.jobs} per builder"
    )
    per_image = measured[0][3]
    print(
        "Measured critical path (each image's own time in the one-builder run, build + push + rewrite, along "
        f"the costliest chain) = {longest_chain(rebuilt, lambda image: per_image.get(image, 0.0)):.1f} s"
    )
    print()
    print("| builders | wall time | / critical-path bound | / one builder | images done per builder |")
    print("|---:|---:|---:|---:|---|")
    one = measured[0][1]
    for size, seconds, counts, _ in measured:
        spread = ", ".join(f"{name} {count}" for name, count in counts.items())
        print(f"| {size} | {seconds:.1f} s | {seconds / bound:.2f} | {seconds / one:.2f} | {spread} |")
    ratio = measured[-1][1] / bound
    print(
        f"Goal: {len(NAMES)} builders within {GOAL} x the critical path: {ratio:.2f} ({'met' if ratio <= GOAL else 'missed'})"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_builders", main))
