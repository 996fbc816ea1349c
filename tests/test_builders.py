"""#31 without an engine: --builder NAME (docker contexts and buildx builders), the
scheduler's choice of a builder for each image, and a builder that dies under an image.
The stand-in docker plays each builder (its `builders` configuration); the real engines
are in test_e2e_builders.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

import manage_images as mi
from helpers import D1, files

ENGINE = {"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"}
PARENT = "cmake"  # in the small tree, cmake-python is built on it
CHILD = "cmake-python"
URL = f"gcr.io/iree-oss/{PARENT}"
POOL = ["--builder", "one", "--builder", "two"]
RUN = ["--image", PARENT, "--build", "--push", "--update_references"]


def contexts(*names: str, **overrides: dict) -> dict[str, dict]:
    return {name: {"driver": "docker", **overrides.get(name, {})} for name in names}


def builds(standin) -> list[tuple[str, str | None]]:
    """Each `docker build`: the image it tagged, and the docker context it ran on."""
    return [
        (argv[argv.index("--tag") + 1].split("/")[-1].partition(":")[0], where["DOCKER_CONTEXT"])
        for argv, where in standin.placed()
        if argv[:2] == ["docker", "build"]
    ]


def run_images() -> list[str]:
    """The images a run of RUN processes, in order: PARENT and what is built on it."""
    return mi.ordered_images_to_process([PARENT], mi.IMAGES_TO_DEPENDENCIES)


# --- Refusals, before any work ----------------------------------------------------


@pytest.mark.parametrize(
    ("names", "steps", "refusal"),
    [
        ((), mi.Steps(build=True), ""),
        (("one",), mi.Steps(build=True), ""),
        (("one", "two"), mi.Steps(build=True, push=True, update_references=True), ""),
        (("one", "two"), mi.Steps(build=True, push=True), "2 builders need --update_references: "),
        (("one", "two"), mi.Steps(build=True), "2 builders need --push --update_references: "),
        (("one", "one"), mi.Steps(build=True), "--builder one is given twice: name each builder once"),
        (("-x",), mi.Steps(build=True), "--builder '-x' is no docker context or buildx builder name"),
        (("one",), mi.Steps(), "--builder goes with the steps"),
    ],
)
def test_pool_refusal(names, steps, refusal):
    said = mi.pool_refusal(names, steps)
    assert said.startswith(refusal) and bool(said) == bool(refusal)


@pytest.mark.parametrize("missing", ["--push", "--update_references"])
def test_a_pool_without_push_and_update_references_is_refused_before_any_work(tree, standin, capsys, missing):
    standin.set(engine=ENGINE, builders=contexts("one", "two"))
    argv = [flag for flag in RUN if flag != missing]
    with pytest.raises(SystemExit) as exit:
        mi.main([*argv, *POOL])
    assert exit.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].endswith(
        f": error: 2 builders need {missing}: each parent is pushed and pinned before "
        "its children start, on any builder, from the digest the registry serves"
    )
    assert standin.commands() == []


def test_a_builder_docker_does_not_know_is_one_line(tree, standin, capsys):
    standin.set(engine=ENGINE, builders=contexts("one"))
    before = files(tree)
    assert mi.main([*RUN, *POOL]) == 1
    assert capsys.readouterr().err == (
        "--builder two: docker has no context and buildx no builder of that name (see `docker context ls` "
        "and `docker buildx ls`); create it, or leave out --builder two\n"
    )
    assert builds(standin) == [] and files(tree) == before


def test_an_unreachable_builder_at_the_start_is_one_line_naming_it(tree, standin, capsys):
    standin.set(engine=ENGINE, builders=contexts("one", "two", two={"down": True}))
    before = files(tree)
    assert mi.main([*RUN, *POOL]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "builder two (docker context, unix:///standin/two.sock) cannot be reached: docker said: Cannot "
        "connect to the Docker daemon"
    )
    assert err.endswith("; start it, or leave out --builder two\n")
    assert builds(standin) == [] and files(tree) == before


# --- Where the commands go ----------------------------------------------------------


def test_one_builder_takes_every_docker_command_of_the_run(tree, standin, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///not/this/one.sock")
    standin.set(engine=ENGINE, builders=contexts("one"))
    # One builder may build without pushing: nothing crosses machines.
    assert mi.main(["--image", PARENT, "--build", "--builder", "one"]) == 0
    docker = [where for argv, where in standin.placed() if argv[0] == "docker"]
    asked = [argv[1] for argv, where in standin.placed() if argv[0] == "docker"]
    assert "version" in asked and "build" in asked
    # `docker context inspect` names its context itself; every other command runs on it.
    on_it = [where for argv, where in standin.placed() if argv[:3] != ["docker", "context", "inspect"]]
    assert on_it == [{"DOCKER_CONTEXT": "one", "BUILDX_BUILDER": "one", "DOCKER_HOST": None}] * len(on_it)
    assert len(docker) > len(on_it)


def test_a_pool_detects_each_engine_and_names_each_images_builder(tree, standin, capsys):
    builders = contexts("one", "two", two={"engine": {"store": "containerd"}})
    standin.set(engine=ENGINE, builders=builders, manifests={f"{URL}@{D1}": D1})
    assert mi.main([*RUN, *POOL, "--json", "report.json"]) == 0
    asked = {where["DOCKER_CONTEXT"] for argv, where in standin.placed() if argv[1:2] == ["info"]}
    assert asked == {"one", "two"}
    report = json.loads((tree / "report.json").read_text())
    assert [builder["name"] for builder in report["builders"]] == ["one", "two"]
    assert [builder["engine"]["store"] for builder in report["builders"]] == ["overlay2", "containerd"]
    placed = dict(builds(standin))
    assert sorted(placed) == sorted(run_images())
    assert {image["name"]: image["builder"] for image in report["images"]} == placed
    # Every image is pinned to what the registry serves for its push.
    prod = (tree / "build_tools/docker/prod_digests.txt").read_text().split()
    pinned = dict(line.partition("@")[::2] for line in prod)
    for image in run_images():
        url = f"gcr.io/iree-oss/{image}"
        assert pinned[url] == standin.registry.served_digest(url, "latest"), image
    summary = capsys.readouterr().out.split("Summary:\n")[1].splitlines()
    assert summary[0].split()[:6] == ["image", "result", "digest", "seconds", "builder", "waited"]
    for line in summary[1:-1]:
        assert line.split()[4] == placed[line.split()[0]]


# --- The scheduler's choice ---------------------------------------------------------


def test_one_builder_with_one_slot_follows_the_run_order():
    graph = mi.IMAGES_TO_DEPENDENCIES
    order = mi.ordered_images_to_process(sorted(graph), graph)
    dispatcher = mi.Dispatcher(order, graph, ("one",), 1)
    started = []
    while True:
        starts = dispatcher.starts(0.0)
        if not starts:
            break
        assert len(starts) == 1
        ((image, builder),) = starts
        started.append(image)
        assert not dispatcher.finished(image, builder, True)
    assert started == order


def test_an_image_prefers_the_builder_that_built_its_parent():
    graph = {"other": [], "base": [], "child": ["base"]}
    dispatcher = mi.Dispatcher(["other", "base", "child"], graph, ("one", "two"), 1)
    assert dispatcher.starts(0.0) == [("other", "one"), ("base", "two")]
    dispatcher.finished("other", "one", True)
    dispatcher.finished("base", "two", True)
    # Both are free; `one` has as many free slots and is named first, but `two` holds base's layers.
    assert dispatcher.starts(1.0) == [("child", "two")]


def test_jobs_are_slots_per_builder_and_waiting_is_counted():
    graph = {name: [] for name in "abcde"}
    dispatcher = mi.Dispatcher(list(graph), graph, ("one", "two"), 2)
    first = dispatcher.starts(0.0)
    assert sorted(builder for image, builder in first) == ["one", "one", "two", "two"]
    assert dispatcher.starts(1.0) == []
    dispatcher.finished(first[1][0], first[1][1], True)
    assert dispatcher.starts(3.0) == [("e", first[1][1])]
    assert dispatcher.placed("e", first[1][1]).waited == 3.0


def test_a_builder_at_fault_gets_nothing_more_and_its_image_starts_once_more_elsewhere():
    graph = {"a": [], "b": [], "c": []}
    dispatcher = mi.Dispatcher(list(graph), graph, ("one", "two"), 1)
    assert dispatcher.starts(0.0) == [("a", "one"), ("b", "two")]
    dispatcher.finished("b", "two", True)
    assert dispatcher.finished("a", "one", False, "one died", 2.0)  # a starts again
    assert dispatcher.starts(2.0) == [("a", "two")]
    assert dispatcher.placed("a", "two").retried == "one died"
    # Once only: a second fault fails it, and nothing is left to build on.
    assert not dispatcher.finished("a", "two", False, "two died", 3.0)
    assert dispatcher.failed and dispatcher.free == {}
    assert dispatcher.starts(3.0, False) == []


def test_a_fault_with_no_other_builder_free_fails_the_image_unless_keep_going():
    graph = {"a": [], "b": []}
    for keep_going in (False, True):
        dispatcher = mi.Dispatcher(list(graph), graph, ("one", "two"), 1, keep_going)
        assert dispatcher.starts(0.0) == [("a", "one"), ("b", "two")]
        assert dispatcher.finished("a", "one", False, "one died", 1.0) == keep_going
        assert dispatcher.failed != keep_going


# --- A builder that dies under an image ---------------------------------------------


def test_a_builder_that_dies_under_an_image_is_named_and_the_image_built_on_another(tree, standin, capsys):
    builders = contexts("one", "two", one={"dies": PARENT})
    standin.set(engine=ENGINE, builders=builders, manifests={f"{URL}@{D1}": D1})
    assert mi.main([*RUN, *POOL, "--json", "report.json"]) == 0
    placed = builds(standin)
    assert placed[:2] == [(PARENT, "one"), (PARENT, "two")]
    # Nothing more goes to the dead builder.
    assert {builder for image, builder in placed[1:]} == {"two"}
    out = capsys.readouterr().out
    assert f"Retrying image {PARENT} [" in out and "on two" in out
    images = {image["name"]: image for image in json.loads((tree / "report.json").read_text())["images"]}
    assert images[PARENT]["builder"] == "two"
    assert images[PARENT]["retried"].startswith(
        f"{PARENT}: builder one (docker context, unix:///standin/one.sock) cannot be reached any more"
    )
    pushed = standin.registry.served_digest(URL, "latest")
    assert f"{URL}@{pushed}\n" in (tree / "build_tools/docker/prod_digests.txt").read_text()


def test_a_builder_that_dies_with_no_other_free_fails_its_image_naming_it(tree, standin, capsys):
    builders = contexts("one", "two", one={"dies": PARENT})
    standin.set(engine=ENGINE, builders=builders, manifests={f"{URL}@{D1}": D1})
    before = files(tree)
    assert mi.main([*RUN, "--builder", "one"]) == 1
    assert builds(standin) == [(PARENT, "one")]
    err = capsys.readouterr().err
    assert (
        f"{PARENT}: builder one (docker context, unix:///standin/one.sock) cannot be reached any more" in err
    )
    assert err.endswith(" build_tools/docker/cmake` (start builder one again, or leave it out)\n")
    assert files(tree) == before


def test_builders_that_build_for_different_platforms_cannot_form_one_pool():
    amd64 = mi.Engine("26.1.5", "26.1.5", "buildkit", "overlay2")
    arm64 = amd64._replace(platform="linux/arm64")
    assert mi.platform_mismatch({"one": amd64, "two": amd64, "three": None}) == ""
    assert mi.platform_mismatch({"one": amd64, "two": arm64}) == (
        "builders one (linux/amd64) and two (linux/arm64) build for different platforms: the builders of "
        "one run must build for the same one, as each image is built on its parents'"
    )


# --- A buildx builder of another driver (no image store docker commands reach) ------


def test_a_builder_without_an_image_store_needs_build_and_push(tree, standin, capsys):
    standin.set(engine=ENGINE, builders={"k8s": {"driver": "kubernetes"}})
    before = files(tree)
    assert mi.main(["--image", PARENT, "--build", "--update_references", "--builder", "k8s"]) == 1
    assert capsys.readouterr().err == (
        "builder k8s (buildx builder, kubernetes driver, kubernetes:///k8s) keeps no image store the tool "
        "can reach: a run on it needs --build and --push (each image pushed as it is built, its digest from "
        "the registry) and takes no --pull or --verify_pinned (use a docker context for those)\n"
    )
    assert builds(standin) == [] and files(tree) == before


def test_a_builder_without_an_image_store_pushes_as_it_builds(tree, standin):
    standin.set(engine=ENGINE, builders={"k8s": {"driver": "kubernetes"}}, manifests={f"{URL}@{D1}": D1})
    assert mi.main([*RUN, "--builder", "k8s"]) == 0
    placed = [(argv, where) for argv, where in standin.placed() if argv[:2] == ["docker", "build"]]
    assert len(placed) == len(run_images())
    for argv, where in placed:
        # buildx sends it to the builder; no docker context, no `docker push` after.
        assert where["BUILDX_BUILDER"] == "k8s" and where["DOCKER_CONTEXT"] is None
        assert "--push" in argv and "--metadata-file" in argv
        # Its cache goes to the registry beside the image, where another builder reads it back.
        cache = argv[argv.index("--cache-to") + 1]
        assert cache.startswith("type=registry,ref=") and ":latest.cache," in cache, cache
    assert not [
        argv for argv, where in standin.placed() if argv[:2] in (["docker", "push"], ["docker", "image"])
    ]
    pushed = standin.registry.served_digest(URL, "latest")
    assert f"{URL}@{pushed}\n" in (tree / "build_tools/docker/prod_digests.txt").read_text()


def test_a_dry_run_names_each_builders_engine_and_where_each_command_would_run(tree, standin, capsys):
    builders = contexts("one", "two", two={"engine": {"store": "containerd"}})
    standin.set(engine=ENGINE, builders=builders)
    before = files(tree)
    assert mi.main([*RUN, *POOL, "-n"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("Builder ")] == [
        "Builder one (docker context, unix:///standin/one.sock): Docker 26.1.5 (client 26.1.5), BuildKit "
        "(buildx 0.13.1), the overlay2 image store",
        "Builder two (docker context, unix:///standin/two.sock): Docker 26.1.5 (client 26.1.5), BuildKit "
        "(buildx 0.13.1), the containerd image store",
    ]
    shown = [line for line in out if "`docker build" in line]
    assert len(shown) == len(run_images())
    assert all(" Running on one: `" in line or " Running on two: `" in line for line in shown), shown
    assert builds(standin) == [] and files(tree) == before


def test_the_live_view_shows_each_running_images_builder_and_its_wait():
    running = (
        mi.Running("cmake-python", "build", 150.0, "RUN true", "two", 12.0),
        mi.Running("swiftshader", "push", 160.0, "pushed", "three", 0.0),
    )
    lines = mi.render_view(mi.ViewState(9, 1, 0, running, 100.0, None, 24), 172.0, 200, 24)
    assert lines[1].startswith(
        "  cmake-python              two, after waiting 12s for a builder  build                 22s  RUN true"
    )
    assert lines[2].startswith(
        "  swiftshader               three                                 push                  12s  pushed"
    )


def test_a_dry_run_starts_no_builder(tree, standin):
    standin.set(engine=ENGINE, builders={"k8s": {"driver": "kubernetes"}})
    assert mi.main([*RUN, "--builder", "k8s", "-n"]) == 0
    asked = [argv for argv in standin.commands() if argv[:3] == ["docker", "buildx", "inspect"]]
    assert asked and not [argv for argv in asked if "--bootstrap" in argv], asked


def test_a_contexts_credentials_are_never_shown(tree, standin, capsys):
    # docker takes a context whose host holds a user and password, and quotes it in its errors.
    endpoint = "tcp://admin:s3cr%2Fet@127.0.0.1:1"
    standin.set(engine=ENGINE, builders={"evil": {"driver": "docker", "down": True, "endpoint": endpoint}})
    assert mi.main([*RUN, "--builder", "evil", "-n", "--json", "report.json"]) == 1
    out, err = capsys.readouterr()
    shown = out + err + (tree / "report.json").read_text()
    assert "tcp://127.0.0.1:1" in err
    assert "s3cr" not in shown and "admin" not in shown, shown


def test_an_image_whose_builder_dies_after_another_image_failed_fails_naming_it():
    # Builder one dies under a while two is busy: a fails, and after a failure nothing new
    # starts (no -k). c, on one too, faults once two is free again: it must fail naming the
    # builder, never vanish as "not started" (a retry accepted, then never started).
    graph = {"a": [], "b": [], "c": [], "d": []}
    b_done = threading.Event()

    def work(image: str, builder: str) -> str:
        if image == "a":
            time.sleep(0.05)
            raise mi.BuilderFault("a: builder one cannot be reached any more", builder)
        if image in ("b", "d"):
            time.sleep(0.5)
            b_done.set()
            return image
        b_done.wait(10)
        time.sleep(0.5)
        raise mi.BuilderFault("c: builder one cannot be reached any more", builder)

    results = mi.run_graph(
        list(graph), graph, 2, False, work, lambda image, value: value, builders=("one", "two")
    )
    assert results["c"].result == "failed" and "builder one" in str(results["c"].error), results["c"]


def test_a_builder_of_another_driver_builds_through_buildx_whatever_docker_buildkit_says():
    base = {"DOCKER_BUILDKIT": "0", "DOCKER_HOST": "unix:///run/engine.sock"}
    elsewhere = mi.Builder("k8s", "", "kubernetes").environ(base)
    assert "DOCKER_BUILDKIT" not in elsewhere and elsewhere["BUILDX_BUILDER"] == "k8s"
    # A context keeps the user's choice of builder: the classic one is a builder too.
    assert mi.Builder("two", "two").environ(base)["DOCKER_BUILDKIT"] == "0"
