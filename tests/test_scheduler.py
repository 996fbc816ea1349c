"""The scheduler (run_graph) with fake step functions: order, parallelism, failures."""

from __future__ import annotations

import concurrent.futures
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

import manage_images as mi

GRAPH = mi.IMAGES_TO_DEPENDENCIES
ALL = mi.ordered_images_to_process(sorted(GRAPH), GRAPH)


class Recorder:
    """Fake work: records start/finish events and the peak concurrency."""

    def __init__(self, fail=(), delay=0.0, delays=None):
        self.fail = set(fail)
        self.delay = delay
        self.delays = delays or {}
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.active = 0
        self.peak = 0
        self.finished_in_main: list[str] = []

    def work(self, image, builder=""):
        with self.lock:
            self.events.append(("start", image))
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delays.get(image, self.delay))
        with self.lock:
            self.active -= 1
        if image in self.fail:
            raise mi.CommandError(("docker", "build", image), 3)
        return f"sha256:{image}"

    def finish(self, image, value):
        assert threading.current_thread() is threading.main_thread()
        self.events.append(("finish", image))
        self.finished_in_main.append(image)
        return value

    def order(self, kind="start"):
        return [image for event, image in self.events if event == kind]


def run(order, recorder, jobs=1, keep_going=False):
    return mi.run_graph(order, GRAPH, jobs, keep_going, recorder.work, recorder.finish)


def test_one_job_follows_the_original_order_exactly():
    recorder = Recorder()
    results = run(ALL, recorder)
    assert recorder.order() == ALL
    assert recorder.events == [event for image in ALL for event in (("start", image), ("finish", image))]
    assert all(item.result == "done" and item.digest == f"sha256:{item.image}" for item in results.values())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(sorted(GRAPH)), min_size=1, max_size=4), st.integers(1, 8))
def test_every_parent_finishes_before_its_child_starts(images, jobs):
    order = mi.ordered_images_to_process(images, GRAPH)
    recorder = Recorder(delay=0.002)
    results = run(order, recorder, jobs)
    position = {event: index for index, event in enumerate(recorder.events)}
    for image in order:
        for parent in GRAPH[image]:
            if parent in order:
                assert position[("finish", parent)] < position[("start", image)]
    assert sorted(recorder.order()) == sorted(order)  # each image once
    assert recorder.peak <= jobs
    assert list(results) == order


def test_parallel_jobs_run_independent_branches_together():
    # After base and util, cmake and bazel are ready; after cmake, swiftshader
    # and cmake-python and cmake-android. Four must be able to run at once: each
    # of the four waits for the others at a barrier, which breaks (failing the
    # test) if the scheduler never runs four together.
    barrier = threading.Barrier(4, timeout=10)
    together = {"swiftshader", "cmake-python", "cmake-android", "bazel-python"}
    recorder = Recorder()

    def work(image, builder):
        if image in together:
            barrier.wait()
        return recorder.work(image)

    order = mi.ordered_images_to_process(["cmake", "bazel"], GRAPH)
    results = mi.run_graph(order, GRAPH, 4, False, work, recorder.finish)
    assert all(item.result == "done" for item in results.values())
    assert recorder.peak <= 4


def test_images_that_finish_together_are_finished_in_the_runs_order(monkeypatch):
    # Make every wait return only once all running work is over, with the
    # finished futures in reverse order of submission: the scheduler must
    # still finish them (rewrite their references) in the run's order.
    real_wait = concurrent.futures.wait

    def wait_for_all(futures, timeout=None, return_when=None):
        real_wait(futures, timeout=10, return_when=concurrent.futures.ALL_COMPLETED)
        return list(reversed(list(futures))), set()

    monkeypatch.setattr(concurrent.futures, "wait", wait_for_all)
    recorder = Recorder()
    leaves = ["cmake-android", "cmake-python-nvidia", "bazel-tensorflow-nvidia", "rbe-toolchain"]
    order = mi.ordered_images_to_process(leaves, GRAPH)
    assert sorted(order) == sorted(leaves)  # one wave: all four run at once
    mi.run_graph(order, GRAPH, 8, False, recorder.work, recorder.finish)
    assert recorder.finished_in_main == order


def test_first_failure_stops_new_starts_and_lets_running_ones_finish():
    # util fails while base runs; nothing starts after the failure.
    recorder = Recorder(fail={"util"}, delays={"base": 0.2, "util": 0.05})
    results = run(ALL, recorder, jobs=2)
    assert results["util"].result == "failed"
    assert results["base"].result == "done"
    assert recorder.order() == ["base", "util"]
    # Every other image is built on util, so all of them are skipped.
    assert {image for image, item in results.items() if item.result == "skipped"} == set(ALL) - {
        "base",
        "util",
    }


def test_without_keep_going_the_rest_is_not_started_or_skipped():
    recorder = Recorder(fail={"cmake"})
    results = run(ALL, recorder, jobs=1)
    assert recorder.order() == ["base", "util", "cmake"]
    dependents = set(mi.ordered_images_to_process(["cmake"], GRAPH)) - {"cmake"}
    for image in ALL[3:]:
        assert results[image].result == ("skipped" if image in dependents else "not started"), image


def test_keep_going_finishes_every_independent_branch():
    recorder = Recorder(fail={"cmake-python"})
    results = run(ALL, recorder, jobs=3, keep_going=True)
    dependents = set(mi.ordered_images_to_process(["cmake-python"], GRAPH)) - {"cmake-python"}
    assert dependents == {"cmake-python-vulkan", "cmake-python-swiftshader", "cmake-python-nvidia"}
    for image in ALL:
        expected = "failed" if image == "cmake-python" else "skipped" if image in dependents else "done"
        assert results[image].result == expected, image
    assert not dependents & set(recorder.order())


def test_finish_failure_counts_as_the_image_failing():
    recorder = Recorder()

    def finish(image, value):
        if image == "vulkan":
            raise mi.ManageImagesError("cannot write x")
        return value

    results = mi.run_graph(ALL, GRAPH, 2, True, recorder.work, finish)
    assert results["vulkan"].result == "failed"
    assert results["rbe-toolchain"].result == "skipped"
    assert results["cmake"].result == "done"


def test_stopped_starts_nothing_new():
    recorder = Recorder()
    stop = threading.Event()

    def work(image, builder):
        stop.set()
        return recorder.work(image)

    results = mi.run_graph(ALL, GRAPH, 1, False, work, recorder.finish, stopped=stop.is_set)
    assert recorder.order() == ["base"]
    assert [item.result for item in results.values()].count("not started") == len(ALL) - 1


def test_summary_lists_each_image_and_the_wall_time():
    results = {
        "base": mi.ImageResult("base", "done", 1.25, "sha256:" + "a" * 64),
        "cmake": mi.ImageResult("cmake", "failed", 0.5),
        "swiftshader": mi.ImageResult("swiftshader", "skipped"),
    }
    assert mi.format_summary(results, ["build", "push"], 3.0) == (
        "Summary:\n"
        "  image        result       digest                seconds  steps\n"
        "  base         done         sha256:aaaaaaaaaaaa      1.2s  build, push\n"
        "  cmake        failed       -                        0.5s  build, push\n"
        "  swiftshader  skipped      -                           -  build, push\n"
        "Total wall time: 3.0s (1 done, 1 failed, 1 skipped)"
    )


def test_summary_of_a_dry_run_says_planned_not_done():
    results = {"base": mi.ImageResult("base", "done", 0.0)}
    summary = mi.format_summary(results, ["build"], 0.0, dry_run=True)
    assert summary.splitlines()[0] == "Summary (dry run: nothing was run or changed):"
    assert "  base   planned      -                        0.0s  build" in summary
    assert " done" not in summary
