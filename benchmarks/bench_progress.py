#!/usr/bin/env python3
"""Benchmark: what the terminal view (--progress tty) costs in CPU over --progress plain.

Needs a running Docker engine (tests/provision-docker.sh) and docker-registry.
Starts a private registry on 127.0.0.1, lays out a throwaway repository with
the 17-image graph, builds it once, then, in one run, alternates the two modes
on the same job: a change to base and util, so all 17 images rebuild, then
`--build --push --update_references --images all -j 4`. Two kinds of build:
silent ones (`RUN sleep S`), and ones that print R lines a second for S
seconds, as a real build's log does (apt-get, pip, a compiler). Both modes
run on a pseudo-terminal (100 x 30, TERM=xterm) whose output the benchmark
reads and drops.

CPU figures: the machine's (every process, the engine's builds included,
from /proc/stat around the run); from getrusage() in the tool's process at
its end, the run's (the tool and the docker and git commands it ran and
waited for; not the engine's work) and the tool's own (every thread); and,
within it, the view's own work: every `tick` of the scheduler's thread (the
view's clock), the draws they make and the final erase, timed with
time.thread_time() around them. That is all the code `tty` runs and `plain`
does not (`tty` also skips printing each build line, which `plain` pays
for), so it bounds what the view costs.

Usage: python3 benchmarks/bench_progress.py [--seconds S] [--rate R] [--repeat N]
Exits 1 if, in either kind of build, the view's own CPU is 2% or more of the
CPU a plain run costs the machine. It prints the view's share of the run's
own processes' CPU (the tool and its commands, the engine left out) too,
the stricter figure, and how much a tty run's CPU differs from the plain
run's next to it, with the spread of that difference over the pairs: with a
few repeats that spread is several percent, so the difference alone cannot
show 2%.
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
spent, depth, calls = [0.0], [0], [0]
def timed(function, counted):
    def measured(*args):
        calls[0] += counted
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
    setattr(manage_images.LiveView, name, timed(getattr(manage_images.LiveView, name), name == "draw"))
code = manage_images.main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(os.environ["BENCH_RUSAGE"], "w") as out:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "view": spent[0], "draws": calls[0], "code": code,
               "commands": children.ru_utime + children.ru_stime}, out)
"""


def on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Runs the tool with stdout and stderr on a new pseudo-terminal; its own CPU
    seconds (cpu), those of the view (view) and its number of draws (draws),
    those of the commands it ran (commands), its wall time (wall) and its exit
    code (code)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    report = Path(tempfile.mktemp(prefix="bench-rusage-"))
    busy = machine_cpu()
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
    machine = machine_cpu() - busy
    reader.join(timeout=10)
    os.close(master)
    result = json.loads(report.read_text())
    report.unlink()
    return {**result, "wall": wall, "machine": machine}


def machine_cpu() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat)."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def scenario(
    folder: Path, env: dict[str, str], seconds: float, rate: int, repeat: int
) -> dict[str, list[float]]:
    """Runs plain and tty `repeat` times each, alternated, on builds of `seconds`
    that print `rate` lines a second; each run's CPU, the view's CPU and wall time."""
    steps = ("--images", "all", "--build", "--push", "--update_references", "-j", "4")
    per_mode = [f"{figure} {mode}" for figure in ("wall", "run", "machine") for mode in ("plain", "tty")]
    runs: dict[str, list[float]] = {key: [] for key in ("plain", "tty", "view", "draws", "pair", *per_mode)}
    with running(folder / "registry") as registry:
        registry: Registry
        world = fake_tree.make_tree(folder / "world", registry.url, GRAPH, sleep=0 if rate else seconds)
        if rate:  # a build log's pace: a line every 1/rate s for `seconds`
            count = int(seconds * rate)
            for image in GRAPH:
                dockerfile = world / "build_tools" / "docker" / image / "Dockerfile"
                dockerfile.write_text(
                    dockerfile.read_text()
                    + f'RUN for i in $(seq 1 {count}); do echo "{image}: compiling unit $i of {count}"; '
                    f"sleep {1 / rate:g}; done\n"
                )
            fake_tree.git(world, "commit", "-q", "-am", "builds that print")
        bootstrap = ["--registry", registry.url, *steps, "--progress", "plain"]
        if on_a_terminal(bootstrap, world, env)["code"] != 0:
            sys.exit("the bootstrap run failed")
        fake_tree.git(world, "commit", "-q", "-am", "bootstrap")
        for attempt in range(repeat):
            for mode in ("plain", "tty") if attempt % 2 == 0 else ("tty", "plain"):
                repo = fake_tree.clone(world, folder / f"{mode}-{attempt}")
                for image in ("base", "util"):
                    (repo / "build_tools" / "docker" / image / "stamp").write_text(f"{mode} {time.time()}\n")
                fake_tree.git(repo, "commit", "-q", "-am", "change base and util")
                argv = ["--registry", registry.url, *steps, "--progress", mode]
                result = on_a_terminal(argv, repo, env)
                if result["code"] != 0:
                    sys.exit(f"the {mode} run failed (exit {result['code']:g})")
                runs[mode].append(result["cpu"])
                runs[f"wall {mode}"].append(result["wall"])
                runs[f"run {mode}"].append(result["cpu"] + result["commands"])
                runs[f"machine {mode}"].append(result["machine"])
                if mode == "tty":
                    runs["view"].append(result["view"])
                    runs["draws"].append(result["draws"])
            # This attempt's tty run against its plain run, both CPU of the run.
            runs["pair"].append(runs["run tty"][-1] / runs["run plain"][-1] - 1)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3, help="S: each image's build (default 3)")
    parser.add_argument(
        "--rate", type=int, default=10, help="lines a second the printing builds print (default 10)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternated (median)")
    args = parser.parse_args()

    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="mi-bench-progress-") as folder:
        for rate in (0, args.rate):
            results[rate] = scenario(Path(folder) / f"rate-{rate}", env, args.seconds, rate, args.repeat)

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
    print(
        "| builds | mode | wall time | machine CPU | CPU of the run (tool + commands) | ratio | "
        "tool's own CPU | ratio | the view's own CPU | view / plain machine CPU | view / plain run's CPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    met = True
    median = statistics.median
    for rate, runs in results.items():
        builds = f"print {rate} lines/s" if rate else "silent (sleep)"
        plain_run, plain_cpu = median(runs["run plain"]), median(runs["plain"])
        share = median(runs["view"]) / plain_run
        machine_share = median(runs["view"]) / median(runs["machine plain"])
        met = met and machine_share < GOAL
        print(
            f"| {builds} | plain | {median(runs['wall plain']):.1f} s | {median(runs['machine plain']):.2f} s | "
            f"{plain_run:.3f} s | 1.000 | {plain_cpu:.3f} s | 1.000 | - | - | - |"
        )
        print(
            f"| {builds} | tty | {median(runs['wall tty']):.1f} s | {median(runs['machine tty']):.2f} s | "
            f"{median(runs['run tty']):.3f} s | {median(runs['run tty']) / plain_run:.3f} | "
            f"{median(runs['tty']):.3f} s | {median(runs['tty']) / plain_cpu:.3f} | "
            f"{median(runs['view']) * 1000:.1f} ms | {machine_share:.2%} | {share:.2%} |"
        )
    print()
    for rate, runs in results.items():
        pairs = sorted(runs["pair"])
        print(
            f"rate {rate}: the view's own CPU {[round(x * 1000, 1) for x in runs['view']]} ms in "
            f"{[int(x) for x in runs['draws']]} draws "
            f"({1000 * sum(runs['view']) / max(sum(runs['draws']), 1):.2f} ms a draw, its clock's ticks "
            f"included); tty run's CPU (tool + commands) against the plain run beside it: "
            f"median {median(pairs):+.1%}, "
            f"from {pairs[0]:+.1%} to {pairs[-1]:+.1%} over {len(pairs)} pairs"
        )
    print(
        f"Goal: the view's own CPU under {GOAL:.0%} of the CPU a plain run costs the machine: "
        f"{'met' if met else 'missed'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_progress", main))
