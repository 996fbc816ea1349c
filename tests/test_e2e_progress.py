"""End-to-end: the terminal view in a real terminal.

tmux runs the tool on the try-it tree (the 17 busybox images, a real engine
and registry), and `tmux capture-pane` reads the screen while the run goes on
and after it ends. Results are also read from the registry and the log files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import fake_tree
import manage_images
from helpers import (
    ALL,
    GRAPH,
    SCRIPT,
    STEPS,
    assert_pinned_to_registry,
    change_stamp,
    failed_run_exit_code,
    unavailable,
)

pytestmark = pytest.mark.e2e

HEADER = re.compile(
    r"^\[\d+/\d+\] \d+ done, \d+ running, \d+ failed, \d+ left \| \S+ elapsed(?: \| ~\S+ left)?$", re.M
)
NAMES = "|".join(sorted(map(re.escape, GRAPH), key=len, reverse=True))
# What --progress plain prints before each command (prefixed with -j).
COMMAND_LINE = re.compile(r"^(?:\[\S+\] )?Running: `", re.M)
RUNNING = re.compile(rf"^  (?:{NAMES}) +(?:build|push|update_references) +\S+  ", re.M)


@pytest.fixture(scope="session")
def tmux(engine) -> str:
    path = shutil.which("tmux")
    if path is None:
        message = "tmux is not installed; run tests/provision-terminal.sh"
        unavailable(message)
    return path


class Pane:
    """The tool running in a tmux pane of its own server; the pane stays once it ends."""

    def __init__(self, tmux: str, folder: Path, repo: Path, argv: list[str], columns: int = 100) -> None:
        self.tmux = tmux
        self.socket = f"mi-test-{uuid.uuid4().hex[:12]}"
        script = folder / f"{self.socket}.sh"
        script.write_text(
            # Ctrl-C is for the tool: the shell lives on to say how it ended.
            "#!/bin/sh\ntrap true INT\n"
            f'cd {shlex.quote(str(repo))}\n{shlex.join(argv)}\necho "[exit $?]"\nexec sleep 3600\n'
        )
        script.chmod(0o755)
        env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "TMUX")}
        self.command("new-session", "-d", "-s", "run", "-x", str(columns), "-y", "30", str(script), env=env)

    def command(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(
            (self.tmux, "-L", self.socket, "-f", "/dev/null", *args),
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def screen(self, history: bool = False, escapes: bool = False) -> str:
        """The visible screen (with `history`, every line since the start), wrapped lines joined."""
        options = ["-J"] + (["-S", "-"] if history else []) + (["-e"] if escapes else [])
        return self.command("capture-pane", "-p", *options, "-t", "run")

    def watch(self, timeout: float = 600, during=None) -> tuple[int, list[str]]:
        """Reads the screen every 0.2 s until the tool ends; its exit code and the screens seen."""
        screens: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen(escapes=True)
            screens.append(screen)
            if during is not None:
                during(self, re.sub(r"\x1b\[[0-9;]*m", "", screen))
            ended = re.search(r"^\[exit (\d+)\]$", self.screen(history=True), re.M)
            if ended:
                return int(ended.group(1)), screens
            time.sleep(0.2)
        raise AssertionError(f"the tool did not end within {timeout} s:\n{self.screen(history=True)}")

    def cursor_shown(self) -> bool:
        return self.command("display-message", "-p", "-t", "run", "#{cursor_flag}").strip() == "1"

    def close(self) -> None:
        subprocess.run((self.tmux, "-L", self.socket, "kill-server"), capture_output=True)


def plain(screen: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", screen)


def tool(registry, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--registry", registry.url, *args]


def assert_clean_end(final: str, code: int) -> None:
    """The final screen: the summary, no view left, no command lines."""
    assert f"[exit {code}]" in final
    assert "Summary:" in final and "Total wall time:" in final
    assert not HEADER.search(final), final
    assert not RUNNING.search(final), final
    assert not COMMAND_LINE.search(final), final


def test_the_terminal_view_at_j4_survives_a_resize_and_leaves_the_summary(repo, registry, tmux, tmp_path):
    change_stamp(repo, "base", "base view\n")
    pane = Pane(tmux, tmp_path, repo, tool(registry, "--images", "all", *STEPS, "-j", "4"))
    resized = []

    def resize_once(pane: Pane, screen: str) -> None:
        # Narrower, then wider again, while the view is drawn.
        if not resized and RUNNING.search(screen):
            pane.command("resize-window", "-t", "run", "-x", "50")
            time.sleep(0.6)
            pane.command("resize-window", "-t", "run", "-x", "100")
            resized.append(True)

    try:
        code, screens = pane.watch(during=resize_once)
        final = pane.screen(history=True)
        cursor = pane.cursor_shown()
    finally:
        pane.close()

    assert code == 0, final
    assert resized, "the view never showed a running image"
    texts = [plain(screen) for screen in screens]
    views = [text for text in texts if HEADER.search(text)]
    assert views, "no screen held the view's header:\n" + "\n-----\n".join(texts)
    # auto is tty in a terminal: one line per running image, four at most, no command lines.
    assert max(len(RUNNING.findall(text)) for text in views) >= 2
    assert all(len(RUNNING.findall(text)) <= 4 for text in views)
    # (a running image's last line may be the command it runs, inside its view line)
    assert not any(COMMAND_LINE.search(text) for text in texts)
    assert all(len(HEADER.findall(text)) <= 1 for text in texts), "a header was left behind"
    assert any("\x1b[1m" in screen for screen in screens), "no colour (bold header) in a terminal"
    assert_clean_end(final, 0)
    assert cursor, "the cursor was left hidden"
    assert_pinned_to_registry(repo, registry, ALL)


def test_a_failed_image_s_last_log_lines_and_log_are_under_the_summary(repo, registry, tmux, tmp_path):
    change_stamp(repo, "base", "base view fail\n")
    dockerfile = repo / "build_tools" / "docker" / "cmake-python" / "Dockerfile"
    noise = 'RUN for i in $(seq 1 30); do echo "noise line $i"; done; exit 3\n'
    dockerfile.write_text(dockerfile.read_text() + noise)
    fake_tree.git(repo, "commit", "-q", "-am", "Break cmake-python")
    pane = Pane(tmux, tmp_path, repo, tool(registry, "--images", "all", *STEPS, "-j", "4", "-k"))
    try:
        code, _ = pane.watch()
        final = pane.screen(history=True)
    finally:
        pane.close()

    expected = failed_run_exit_code(3)  # BuildKit's CLI exits 1 for a failed RUN
    assert code == expected, final
    assert_clean_end(final, expected)
    after = final[final.index("Total wall time:") :]
    match = re.search(r"^cmake-python failed; the last 20 lines of its log, (/\S+\.log):$", after, re.M)
    assert match, after
    log = Path(match.group(1))
    assert log.parent.parent == repo / ".git" / manage_images.LOGS_NAME
    text = log.read_text()
    # The whole output: the command, all 30 lines of the failing step, and the error.
    assert "Running: `docker build --tag" in text
    assert all(f"noise line {i}\n" in text for i in range(1, 31))
    assert (
        text.rstrip("\n")
        .splitlines()[-1]
        .startswith(f"Command failed with exit code {expected}: `docker build")
    )
    # Under the summary: exactly the log's last 20 lines, in order.
    shown = after[match.end() :].lstrip("\n").splitlines()[:20]
    assert shown == [f"  {line}" for line in text.rstrip("\n").splitlines()[-20:]]
    # (BuildKit puts the step's number and time before each line of its output.)
    assert any(line.endswith("noise line 30") for line in shown)
    assert not any(line.endswith("noise line 1") for line in shown)
    # -k: the images that do not depend on cmake-python were still built and pinned.
    blocked = set(manage_images.ordered_images_to_process(["cmake-python"], GRAPH))
    assert_pinned_to_registry(repo, registry, sorted(set(ALL) - blocked))


def test_the_terminal_view_at_j1_shows_one_running_line(repo, registry, tmux, tmp_path):
    change_stamp(repo, "cmake-python-vulkan", "vulkan view\n")
    images = manage_images.ordered_images_to_process(["cmake-python-vulkan"], GRAPH)
    pane = Pane(tmux, tmp_path, repo, tool(registry, "--image", "cmake-python-vulkan", *STEPS, "-j", "1"))
    try:
        code, screens = pane.watch()
        final = pane.screen(history=True)
    finally:
        pane.close()

    assert code == 0, final
    views = [plain(screen) for screen in screens if HEADER.search(plain(screen))]
    assert views
    assert {len(RUNNING.findall(text)) for text in views} <= {0, 1}
    assert any(
        f"[0/{len(images)}] 0 done, 1 running, 0 failed, {len(images) - 1} left" in text for text in views
    )
    assert_clean_end(final, 0)
    assert_pinned_to_registry(repo, registry, images)


def test_ctrl_c_during_the_view_leaves_a_clean_screen_and_the_summary(repo, registry, tmux, tmp_path):
    change_stamp(repo, "base", "base interrupted\n")
    pane = Pane(tmux, tmp_path, repo, tool(registry, "--images", "all", *STEPS, "-j", "4"))
    interrupted = []

    def interrupt(pane: Pane, screen: str) -> None:
        if not interrupted and RUNNING.search(screen):
            pane.command("send-keys", "-t", "run", "C-c")
            interrupted.append(True)

    try:
        code, _ = pane.watch(during=interrupt)
        final = pane.screen(history=True)
        cursor = pane.cursor_shown()
    finally:
        pane.close()

    assert interrupted
    assert code == 130, final
    assert "Interrupted by SIGINT: stopping the running commands" in final
    assert_clean_end(final, 130)
    assert cursor, "the cursor was left hidden"
