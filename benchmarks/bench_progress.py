#!/usr/bin/env python3
"""Benchmark: what the terminal view (--progress tty) costs in CPU over --progress plain.

Needs a running Docker engine (tests/provision-docker.sh) and docker-registry.
Starts a private registry on 127.0.0.1, lays out a throwaway repository with
the 17-image graph where every image's build costs `RUN sleep S`, builds it
once, then, in one run, alternates the two modes on the same job: a change to
base and util, so all 17 images rebuild, then `--build --push
--update_references --images all -j 4`. Both run on a pseudo-terminal
(100 x 30, TERM=xterm) whose output the benchmark reads and drops. The CPU
counted is the tool's own process (every thread; not the docker commands it
runs), from getrusage(RUSAGE_SELF) at its end, and, within it, the CPU the
view's own calls take (every tick, draw and the final erase, timed with
time.thread_time() around them): the whole-process difference between the
modes is smaller than the spread between two runs of one mode, so the goal is
judged on the view's own share of plain's CPU; both are printed.

Usage: python3 benchmarks/bench_progress.py [--seconds S] [--repeat N]
Exits 1 if the view costs 2% or more of plain's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build_tools" / "docker"), str(ROOT / "tests")]

import fake_tree  # noqa: E402
import manage_images  # noqa: E402
from registry import Registry, running  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
GOAL = 0.02
# Runs the tool's main() in this process and writes its own CPU seconds (user
# and system, every thread, not the commands it runs) and those spent drawing
# and erasing the view to $BENCH_RUSAGE.
WRAPPER = """
import json, os, resource, sys, time
sys.path.insert(0, os.environ["BENCH_MODULE_DIR"])
import manage_images
spent, depth = [0.0], [0]
def timed(function):
    def measured(*args):
        depth[0] += 1
        started = time.thread_time()
        try:
            return function(*args)
        finally:
            depth[0] -= 1
            if not depth[0]:
                spent[0] += time.thread_time() - started
    return measured
for name in ("tick", "draw", "close"):
    setattr(manage_images.LiveView, name, timed(getattr(manage_images.LiveView, name)))
code = manage_images.main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
with open(os.environ["BENCH_RUSAGE"], "w") as out:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "view": spent[0], "code": code}, out)
"""


def on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, int]:
    """Runs the tool with stdout and stderr on a new pseudo-terminal; its CPU
    seconds, those of the view, its wall time and its exit code."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    report = Path(tempfile.mktemp(prefix="bench-rusage-"))
    started = time.monotonic()
    process = subprocess.Popen(
        (sys.executable, "-c", WRAPPER, *argv),
        cwd=cwd,
        env={**env, "BENCH_RUSAGE": str(report), "BENCH_MODULE_DIR": str(SCRIPT.parent), "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:  # EIO once the terminal's last writer is gone
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process.wait()
    wall = time.monotonic() - started
    reader.join(timeout=10)
    os.close(master)
    result = json.loads(report.read_text())
    report.unlink()
    return result["cpu"], result["view"], wall, result["code"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2, help="S: each image's build (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternated (median)")
    args = parser.parse_args()

    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    steps = ("--images", "all", "--build", "--push", "--update_references", "-j", "4")
    cpu: dict[str, list[float]] = {"plain": [], "tty": []}
    wall: dict[str, list[float]] = {"plain": [], "tty": []}
    view: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mi-bench-progress-") as folder:
        folder = Path(folder)
        with running(folder / "registry") as registry:
            registry: Registry
            world = fake_tree.make_tree(folder / "world", registry.url, GRAPH, sleep=args.seconds)
            bootstrap = ["--registry", registry.url, *steps, "--progress", "plain"]
            if on_a_terminal(bootstrap, world, env)[-1] != 0:
                sys.exit("the bootstrap run failed")
            fake_tree.git(world, "commit", "-q", "-am", "bootstrap")
            for attempt in range(args.repeat):
                modes = ("plain", "tty") if attempt % 2 == 0 else ("tty", "plain")
                for mode in modes:
                    repo = fake_tree.clone(world, folder / f"{mode}-{attempt}")
                    for image in ("base", "util"):
                        (repo / "build_tools" / "docker" / image / "stamp").write_text(
                            f"{mode} {time.time()}\n"
                        )
                    fake_tree.git(repo, "commit", "-q", "-am", "change base and util")
                    argv = ["--registry", registry.url, *steps, "--progress", mode]
                    seconds, drawing, elapsed, code = on_a_terminal(argv, repo, env)
                    if code != 0:
                        sys.exit(f"the {mode} run failed (exit {code})")
                    cpu[mode].append(seconds)
                    wall[mode].append(elapsed)
                    if mode == "tty":
                        view.append(drawing)

    engine = subprocess.run(
        ("docker", "version", "--format", "{{.Server.Version}}"), capture_output=True, text=True
    ).stdout.strip()
    print(
        f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Docker engine {engine}"
    )
    print(
        f"17 images rebuild (base and util changed), -j 4, S = {args.seconds:g} s per build; "
        f"{args.repeat} runs of each mode, alternated, on a 100 x 30 pseudo-terminal; medians"
    )
    print()
    plain_cpu = statistics.median(cpu["plain"])
    print("| mode | tool CPU (own process) | of which the view | wall time | CPU ratio to plain |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("plain", "tty"):
        median = statistics.median(cpu[mode])
        drawn = f"{statistics.median(view) * 1000:.1f} ms" if mode == "tty" else "-"
        print(
            f"| --progress {mode} | {median:.3f} s | {drawn} | {statistics.median(wall[mode]):.1f} s | "
            f"{median / plain_cpu:.3f} |"
        )
    print()
    print(
        f"Each run's CPU (s): plain {[round(x, 3) for x in cpu['plain']]}, tty {[round(x, 3) for x in cpu['tty']]}"
    )
    whole = statistics.median(cpu["tty"]) / plain_cpu - 1
    drawing = statistics.median(view) / plain_cpu
    print(
        f"Whole process, tty over plain: {whole:+.1%} (run-to-run spread of plain: "
        f"{(max(cpu['plain']) - min(cpu['plain'])) / plain_cpu:.1%})"
    )
    met = drawing < GOAL
    print(
        f"The view (drawing, redrawing and erasing it): {drawing:.2%} of plain's CPU "
        f"(goal: under {GOAL:.0%}): {'met' if met else 'missed'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
