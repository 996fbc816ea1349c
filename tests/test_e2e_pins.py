"""End-to-end: reproduce the pinned digests on a machine that never built
them (--cache_from_pinned), verify them (--verify_pinned), publish them by
digest (--promote), and rebuild what a change touched (--changed_since),
against real engines and the test registry.

Results come from the registry's HTTP API, the engines' image stores and git,
never from what the tool printed.
"""

from __future__ import annotations


import pytest

import fake_tree
import manage_images
from helpers import ALL, GRAPH, change_stamp, docker, image_id, pins, pull, run_tool

pytestmark = pytest.mark.e2e

REPRODUCE = ("--cache_from_pinned", "--verify_pinned")
# The prod flow on a machine that never built the images, as the original ran it.
PROD_FLOW = ("--images", "all", "--tag", "prod", "--build", "--update_references", "-j", "4")


def test_a_cold_engine_reproduces_every_pinned_digest(repo, registry, second_engine):
    pinned = pins(repo, registry)
    assert image_id(f"{registry.url}/base@{pinned['base']}", second_engine) is None  # it never saw them

    result = run_tool(repo, *PROD_FLOW, *REPRODUCE, registry=registry, env=second_engine)

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_tree.git(repo, "status", "--porcelain") == ""
    for image in ALL:
        built = image_id(f"{registry.url}/{image}:prod", second_engine)
        assert built is not None and built == image_id(
            f"{registry.url}/{image}@{pinned[image]}", second_engine
        ), image
    assert result.stdout.count("  reproduced") == len(GRAPH)


def test_a_cold_engine_without_cache_from_pinned_cannot_reproduce(repo, registry, second_engine):
    # The original's prod flow on a machine that never built the images.
    pinned = pins(repo, registry)
    result = run_tool(repo, *PROD_FLOW, registry=registry, env=second_engine)

    changed = fake_tree.git(repo, "status", "--porcelain")
    assert result.returncode != 0 or changed, result.stdout + result.stderr
    pull(f"{registry.url}/base@{pinned['base']}", second_engine)
    assert image_id(f"{registry.url}/base:prod", second_engine) != image_id(
        f"{registry.url}/base@{pinned['base']}", second_engine
    )


def test_a_sequential_rebuild_of_a_parallel_build_reproduces_every_digest(repo, registry):
    # The world was built with -j 4 (conftest.py).
    pinned = pins(repo, registry)
    result = run_tool(repo, "--images", "all", "--build", *REPRODUCE, "-j", "1", registry=registry)

    assert result.returncode == 0, result.stdout + result.stderr
    for image in ALL:
        assert image_id(f"{registry.url}/{image}:latest") == image_id(
            f"{registry.url}/{image}@{pinned[image]}"
        ), image


def test_an_edited_image_that_was_not_re_pinned_is_caught_before_its_push(repo, registry):
    image = "cmake-python-nvidia"
    served = registry.digest(image, "latest")
    change_stamp(repo, image, "edited, never re-pinned\n")

    result = run_tool(repo, "--image", image, "--build", "--push", *REPRODUCE, registry=registry)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{image} differs from the image the tree pins" in result.stderr
    assert registry.digest(image, "latest") == served


def test_promote_publishes_every_pin_and_verify_pinned_watches_the_tag(repo, registry):
    pinned = pins(repo, registry)

    result = run_tool(repo, "--images", "all", "--promote", "--tag", "prod", "-j", "4", registry=registry)

    assert result.returncode == 0, result.stdout + result.stderr
    assert {image: registry.digest(image, "prod") for image in ALL} == {image: pinned[image] for image in ALL}
    assert fake_tree.git(repo, "status", "--porcelain") == ""
    verified = run_tool(repo, "--images", "all", "--verify_pinned", "--tag", "prod", registry=registry)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Something else is pushed under util:prod: verification names util.
    other = f"{registry.url}/base@{pinned['base']}"
    pull(other)
    docker("tag", other, f"{registry.url}/util:prod")
    docker("push", f"{registry.url}/util:prod")
    assert registry.digest("util", "prod") == pinned["base"]
    drifted = run_tool(repo, "--images", "all", "--verify_pinned", "--tag", "prod", registry=registry)
    assert drifted.returncode == 1
    assert (
        f"{registry.url}/util:prod is {pinned['base'][:19]}, not the pinned {pinned['util'][:19]}"
        in drifted.stdout
    )
    assert [line for line in drifted.stdout.splitlines() if ": " in line and "prod_digests.txt:" in line] == [
        line for line in drifted.stdout.splitlines() if "/util:prod" in line
    ]


def test_presubmit_rebuilds_exactly_what_a_change_touched(repo, registry):
    image = "cmake-python-vulkan"
    touched = set(manage_images.ordered_images_to_process([image], GRAPH))
    before = registry.snapshot(ALL, ("latest",))
    change_stamp(repo, image, "presubmit\n")

    result = run_tool(
        repo, "--changed_since", "HEAD~1", "--build", "--push", "--update_references", registry=registry
    )

    assert result.returncode == 0, result.stdout + result.stderr
    after = registry.snapshot(ALL, ("latest",))
    assert {name for (name, _), digest in after.items() if digest != before[(name, "latest")]} == touched
    check = run_tool(repo, "--check", "--images", "all", "--changed_since", "HEAD~1", registry=registry)
    assert check.returncode == 0, check.stdout + check.stderr
