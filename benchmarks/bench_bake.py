#!/usr/bin/env python3
"""Benchmark: the tool against one `docker buildx bake` on the same image graph.

Needs the engines to compare (tests/provision-engines.sh; bake needs buildx, so
the classic engine runs only the cold flow) and docker-registry. For each engine
asked for (`--engine buildkit|containerd|classic|all`, repeatable; default: the
one MANAGE_IMAGES_ENGINE names, else the engine the environment points at), it
starts a private registry on 127.0.0.1 and lays out the images of the graph
twice, every image with a layer of `--layer-mb` MB of random bytes of its own:

- for the tool, the test tree of tests/fake_tree.py, built, pushed and pinned
  by the tool (`--images all --build --push --update_references`);
- for bake, the same Dockerfiles under another repository path, and a bake file
  (docker-bake.json), written from the graph as a bake user would write it: one
  target per image, each parent linked through a `target:` context, every target
  pushed (`bake --push --provenance=false --sbom=false`).

Then, `--pairs` times, interleaved (the tool first in odd pairs, bake first in
even ones), it runs each scenario on both:

1. full rebuild + push: base and util edited (so every image builds again);
   the tool's main job, `--images all --build --push --update_references -j N`;
2. nothing changed + push: the tool with `--skip_unchanged`, bake as it is;
3. one leaf edited: the same, after an edit to an image nothing is built on.

It prints each scenario's ratio tool / bake (min, median, max over the pairs),
both medians, the images each tool built, the tool's own CPU seconds per image
(its Python process) and its commands' (docker, buildx), bake's CPU per image,
and the docker commands the tool ran per image. Last, on fresh engines of the
same kind (same dockerd, image store and buildx), the cold `prod` flow
(`--images all --tag prod --build --update_references --skip_unchanged -j 4`)
against pulling the pinned images one after another.

Goals: full rebuild + push at most 1.0 x bake, nothing changed at most 0.5 x
(medians, on the BuildKit engines); one leaf edited builds one image; the cold
flow within 1.5 x the pull. Exits 1 if one is missed.

Usage: python3 benchmarks/bench_bake.py [--engine NAME]... [--pairs N] [--layer-mb M] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build_tools" / "docker"), str(ROOT / "tests")]

import fake_tree  # noqa: E402
import manage_images  # noqa: E402
from helpers import ENGINES, buildkit, engine_environ, engine_kind, fresh_engine, pins  # noqa: E402
from registry import Registry, running  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
ROOTS = sorted(image for image, parents in GRAPH.items() if not parents)
LEAF = min(image for image, built_on_it in manage_images.dependents_map(GRAPH).items() if not built_on_it)
MAIN_JOB = ("--images", "all", "--build", "--push", "--update_references")
PROD_FLOW = (
    "--images",
    "all",
    "--tag",
    "prod",
    "--build",
    "--update_references",
    "--skip_unchanged",
    "-j",
    "4",
)
BAKE = (
    "docker",
    "buildx",
    "bake",
    "--progress",
    "plain",
    "--push",
    "--provenance=false",
    "--sbom=false",
    "-f",
    "docker-bake.json",
)
GOALS = {"full rebuild + push": 1.0, "nothing changed + push": 0.5}
# The tool in a process of its own that writes, at its end, its own CPU seconds and its commands'.
WRAPPER = """
import json, os, resource, sys
sys.path.insert(0, os.environ["BENCH_MODULE_DIR"])
import manage_images
code = manage_images.main(sys.argv[1:])
own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
with open(os.environ["BENCH_RUSAGE"], "w") as out:
    json.dump({"code": code, "own": own.ru_utime + own.ru_stime,
               "commands": children.ru_utime + children.ru_stime}, out)
raise SystemExit(code)
"""


class Run:
    """One run of either tool: wall seconds, CPU seconds (own and of its commands), builds, commands."""

    def __init__(self, wall: float, own: float, commands: float, builds: int, docker: int) -> None:
        self.wall, self.own, self.commands, self.builds, self.docker = wall, own, commands, builds, docker


def tool(repo: Path, registry: Registry, env: dict[str, str], *args: str) -> Run:
    report = Path(tempfile.mktemp(prefix="bench-bake-"))
    started = time.monotonic()
    result = subprocess.run(
        (
            sys.executable,
            "-c",
            WRAPPER,
            "--registry",
            registry.url,
            "--progress",
            "plain",
            "--json",
            str(report.with_suffix(".json")),
            *args,
        ),
        cwd=repo,
        env={**env, "BENCH_RUSAGE": str(report), "BENCH_MODULE_DIR": str(SCRIPT.parent)},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"the tool failed ({' '.join(args)}):\n{result.stdout[-3000:]}\n{result.stderr}")
    usage = json.loads(report.read_text())
    images = json.loads(report.with_suffix(".json").read_text())["images"]
    report.unlink()
    report.with_suffix(".json").unlink()
    builds = sum(
        1
        for image in images
        if "build" in image["durations"] and not (image["inputs"] or {}).get("unchanged")
    )
    docker = sum(1 for line in result.stdout.splitlines() if "Running: `docker " in line)
    return Run(wall, usage["own"], usage["commands"], builds, docker)


def bake(folder: Path, env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(BAKE, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"bake failed:\n{result.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(wall, cpu, 0.0, len(built_targets(result.stderr)), 1)


def built_targets(output: str) -> set[str]:
    """The images whose random layer bake's plain output shows run, not CACHED. A step is
    named by the layer it writes (`/layer-IMAGE`), not by the target in its brackets: BuildKit
    runs a step that several targets share once, and shows it under any one of them."""
    steps = dict(
        re.findall(r"^#(\d+) \[[^\]]*\] RUN head -c \d+ /dev/urandom > /layer-([\w.-]+)$", output, re.M)
    )
    cached = set(re.findall(r"^#(\d+) CACHED", output, re.M))
    return {image for step, image in steps.items() if step not in cached}


def per_image(folder: Path, path: str, env: dict[str, str], jobs: int) -> Run:
    """The floor of any tool that builds each image with a `docker build` of its own: the
    images of the tree `folder` (under the repository path `path`), each built and pushed by
    one `buildx build --push` (the plugin started directly, as the tool starts it) as soon as
    its parents' have ended, on their pushed digests (named contexts; each digest read from
    buildx's metadata), `jobs` at a time, and nothing else: no registry question, no label,
    no file rewritten."""
    import concurrent.futures
    import graphlib

    facts = subprocess.run(
        ("docker", "info", "--format", "{{json .ClientInfo}}"), env=env, check=True, capture_output=True
    )
    client = json.loads(facts.stdout)
    plugin = next(plugin["Path"] for plugin in client["Plugins"] if plugin["Name"] == "buildx")
    env = {**env, "BUILDX_BUILDER": env.get("BUILDX_BUILDER") or client.get("Context") or "default"}
    digests: dict[str, str] = {}
    sorter = graphlib.TopologicalSorter({image: list(parents) for image, parents in GRAPH.items()})
    sorter.prepare()

    def build(image: str) -> str:
        metadata = folder / f"{image}.metadata.json"
        contexts = [
            word
            for parent in GRAPH[image]
            for word in (
                "--build-context",
                f"{path}/{parent}@{fake_tree.PLACEHOLDER}=docker-image://{path}/{parent}@{digests[parent]}",
            )
        ]
        argv = (plugin, "build", "--push", "--provenance=false", "--sbom=false")
        argv += ("--metadata-file", str(metadata), "--tag", f"{path}/{image}:latest", *contexts)
        subprocess.run(
            (*argv, f"build_tools/docker/{image}"), cwd=folder, env=env, check=True, capture_output=True
        )
        return str(json.loads(metadata.read_text())["containerimage.digest"])

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        running: dict[concurrent.futures.Future[str], str] = {}
        while sorter.is_active():
            for image in sorter.get_ready():
                running[pool.submit(build, image)] = image
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                image = running.pop(future)
                digests[image] = future.result()
                sorter.done(image)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(time.monotonic() - started, 0.0, cpu, len(GRAPH), len(GRAPH))


def bake_file(registry: Registry, folder: Path) -> dict[str, object]:
    """One target per image of the graph, its parents linked through `target:` contexts (the
    references its Dockerfile names, as written)."""
    url = f"{registry.host}/bake"
    targets = {}
    for image, parents in GRAPH.items():
        contexts = {f"{url}/{parent}@{fake_tree.PLACEHOLDER}": f"target:{parent}" for parent in parents}
        targets[image] = {
            "context": f"build_tools/docker/{image}",
            "tags": [f"{url}/{image}:latest"],
            **({"contexts": contexts} if contexts else {}),
        }
    return {"group": {"default": {"targets": sorted(GRAPH)}}, "target": targets}


def with_layers(root: Path, megabytes: float) -> None:
    for image in GRAPH:
        dockerfile = root / "build_tools" / "docker" / image / "Dockerfile"
        dockerfile.write_text(
            dockerfile.read_text() + f"RUN head -c {int(megabytes * 1e6)} /dev/urandom > /layer-{image}\n"
        )
    fake_tree.git(root, "commit", "-q", "-am", f"A layer of {megabytes:g} MB in each image")


def edit(roots: list[Path], images: list[str]) -> None:
    """The same edit in each tree, with a nonce of its own: otherwise the engine's cache would
    give the second tree to build the layers the first one just built."""
    for root in roots:
        nonce = uuid.uuid4().hex
        for image in images:
            (root / "build_tools" / "docker" / image / "stamp").write_text(f"{image} {nonce}\n")


SCENARIOS = {
    "full rebuild + push": (ROOTS, ()),
    "nothing changed + push": ([], ("--skip_unchanged",)),
    "one leaf edited": ([LEAF], ("--skip_unchanged",)),
}


def pairs(
    repo: Path, baked: Path, floor: Path, registry: Registry, env: dict[str, str], count: int, jobs: int
) -> tuple[dict[str, list[tuple[Run, Run]]], list[Run]]:
    """Each scenario `count` times on both, interleaved; and the per-image floor of each full rebuild."""
    runs: dict[str, list[tuple[Run, Run]]] = {name: [] for name in SCENARIOS}
    floors = []
    for number in range(count):
        for name, (edited, flags) in SCENARIOS.items():
            edit([repo, baked, floor], edited)
            order = ("tool", "bake") if number % 2 == 0 else ("bake", "tool")
            done = {}
            for which in order:
                if which == "tool":
                    done[which] = tool(repo, registry, env, *MAIN_JOB, *flags, "-j", str(jobs))
                else:
                    done[which] = bake(baked, env)
            if name == "full rebuild + push":
                floors.append(per_image(floor, f"{registry.host}/floor", env, jobs))
            fake_tree.git(repo, "commit", "-q", "--allow-empty", "-am", f"{name} {number}")
            runs[name].append((done["tool"], done["bake"]))
    return runs, floors


def cold_flow(
    repo: Path, registry: Registry, environ: dict[str, str], repeat: int
) -> tuple[list[float], list[float]]:
    """Wall seconds of the cold prod flow and of pulling the pins, each on fresh engines."""
    pinned = pins(repo, registry)
    flows, pulls = [], []
    for _ in range(repeat):
        with fresh_engine(environ) as env:
            started = time.monotonic()
            for image, digest in pinned.items():
                subprocess.run(
                    ("docker", "pull", "-q", f"{registry.url}/{image}@{digest}"),
                    env=env,
                    check=True,
                    capture_output=True,
                )
            pulls.append(time.monotonic() - started)
        with fresh_engine(environ) as env:
            run = tool(repo, registry, env, *PROD_FLOW)
            if run.builds:
                sys.exit(f"the cold prod flow built {run.builds} images")
            flows.append(run.wall)
        if fake_tree.git(repo, "status", "--porcelain"):
            sys.exit("the cold prod flow changed references")
    return flows, pulls


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def report(runs: dict[str, list[tuple[Run, Run]]], images: int) -> bool:
    print(
        "| scenario | tool / bake (min / median / max) | tool | bake | images built (tool / bake) | tool CPU per image: own + commands | bake CPU per image | docker commands per image (tool) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    met = True
    for name, results in runs.items():
        ratios = [mine.wall / theirs.wall for mine, theirs in results]
        median = statistics.median
        mine = [run for run, _ in results]
        theirs = [run for _, run in results]
        print(
            f"| {name} | {spread(ratios)} | {median(run.wall for run in mine):.1f} s | {median(run.wall for run in theirs):.1f} s "
            f"| {median(run.builds for run in mine):g} / {median(run.builds for run in theirs):g} "
            f"| {median(run.own for run in mine) / images:.3f} + {median(run.commands for run in mine) / images:.3f} s "
            f"| {median(run.own for run in theirs) / images:.3f} s | {median(run.docker for run in mine) / images:.2f} |"
        )
        if name in GOALS and median(ratios) > GOALS[name]:
            met = False
        if name == "one leaf edited" and median(run.builds for run in mine) != 1:
            met = False
    return met


def bench_engine(engine: str | None, folder: Path, args: argparse.Namespace) -> bool:
    environ = engine_environ(engine, folder / "docker-config")
    with running(folder / "registry") as registry:
        repo = fake_tree.make_tree(folder / "tool", registry.url, GRAPH)
        with_layers(repo, args.layer_mb)
        tool(repo, registry, environ, *MAIN_JOB, "-j", str(args.jobs))
        fake_tree.git(repo, "commit", "-q", "-am", "Pin the images")
        version, driver, store, builder = engine_kind(environ)
        print(
            f"Engine {engine or 'from the environment'}: Docker {version}, {builder} builder, {driver} ({store} image store)"
        )
        print(
            f"{len(GRAPH)} images, each with a layer of {args.layer_mb:g} MB of random bytes; -j {args.jobs}; {args.pairs} interleaved pairs\n"
        )
        met = True
        if buildkit(environ):
            baked = fake_tree.make_tree(folder / "bake", f"{registry.host}/bake", GRAPH)
            with_layers(baked, args.layer_mb)
            (baked / "docker-bake.json").write_text(json.dumps(bake_file(registry, baked), indent=1))
            bake(baked, environ)  # the same start as the tool's: everything built and pushed once
            floor = fake_tree.make_tree(folder / "floor", f"{registry.host}/floor", GRAPH)
            with_layers(floor, args.layer_mb)
            per_image(floor, f"{registry.host}/floor", environ, args.jobs)  # built and pushed once too
            runs, floors = pairs(repo, baked, floor, registry, environ, args.pairs, args.jobs)
            met = report(runs, len(GRAPH))
            full = [theirs.wall for _, theirs in runs["full rebuild + push"]]
            walls = [run.wall for run in floors]
            print(
                "\nThe floor of a build per image (one `buildx build --push` each, the plugin started "
                f"directly, on its parents' pushed digests, nothing else), full rebuild + push: "
                f"{statistics.median(walls):.1f} s "
                f"({spread(walls)} s), {statistics.median(walls) / statistics.median(full):.2f} x bake; "
                f"its commands' CPU per image: {statistics.median(run.commands for run in floors) / len(GRAPH):.3f} s"
            )
        else:
            print("(no buildx on this engine: no bake to compare with)")
        flows, pulls = cold_flow(repo, registry, environ, args.pairs)
        ratio = statistics.median(flows) / statistics.median(pulls)
        print(
            f"\nCold prod flow (--skip_unchanged) on {args.pairs} fresh engines: {statistics.median(flows):.1f} s "
            f"against pulling the {len(GRAPH)} pins: {statistics.median(pulls):.1f} s; ratio {ratio:.2f} "
            f"(flows {spread(flows)} s, pulls {spread(pulls)} s)"
        )
        met = met and ratio <= 1.5
        print(f"\nGoals on {engine or 'this engine'}: {'met' if met else 'MISSED'}\n")
        return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine",
        action="append",
        choices=(*ENGINES, "all"),
        help="engine to measure (repeatable; all: the three)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="interleaved runs of each scenario (default 3)")
    parser.add_argument(
        "--layer-mb", type=float, default=20, help="MB of random bytes in each image (default 20)"
    )
    parser.add_argument("--jobs", type=int, default=8, help="the tool's -j (default 8)")
    args = parser.parse_args()
    engines: list[str | None] = list(args.engine or [os.environ.get("MANAGE_IMAGES_ENGINE") or None])
    if "all" in engines:
        engines = list(ENGINES)
    load = os.getloadavg()[0]
    print(
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average {load:.2f} at the start; {time.strftime('%Y-%m-%d')}\n"
    )
    met = []
    for engine in dict.fromkeys(engines):
        with tempfile.TemporaryDirectory(prefix="bench-bake-") as scratch:
            met.append(bench_engine(engine, Path(scratch), args))
    return 0 if all(met) else 1


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_bake", main))
