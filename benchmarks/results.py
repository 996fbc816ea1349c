"""Benchmark results are written into benchmarks/README.md by the benchmark
itself, never pasted: `python3 benchmarks/bench_NAME.py ARGS --record` runs
the benchmark as usual, then replaces its block in the README (between
`<!-- results:NAME -->` and `<!-- /results:NAME -->`) with the command, the
date and everything it printed (its machine line and its table included).
`--record=LABEL` writes the block `NAME:LABEL` instead, for a benchmark kept
with two sets of arguments."""

from __future__ import annotations

import datetime
import io
import shlex
import sys
from pathlib import Path
from typing import Callable, TextIO

README = Path(__file__).resolve().parent / "README.md"
FLAG = "--record"


def block(name: str, command: str, date: str, output: str) -> str:
    """The README block of one recorded run."""
    return (
        f"<!-- results:{name} -->\n"
        f"Measured {date} with `{command}`:\n\n"
        f"```\n{output.strip()}\n```\n"
        f"<!-- /results:{name} -->"
    )


def replace_block(text: str, name: str, new: str) -> str:
    """`text` with the block NAME replaced by `new`; a ValueError if it has none."""
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    start = text.index(begin)
    stop = text.index(end, start) + len(end)
    return text[:start] + new + text[stop:]


class Tee(io.TextIOBase):
    """Standard output that also keeps what was written."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def recorded(name: str, main: Callable[[], int], argv: list[str] = sys.argv) -> int:
    """Runs `main`; with --record, writes what it printed into the README (when the
    benchmark finished: exit 0, or 1 for a goal missed)."""
    flags = [arg for arg in argv[1:] if arg == FLAG or arg.startswith(FLAG + "=")]
    if not flags:
        return main()
    label = flags[-1].partition("=")[2]
    argv[:] = [arg for arg in argv if arg not in flags]
    command = shlex.join(["python3", f"benchmarks/{Path(argv[0]).name}", *argv[1:]])
    tee = Tee(sys.stdout)
    sys.stdout = tee
    try:
        code = main()
    finally:
        sys.stdout = tee.stream
    if code in (0, 1):
        date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        key = f"{name}:{label}" if label else name
        README.write_text(
            replace_block(README.read_text(), key, block(key, command, date, tee.kept.getvalue()))
        )
        print(f"Recorded in {README} ({key}).")
    return code
