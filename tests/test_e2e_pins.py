"""End-to-end: reproduce the pinned digests on a machine that never built
them (--cache_from_pinned), verify them (--verify_pinned), publish them by
digest (--promote), and rebuild what a change touched (--changed_since),
against real engines and the test registry.

Results come from the registry's HTTP API, the engines' image stores and git,
never from what the tool printed.
"""

from __future__ import annotations

import os

import pytest

import fake_tree
import manage_images
from helpers import (
    ALL,
    GRAPH,
    assert_holds_the_pins_content,
    change_stamp,
    docker,
    image_id,
    pins,
    pull,
    run_tool,
)

pytestmark = pytest.mark.e2e

REPRODUCE = ("--cache_from_pinned", "--verify_pinned")
# The prod flow on a machine that never built the images, as the original ran it.
PROD_FLOW = ("--images", "all", "--tag", "prod", "--build", "--update_references", "-j", "4")


def test_a_cold_engine_without_cache_from_pinned_cannot_reproduce(repo, registry, second_engine):
    # The original's prod flow on a machine that never built the images (with it:
    # test_e2e_engines.py, on every engine).
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
    for image in ALL:  # (on BuildKit, the config's cache record may be another one)
        assert_holds_the_pins_content(registry, image, pinned[image], f"{registry.url}/{image}:latest")


def test_an_edited_image_that_was_not_re_pinned_is_caught_before_its_push(repo, registry):
    image = "cmake-python-nvidia"
    served = registry.digest(image, "latest")
    change_stamp(repo, image, "edited, never re-pinned\n")

    result = run_tool(repo, "--image", image, "--build", "--push", *REPRODUCE, registry=registry)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{image} differs from the image the tree pins" in result.stderr
    assert registry.digest(image, "latest") == served


def test_promote_publishes_every_pin_and_verify_pinned_watches_the_tag(repo, registry, tmp_path):
    pinned = pins(repo, registry)
    before = registry.log_size()

    # No engine: promotion is manifest requests to the registry, nothing else.
    no_engine = {
        **os.environ,
        "DOCKER_HOST": f"unix://{tmp_path / 'nothing.sock'}",
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
    }
    result = run_tool(
        repo, "--images", "all", "--promote", "--tag", "prod", "-j", "4", registry=registry, env=no_engine
    )

    assert result.returncode == 0, result.stdout + result.stderr
    requests = registry.requests(before)
    assert {image: registry.digest(image, "prod") for image in ALL} == {image: pinned[image] for image in ALL}
    assert [request for request in requests if "/blobs/" in request[1]] == []
    manifest_requests = sorted(method for method, path, _, _ in requests if "/manifests/" in path)
    assert manifest_requests == sorted(["GET", "PUT"] * len(ALL))
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
