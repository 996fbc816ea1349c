"""End-to-end, on the engine this session runs on (.ci/run runs all three) and a real
registry: --skip_unchanged skips exactly the images whose inputs are their pin's (as
the label of the config the registry serves for the pin says), builds again the one
whose input was edited, works with a registry that does not serve the pin and with
a pin from before the label (which reproduction still reproduces); a cold engine
runs the prod flow without building; and a subtree is built on the parents the run
built (#29 item 4).

Results come from the registry's HTTP API, the engines' image stores and git."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import (
    ALL,
    GRAPH,
    assert_holds_the_pins_content,
    buildkit,
    change_stamp,
    docker,
    file_in,
    pins,
    run_tool,
)

pytestmark = pytest.mark.e2e

LEAF = "cmake-python-nvidia"  # nothing is built on it
MIDDLE = "cmake-python"  # built on cmake, and cmake-python-vulkan is built on it
PUSH = ("--build", "--push", "--update_references", "--skip_unchanged", "--json", "-")


def report(result) -> dict[str, dict]:
    assert result.returncode == 0, result.stdout + result.stderr
    return {image["name"]: image for image in json.loads(result.stdout)["images"]}


def unchanged(result) -> set[str]:
    return {name for name, image in report(result).items() if image["inputs"]["unchanged"]}


def uploads(registry, since: int) -> list[str]:
    """The paths of the blobs and manifests pushed since byte `since` of the registry's log."""
    return [path for method, path, _, _ in registry.requests(since) if method in ("POST", "PATCH", "PUT")]


def label(registry, image: str, digest: str) -> str | None:
    return (registry.image_config(image, digest)["config"].get("Labels") or {}).get(mi.INPUTS_LABEL)


def test_a_tree_nothing_changed_in_builds_and_pushes_nothing(repo, registry):
    pinned = pins(repo, registry)
    for image in ALL:  # the world's pins carry the label of their inputs
        assert label(registry, image, pinned[image]).startswith(f"v{mi.INPUTS_VERSION}:sha256:")
    before, since = fake_tree.tracked_files(repo), registry.log_size()
    result = run_tool(repo, "--images", "all", *PUSH, "-j", "4", registry=registry)
    assert unchanged(result) == set(ALL)
    assert fake_tree.tracked_files(repo) == before
    # No blob: nothing was pushed; at most the tags were moved to the pins.
    assert [path for path in uploads(registry, since) if "/manifests/latest" not in path] == []
    assert {image: registry.digest(image, "latest") for image in ALL} == pinned


def edit_tracked(repo) -> tuple[str, ...]:
    change_stamp(repo, LEAF, "edited")
    return ()


def edit_untracked(repo) -> tuple[str, ...]:
    (repo / "build_tools/docker" / LEAF / "untracked.txt").write_text("not in git\n")
    return ()


def edit_ignored(repo) -> tuple[str, ...]:
    # A .dockerignore that leaves itself and the new file out sends what was sent before.
    context = repo / "build_tools/docker" / LEAF
    (context / ".dockerignore").write_text("*.log\n.dockerignore\n")
    (context / "build.log").write_text("ignored\n")
    return ()


def edit_build_arg(repo) -> tuple[str, ...]:
    return ("--build_arg", "UNUSED=1")


@pytest.mark.parametrize(
    ("edit", "rebuilt"),
    [(edit_tracked, True), (edit_untracked, True), (edit_build_arg, True), (edit_ignored, False)],
)
def test_editing_an_input_builds_the_image_again(repo, registry, edit, rebuilt):
    pinned = pins(repo, registry)[LEAF]
    extra = edit(repo)
    result = run_tool(repo, "--image", LEAF, *PUSH, *extra, registry=registry)
    assert unchanged(result) == (set() if rebuilt else {LEAF})
    now = pins(repo, registry)[LEAF]
    assert (now != pinned) == rebuilt
    assert registry.digest(LEAF, now) == now and registry.digest(LEAF, "latest") == now
    assert label(registry, LEAF, now) == report(result)[LEAF]["inputs"]["digest"]


def test_a_parent_s_new_pin_builds_its_dependents_again(repo, registry):
    pinned = pins(repo, registry)
    change_stamp(repo, MIDDLE, "edited")
    result = run_tool(repo, "--images", "all", *PUSH, "-j", "4", registry=registry)
    touched = set(mi.ordered_images_to_process([MIDDLE], GRAPH))
    assert unchanged(result) == set(ALL) - touched
    now = pins(repo, registry)
    assert {image for image in ALL if now[image] != pinned[image]} == touched


def test_a_pin_the_registry_does_not_serve_is_built_again(repo, registry):
    path = repo / mi.PROD_DIGESTS_PATH
    path.write_text(path.read_text().replace(pins(repo, registry)[LEAF], fake_tree.PLACEHOLDER))
    fake_tree.git(repo, "commit", "-q", "-am", f"Pin {LEAF} to nothing")
    result = run_tool(repo, "--image", LEAF, *PUSH, registry=registry)
    assert report(result)[LEAF]["inputs"]["reason"] == "the registry does not serve its pin"
    assert registry.digest(LEAF, pins(repo, registry)[LEAF]) is not None


def ancestors(image: str) -> set[str]:
    return set(GRAPH[image]).union(*(ancestors(parent) for parent in GRAPH[image]))


def prelabel_tree(registry, folder) -> Path:
    """A tree whose LEAF, and each image it is built on, were built, pushed and pinned as a
    tool from before the label would have: plain `docker build` (so no label anywhere in
    their ancestry, which a built image would inherit), the same Dockerfiles and files."""
    digests: dict[str, str] = {}
    attestations = ("--provenance=false", "--sbom=false") if buildkit() else ()
    for image in mi.ordered_images_to_process(sorted(GRAPH), GRAPH):
        if image not in ancestors(LEAF) | {LEAF}:
            continue
        context = folder / "contexts" / image
        context.mkdir(parents=True)
        (context / "Dockerfile").write_text(
            fake_tree.dockerfile(registry.url, image, GRAPH[image], digests, 0)
        )
        (context / "stamp").write_text(f"{image} 1\n")
        if not GRAPH[image]:
            shutil.copy2(fake_tree.BUSYBOX, context / "busybox")
        url = f"{registry.url}/{image}"
        docker("build", "-q", *attestations, "--tag", f"{url}:prelabel", str(context))
        docker("push", f"{url}:prelabel")
        digests[image] = registry.digest(image, "prelabel")
        assert label(registry, image, digests[image]) is None
    return fake_tree.make_tree(folder / "repo", registry.url, GRAPH, digests)


def test_a_pin_from_before_the_label_is_still_reproduced_and_is_built_again(registry, tmp_path):
    repo = prelabel_tree(registry, tmp_path)
    old = pins(repo, registry)[LEAF]
    before = fake_tree.tracked_files(repo)
    # Reproduction builds it as it was built: without the label.
    verified = run_tool(repo, "--image", LEAF, "--build", "--verify_pinned", "--json", "-", registry=registry)
    assert report(verified)[LEAF]["identity"] in ("identical", "same content")
    prod = run_tool(
        repo,
        "--image",
        LEAF,
        "--tag",
        "prod",
        "--build",
        "--update_references",
        "--json",
        "-",
        registry=registry,
    )
    assert report(prod)[LEAF]["identity"] in ("identical", "same content")
    assert fake_tree.tracked_files(repo) == before
    # --skip_unchanged cannot tell its inputs: it is built again, pushed with the label, and pinned.
    result = run_tool(repo, "--image", LEAF, *PUSH, registry=registry)
    assert report(result)[LEAF]["inputs"]["reason"] == (
        "its pin carries no inputs label (built before the label, or by hand)"
    )
    now = pins(repo, registry)[LEAF]
    assert now != old and label(registry, LEAF, now) == report(result)[LEAF]["inputs"]["digest"]


def test_a_cold_engine_runs_the_prod_flow_without_building(repo, registry, second_engine):
    pinned = pins(repo, registry)
    before = fake_tree.tracked_files(repo)
    flow = ("--images", "all", "--tag", "prod", "--build", "--update_references", "--skip_unchanged")
    result = run_tool(repo, *flow, "-j", "4", "--json", "-", registry=registry, env=second_engine)
    assert unchanged(result) == set(ALL)
    assert fake_tree.tracked_files(repo) == before
    for image in ALL:  # the engine holds each pin under :prod, as a build would have left it
        assert_holds_the_pins_content(
            registry, image, pinned[image], f"{registry.url}/{image}:prod", second_engine
        )


def stamp_in(ref: str, name: str) -> str:
    return file_in(ref, f"/stamp/{name}")


@pytest.mark.parametrize("push", [False, True])
def test_a_subtree_is_built_on_the_parents_the_run_built(repo, registry, push):
    pinned = pins(repo, registry)
    text = change_stamp(repo, MIDDLE, "edited for its dependents")
    before = fake_tree.tracked_files(repo)
    steps = ("--build", "--push") if push else ("--build",)
    result = run_tool(repo, "--image", MIDDLE, *steps, "--json", "-", registry=registry)
    images = report(result)
    assert fake_tree.tracked_files(repo) == before  # tracked files untouched
    url = f"{registry.url}/{MIDDLE}"
    parent = f"{url}@{registry.digest(MIDDLE, 'latest')}" if push else f"{url}:latest"
    for image in mi.ordered_images_to_process([MIDDLE], GRAPH)[1:]:
        # Each dependent holds the edited parent: the one this run built, not the old pin.
        ref = f"{registry.url}/{image}:latest"
        if push:
            ref = f"{registry.url}/{image}@{registry.digest(image, 'latest')}"
        assert stamp_in(ref, MIDDLE) == text, image
        on = images[image]["built_on"]
        assert (on == {MIDDLE: parent}) == (MIDDLE in GRAPH[image]), image
    assert pins(repo, registry) == pinned
