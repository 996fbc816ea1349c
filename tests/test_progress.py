"""--progress, the logs per image and the time-left estimate, without an engine:
the pure functions, the console's live block, and main() with a stand-in docker."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

import manage_images as mi
from helpers import GRAPH, NEW, after_engine_questions, all_digests, unlabelled

# A small graph whose schedule is worked out by hand below:
#
#   a (10) -> b (5) -> d (3)
#   a (10) -> c (20) -> d
#   e (1), on its own
SMALL = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}
SMALL_ORDER = ["a", "b", "c", "d", "e"]
SMALL_BUILD = {"a": 10.0, "b": 5.0, "c": 20.0, "d": 3.0, "e": 1.0}


# --- The estimate ----------------------------------------------------------------


@pytest.mark.parametrize(
    "jobs, elapsed, expected",
    [
        # One job: every image after the other, 10 + 5 + 20 + 3 + 1.
        (1, {}, 39.0),
        # Enough jobs: the longest path, a -> c -> d = 10 + 20 + 3.
        (8, {}, 33.0),
        # Two jobs: a and e at 0; b and c at 10; d when c ends at 30; 33.
        (2, {}, 33.0),
        # a has run for 4 s of its 10: the path is 6 + 20 + 3.
        (8, {"a": 4.0}, 29.0),
        # An image running longer than its record is counted as ending now.
        (8, {"a": 15.0}, 23.0),
    ],
)
def test_the_estimate_is_the_schedule_worked_out_by_hand(jobs, elapsed, expected):
    assert mi.estimate_left(SMALL_ORDER, SMALL, SMALL_BUILD, jobs, elapsed) == expected


def test_the_estimate_from_recorded_durations_is_the_critical_path(tmp_path):
    # Durations recorded by one run (build and push of each image) are the
    # costs of the next: its estimate is the longest path, worked out by hand:
    # a -> c -> d = (10 + 1) + (20 + 1) + (3 + 1) = 36.
    logs = mi.RunLogs.create(tmp_path / "logs")
    logs.record({image: {"build": seconds, "push": 1.0} for image, seconds in SMALL_BUILD.items()})
    history = mi.RunLogs.create(tmp_path / "logs").history()
    costs = mi.expected_costs(SMALL_ORDER, ["build", "push"], history)
    assert mi.estimate_left(SMALL_ORDER, SMALL, costs, 4) == 36.0


def test_an_image_without_history_counts_as_the_median_of_the_others():
    history = {"a": {"build": 10.0}, "b": {"build": 5.0}, "c": {"build": 20.0, "push": 2.0}}
    costs = mi.expected_costs(["a", "b", "c", "d"], ["build", "push"], history)
    # build's median of 5, 10, 20 is 10; push's (one record) is 2.
    assert costs == {"a": 12.0, "b": 7.0, "c": 22.0, "d": 12.0}
    even = mi.expected_costs(["x"], ["build"], {"a": {"build": 4.0}, "b": {"build": 6.0}})
    assert even == {"x": 5.0}
    five = {name: {"build": float(seconds)} for name, seconds in zip("abcde", (1, 2, 3, 4, 50))}
    assert mi.expected_costs(["x"], ["build"], five) == {"x": 3.0}


def test_a_step_no_image_has_a_record_of_adds_nothing():
    # No run recorded a push yet: the estimate is the builds alone.
    costs = mi.expected_costs(["a", "x"], ["build", "push"], {"a": {"build": 7.0}})
    assert costs == {"a": 7.0, "x": 7.0}


def test_an_image_whose_parents_never_finish_adds_nothing_to_the_estimate():
    # Only a graph the tool refuses (a cycle) could hold one: the estimate still ends.
    assert mi.estimate_left(["x", "e"], {"x": ("x",), "e": ()}, {"x": 5.0, "e": 2.0}, 1) == 2.0


def test_no_record_of_any_step_run_means_no_estimate():
    assert mi.expected_costs(["a"], ["build"], {}) is None
    assert mi.expected_costs(["a"], ["build"], {"a": {"push": 3.0}}) is None


def test_what_remains_after_a_failure():
    order = SMALL_ORDER
    # With -k, the dependents of a failed image never run.
    assert mi.remaining_images(order, SMALL, {"a"}, {"b"}, {"c"}, keep_going=True) == ["c", "e"]
    # Without it, nothing new starts: only what runs is left.
    assert mi.remaining_images(order, SMALL, {"a"}, {"b"}, {"c"}, keep_going=False) == ["c"]
    assert mi.remaining_images(order, SMALL, {"a"}, set(), {"b"}, keep_going=False) == ["b", "c", "d", "e"]


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.2, "~1s left"),
        (45, "~45s left"),
        (59.4, "~59s left"),
        (59.6, "~1m left"),
        (89, "~1m left"),
        (91, "~2m left"),
        (60, "~1m left"),
        (1020, "~17m left"),
    ]
    + [(3599, "~60m left"), (3600, "~1h00m left"), (3690, "~1h02m left"), (7620, "~2h07m left")]
    + [(3629, "~1h00m left"), (3630, "~1h01m left")],  # to the nearest minute
)
def test_time_left_as_a_person_reads_it(seconds, text):
    assert mi.format_left(seconds) == text


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (61, "1m01s"), (3599, "59m59s")]
    + [(3600, "1h00m"), (3659, "1h00m"), (3661, "1h01m"), (7325, "2h02m")],
)
def test_durations_as_a_person_reads_them(seconds, text):
    assert mi.format_duration(seconds) == text


@pytest.mark.parametrize(
    "text, width, expected",
    [
        ("abc", 3, "abc"),
        ("abcdef", 5, "ab..."),
        ("abcdef", 4, "a..."),
        ("abcdef", 3, "..."),
        ("abcdef", 1, "."),
        ("abcdef", 0, ""),
        ("a\tb\x1b[1mc", 20, "a b [1mc"),
        ("é\u200bz", 20, "é z"),
    ],
)
def test_a_line_is_fitted_to_the_width_with_its_control_characters_as_spaces(text, width, expected):
    assert mi.fit(text, width) == expected


# --- The mode, the view and the console's block -----------------------------------


@pytest.mark.parametrize(
    "choice, terminal, term, mode",
    [
        ("auto", True, "xterm-256color", "tty"),
        ("auto", True, "dumb", "plain"),
        ("auto", False, "xterm", "plain"),
        ("tty", False, "dumb", "tty"),
        ("plain", True, "xterm", "plain"),
        ("quiet", True, "xterm", "quiet"),
    ],
)
def test_auto_is_tty_on_a_terminal_that_is_not_dumb(choice, terminal, term, mode):
    assert mi.resolve_progress(choice, terminal, term) == mode


def view_state(running, total=17, done=3, failed=1, left=125.0):
    return mi.ViewState(total, done, failed, tuple(running), 100.0, left, 28)


def test_the_view_has_a_header_and_a_line_per_running_image_cut_to_the_width():
    running = [
        mi.Running("cmake-python", "build", 150.0, "Step 3/5 : RUN " + "x" * 200),
        mi.Running("bazel", "push", 160.0, "latest: digest: sha256:abc\x1b[31m size: 1"),
    ]
    lines = mi.render_view(view_state(running), 172.0, 80, 24)
    assert lines[0] == "[4/17] 3 done, 2 running, 1 failed, 11 left | 1m12s elapsed | ~2m left"
    assert lines[1].startswith("  cmake-python                  build                 22s  Step 3/5 : RUN xx")
    assert lines[1].endswith("...") and len(lines[1]) == 79
    wide = mi.render_view(view_state(running), 172.0, 120, 24)
    assert "\x1b" not in wide[2] and wide[2].endswith("sha256:abc [31m size: 1")
    assert all(len(line) <= 79 for line in mi.render_view(view_state(running), 172.0, 20, 24))


def test_the_view_fits_the_terminal_height():
    running = [mi.Running(image, "build", 100.0, "") for image in list(GRAPH)[:8]]
    lines = mi.render_view(view_state(running), 101.0, 80, 6)
    assert len(lines) == 5
    assert lines[-1] == "  ... and 5 more running"
    assert len(mi.render_view(view_state(running), 101.0, 80, 3)) == 2  # the header and one line


def test_the_view_fits_the_narrowest_terminal_and_shows_no_estimate_it_lacks():
    running = [mi.Running("cmake", "build", 150.0, "Step 1/2")]
    for columns in (1, 2, 3):
        assert all(
            len(line) <= max(columns - 1, 1)
            for line in mi.render_view(view_state(running), 160.0, columns, 24)
        )
    header = mi.render_view(view_state(running, left=None), 160.0, 120, 24)[0]
    assert header == "[4/17] 3 done, 1 running, 1 failed, 12 left | 1m00s elapsed"


def test_colour_only_adds_escapes():
    running = [mi.Running("cmake", "build", 150.0, "Step 1/2")]
    plain = mi.render_view(view_state(running), 160.0, 80, 24)
    coloured = mi.render_view(view_state(running), 160.0, 80, 24, colour=True)
    assert coloured != plain
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in coloured] == plain
    assert coloured[1].startswith("  \x1b[36mcmake\x1b[0m ")  # the name alone in cyan


class Terminal(io.StringIO):
    """A stream that says it is a terminal of a given width."""

    columns = 40

    def isatty(self) -> bool:
        return True


def test_lines_printed_under_a_live_block_go_above_it(monkeypatch):
    out = Terminal()
    console = mi.Console(out)
    monkeypatch.setattr(console, "columns", lambda: out.columns)
    console.show(["header", "  base  build"], [6, 13])
    console.line("Interrupted by SIGINT")
    out.columns = 5  # narrower: "  base  build" (13) now takes 3 rows, "header" 2
    console.show([], [])
    assert out.getvalue() == (
        "\x1b[?25l" + "header\n  base  build\n"
        "\r" + "\x1b[1A\x1b[2K" * 2 + "Interrupted by SIGINT\n" + "header\n  base  build\n"
        "\r" + "\x1b[1A\x1b[2K" * 5 + "\x1b[?25h"
    )


def test_without_a_block_the_console_prints_exactly_the_lines():
    out = io.StringIO()
    mi.Console(out).line("one\ntwo", "[a] ")
    assert out.getvalue() == "[a] one\n[a] two\n"


@pytest.mark.parametrize(
    "terminal, no_color, colour", [(True, None, True), (True, "1", False), (False, None, False)]
)
def test_colour_needs_a_terminal_and_no_NO_COLOR(terminal, no_color, colour, tmp_path, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    stream = Terminal() if terminal else io.StringIO()
    args = mi.build_parser().parse_args(["--image", "base", "--log_dir", str(tmp_path)])
    progress = mi.output_of(args, mi.Console(stream), mi.Settings("r", "latest", False, tmp_path))
    assert progress.mode == ("tty" if terminal else "plain")
    assert progress.colour is colour


# --- The logs ---------------------------------------------------------------------


def test_old_runs_are_pruned_and_nothing_else_in_the_folder(tmp_path):
    base = tmp_path / "logs"
    runs = [f"2026110{day}T120000Z-{day}" for day in range(1, 8)]
    for run in runs:
        (base / run).mkdir(parents=True)
        (base / run / "base.log").write_text("old\n")
    (base / "mine").mkdir()
    (base / "notes.txt").write_text("keep me\n")
    logs = mi.RunLogs.create(base)
    left = sorted(entry.name for entry in base.iterdir())
    assert left == sorted(runs[-(mi.KEEP_RUNS - 1) :] + [logs.folder.name, "mine", "notes.txt"])


# --- main() with a stand-in docker -----------------------------------------------


def durations_file(folder: Path, seconds: float, images=GRAPH) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    document = {"schema": 1, "images": {image: {"build": seconds} for image in images}}
    (folder / mi.DURATIONS_NAME).write_text(json.dumps(document))


def test_plain_lines_gain_the_time_left_once_there_is_a_history(tree, standin, tmp_path, capsys):
    # 17 images of 60 s each, one at a time: 17 minutes at the start, one
    # fewer at each next image (the stand-in takes no time).
    durations_file(tmp_path / "logs", 60.0)
    assert (
        mi.main(["--images", "all", "--build", "--log_dir", str(tmp_path / "logs"), "--progress", "plain"])
        == 0
    )
    processing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Processing")]
    order = mi.ordered_images_to_process(mi.expand_selection(["all"], GRAPH), GRAPH)
    assert processing == [
        f"Processing image {image} [{k}/{len(order)}] (~{len(order) - k + 1}m left)"
        for k, image in enumerate(order, 1)
    ]
    # This run's durations replace the last ones.
    history = json.loads((tmp_path / "logs" / mi.DURATIONS_NAME).read_text())["images"]
    assert set(history) == set(GRAPH) and all(record["build"] < 60 for record in history.values())


def test_without_a_history_the_processing_lines_are_unchanged(tree, standin, tmp_path, capsys):
    assert mi.main(["--image", "cmake-python", "--build", "--log_dir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    assert "Processing image cmake-python [1/4]\n" in out and "left)" not in out


def test_quiet_prints_only_the_summary(tree, standin, tmp_path, capsys):
    standin.set(repo_digests=all_digests())
    code = mi.main(["--image", "cmake-python", "--build", "--update_references", "--progress", "quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("Summary:\n") and out.rstrip("\n").splitlines()[-1].startswith("Total wall time:")
    assert (tree / "ci/build.sh").read_bytes().count(NEW.encode()) == 1  # the work was done


def test_each_image_has_a_log_of_every_command_and_its_output(tree, standin, tmp_path, capsys):
    standin.set(repo_digests=all_digests())
    report = tmp_path / "report.json"
    argv = ["--image", "cmake-python-vulkan", "--build", "--push", "--update_references", "-j", "2"]
    assert mi.main([*argv, "--registry", "gcr.io/iree-oss", "--json", str(report)]) == 0
    document = json.loads(report.read_text())
    assert document["schema"] == 1
    logs = {image["name"]: Path(image["log"]) for image in document["images"]}
    assert set(logs) == set(mi.ordered_images_to_process(["cmake-python-vulkan"], GRAPH))
    for image, log in logs.items():
        # Under the git directory, one folder for the run.
        assert log.parent.parent == tree / ".git" / mi.LOGS_NAME and log.name == f"{image}.log"
        text = unlabelled(log.read_text())
        url = f"gcr.io/iree-oss/{image}:latest"
        assert f"Running: `docker build --tag {url} build_tools/docker/{image}`\n" in text
        assert f"standin docker build --tag {url} build_tools/docker/{image}\nsecond line\n" in text
        assert f"standin docker push {url}\n" in text
        assert f"[{image}]" not in text  # the log is the image's alone: no prefixes
    for image in document["images"]:
        assert set(image["durations"]) == {"build", "push", "update_references"}
        assert all(seconds >= 0 for seconds in image["durations"].values())


def test_a_failed_image_s_log_and_its_last_lines_follow_the_summary(tree, standin, tmp_path, capsys):
    standin.set(fail={"build": 7})
    code = mi.main(
        ["--image", "cmake", "--build", "--log_dir", str(tmp_path / "logs"), "--progress", "quiet"]
    )
    assert code == 7
    captured = capsys.readouterr()
    (run,) = (tmp_path / "logs").glob("2*")
    log = run / "cmake.log"
    command = "docker build --tag gcr.io/iree-oss/cmake:latest build_tools/docker/cmake"
    count = len(mi.ordered_images_to_process(["cmake"], GRAPH))
    assert unlabelled(log.read_text()) == (
        f"Processing image cmake [1/{count}]\n"
        f"Running: `{command}`\n"
        f"standin {command}\n"
        "second line\n"
        f"Command failed with exit code 7: `{command}`\n"
    )
    summary, _, after = captured.out.partition("Total wall time:")
    assert summary.startswith("Summary:\n")
    assert unlabelled(after.split("\n", 1)[1]) == (
        f"cmake failed; the last 5 lines of its log, {log}:\n"
        f"  Processing image cmake [1/{count}]\n"
        f"  Running: `{command}`\n"
        f"  standin {command}\n"
        "  second line\n"
        f"  Command failed with exit code 7: `{command}`\n"
    )
    assert unlabelled(captured.err) == f"Command failed with exit code 7: `{command}`\n"


def test_a_dry_run_writes_no_log(tree, standin, tmp_path):
    assert mi.main(["--image", "cmake", "--build", "--dry-run", "--log_dir", str(tmp_path / "logs")]) == 0
    assert not (tmp_path / "logs").exists()
    assert not (tree / ".git" / mi.LOGS_NAME).exists()


def test_a_log_folder_that_cannot_be_written_is_one_clear_error(tree, standin, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    assert mi.main(["--image", "cmake", "--build", "--log_dir", str(blocker / "logs")]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"cannot write the logs under {blocker / 'logs'}: Not a directory; pass --log_dir DIR with a folder you can write\n"
    )
    # Nothing was built: the only docker commands are the engine probe every run begins with.
    assert after_engine_questions(standin.commands()) == []


def test_the_progress_flag_takes_buildx_s_values(capsys):
    with pytest.raises(SystemExit) as exit_:
        mi.main(["--image", "base", "--progress", "fancy"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fancy'" in capsys.readouterr().err


def test_every_progress_mode_does_the_same_work(tree, standin, tmp_path):
    standin.set(repo_digests=all_digests())
    os.environ.pop("NO_COLOR", None)
    results = {}
    for mode in ("plain", "quiet", "tty"):
        standin.log.unlink(missing_ok=True)
        assert mi.main(["--image", "cmake-python", "--build", "--push", "--progress", mode]) == 0
        results[mode] = after_engine_questions(standin.commands())
    assert results["plain"] == results["quiet"] == results["tty"]
