"""End-to-end: every row of issue #19's table on the engine this session runs
on (MANAGE_IMAGES_ENGINE=classic|buildkit|containerd; .ci/run runs all
three), against a real registry.

What each test asserts comes from the registry (manifests fetched with every
media type in Accept, their configs), the engines' image stores and git,
never from what the tool printed: the tree pins only digests the registry
serves, an unchanged image keeps its pin, and a rebuilt image holds the
layers of the config its pin serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import fake_tree
import manage_images as mi
from helpers import ALL, assert_holds_the_pins_content, file_in, pins, references, run_tool
from registry import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256

pytestmark = pytest.mark.e2e

IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
PROD_FLOW = ("--images", "all", "--tag", "prod", "--build", "--update_references", "-j", "4")
REPRODUCE = ("--cache_from_pinned", "--verify_pinned")
LEAF = "cmake-python-nvidia"  # no image depends on it
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def assert_every_reference_is_served(repo, registry) -> None:
    for image, digests in references(repo, registry).items():
        for digest in digests:
            assert registry.digest(image, digest) == digest, (image, digest)


def report(result) -> dict:
    return {image["name"]: image for image in json.loads(result.stdout)["images"]}


def test_the_main_job_pins_image_manifests_the_registry_serves(repo, registry):
    # conftest.py's world is the main job: --images all --build --push --update_references -j 4.
    # (Other tests push to :latest since; test_an_unchanged_rebuild... checks it against the pins.)
    pinned = pins(repo, registry)
    for image in ALL:
        media_type, _ = registry.manifest(image, pinned[image])
        assert media_type in IMAGE_MANIFESTS, (image, media_type)  # no attestation index
    assert_every_reference_is_served(repo, registry)


def test_an_unchanged_rebuild_and_push_changes_no_reference(repo, registry):
    before = fake_tree.tracked_files(repo)
    result = run_tool(
        repo, "--images", "all", "--build", "--push", "--update_references", "-j", "4", registry=registry
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_tree.tracked_files(repo) == before
    assert_every_reference_is_served(repo, registry)
    # What was just pushed under :latest is each pin, or holds its content.
    pinned = pins(repo, registry)
    for image in ALL:
        pushed = registry.digest(image, "latest")
        assert pushed == pinned[image] or strip(registry.image_config(image, pushed)) == strip(
            registry.image_config(image, pinned[image])
        ), image


def strip(config: dict) -> dict:
    """A config without BuildKit's cache record."""
    return {key: value for key, value in config.items() if key != "moby.buildkit.cache.v0"}


def test_the_prod_step_on_the_machine_that_built_them_changes_no_reference(repo, registry):
    before = fake_tree.tracked_files(repo)
    result = run_tool(
        repo,
        "--image",
        "base",
        "--tag",
        "prod",
        "--build",
        "--update_references",
        "--json",
        "-",
        registry=registry,
    )
    assert result.returncode == 0, result.stderr
    assert fake_tree.tracked_files(repo) == before
    assert_every_reference_is_served(repo, registry)
    pinned = pins(repo, registry)
    for name, image in report(result).items():
        assert image["identity"] in ("identical", "same content"), (name, image)
        assert_holds_the_pins_content(registry, name, pinned[name], f"{registry.url}/{name}:prod")


def test_a_buildx_build_and_push_starts_the_plugin_not_docker(repo, registry, tmp_path):
    # A `docker` first on PATH that writes down each command, then runs docker.
    shim, log = tmp_path / "bin", tmp_path / "docker.log"
    shim.mkdir()
    (shim / "docker").write_text(f'#!/bin/sh\necho "$1" >>{log}\nexec {shutil.which("docker")} "$@"\n')
    (shim / "docker").chmod(0o755)
    (repo / "build_tools" / "docker" / LEAF / "stamp").write_text("built by the plugin itself\n")
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    # A tag of its own: :latest must stay the pins the next tests verify.
    result = run_tool(
        repo, "--image", LEAF, "--build", "--push", "--tag", "plugin", registry=registry, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = log.read_text().split()
    # BuildKit through buildx: docker itself is never started for the build (nor the push,
    # which is the build's); the classic builder builds, then pushes, through docker.
    buildx = os.environ.get("MANAGE_IMAGES_ENGINE") in ("buildkit", "containerd")
    assert ("build" in commands, "push" in commands) == (not buildx, not buildx), commands
    # What the registry serves is that build, with the tool's flags: its stamp and its label.
    served = f"{registry.url}/{LEAF}@{registry.digest(LEAF, 'plugin')}"
    assert file_in(served, f"/stamp/{LEAF}") == "built by the plugin itself\n"
    labels = registry.image_config(LEAF, "plugin")["config"].get("Labels") or {}
    assert mi.INPUTS_LABEL in labels


def test_verify_pinned_asks_the_registry_right_after_pinning(repo, registry):
    result = run_tool(repo, "--images", "all", "--verify_pinned", registry=registry)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rebuild_with_nothing_changed_reproduces_every_pin(repo, registry):
    pinned = pins(repo, registry)
    result = run_tool(repo, "--images", "all", "--build", "--verify_pinned", "--json", "-", registry=registry)
    assert result.returncode == 0, result.stderr
    identities = {name: image["identity"] for name, image in report(result).items()}
    # BuildKit on a graph-driver store writes its cache record (inline cache) into the config.
    # The record lists every cache key the engine knows for a step, and an engine that built
    # other trees knows more for a step with two sources (FROM and COPY --from): the same
    # content, in other config bytes. Classic and the containerd store write no record.
    same = {"identical", "same content"} if os.environ.get("MANAGE_IMAGES_ENGINE") == "buildkit" else set()
    assert set(identities) == set(ALL) and set(identities.values()) <= {"identical"} | same, identities
    for image in ALL:
        assert_holds_the_pins_content(registry, image, pinned[image], f"{registry.url}/{image}:latest")


def test_a_cold_engine_reproduces_the_content_of_every_pin(repo, registry, second_engine):
    pinned = pins(repo, registry)
    before = fake_tree.tracked_files(repo)
    result = run_tool(repo, *PROD_FLOW, *REPRODUCE, "--json", "-", registry=registry, env=second_engine)
    assert result.returncode == 0, result.stderr
    assert fake_tree.tracked_files(repo) == before
    identities = {name: image["identity"] for name, image in report(result).items()}
    assert set(identities) == set(ALL) and set(identities.values()) <= {"identical", "same content"}, (
        identities
    )
    for image in ALL:
        assert_holds_the_pins_content(
            registry, image, pinned[image], f"{registry.url}/{image}:prod", second_engine
        )


def test_promote_then_verify_pinned_on_this_engine(repo, registry):
    pinned = pins(repo, registry)
    result = run_tool(repo, "--images", "all", "--promote", "--tag", "prod", "-j", "4", registry=registry)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {image: registry.digest(image, "prod") for image in ALL} == pinned
    verified = run_tool(repo, "--images", "all", "--verify_pinned", "--tag", "prod", registry=registry)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_built_image_no_registry_serves_is_never_pinned(repo, registry):
    # Edit the leaf and build it without a push: nothing the registry serves is that image.
    (repo / "build_tools" / "docker" / LEAF / "stamp").write_text("edited, not pushed\n")
    fake_tree.git(repo, "commit", "-q", "-am", f"Edit {LEAF}")
    before = fake_tree.tracked_files(repo)
    result = run_tool(repo, "--image", LEAF, "--build", "--update_references", registry=registry)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"{registry.url}/{LEAF}:latest differs from every image {registry.url} serves for it" in result.stderr
    )
    assert fake_tree.tracked_files(repo) == before
    assert_every_reference_is_served(repo, registry)

    # A dry run asks the registry too: it refuses as the real run did, and its
    # diff names no digest (on the containerd store, RepoDigests lists the
    # local, never-pushed one).
    dry = run_tool(repo, "--image", LEAF, "--update_references", "--dry_run", registry=registry)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert f"{registry.url}/{LEAF}:latest differs from every image" in dry.stderr
    shown = {
        digest for line in dry.stdout.splitlines() if line.startswith("+") for digest in DIGEST.findall(line)
    }
    assert {digest for digest in shown if registry.digest(LEAF, digest) != digest} == set()
    assert fake_tree.tracked_files(repo) == before


def wrap_in_an_index(registry, image: str, digest: str) -> str:
    """An OCI index whose linux/amd64 entry is the image manifest `digest` (and an arm64
    image beside it), pushed under :latest; its digest."""
    media_type, data = registry.manifest(image, digest)
    other = registry.push_image(image, layers=[b"arm64 layer"], platform="linux/arm64", label="other")
    _, other_data = registry.manifest(image, other)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": len(data),
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": other,
                    "size": len(other_data),
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
            ],
        }
    ).encode()
    indexed = registry.push_manifest(image, sha256(index), index, OCI_INDEX)
    registry.push_manifest(image, "latest", index, OCI_INDEX)
    return indexed


def test_a_pin_that_is_an_index_is_verified_promoted_reproduced_and_kept(repo, registry):
    pinned = pins(repo, registry)
    media_type, manifest = registry.manifest(LEAF, pinned[LEAF])
    index = wrap_in_an_index(registry, LEAF, pinned[LEAF])
    try:
        prod_digests = repo / "build_tools" / "docker" / "prod_digests.txt"
        prod_digests.write_text(prod_digests.read_text().replace(pinned[LEAF], index))
        assert run_tool(repo, "--image", LEAF, "--only_references", registry=registry).returncode == 0
        fake_tree.git(repo, "commit", "-q", "-am", f"Pin {LEAF} to an index")
        before = fake_tree.tracked_files(repo)

        verified = run_tool(repo, "--image", LEAF, "--verify_pinned", registry=registry)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        promoted = run_tool(repo, "--image", LEAF, "--promote", "--tag", "prod", registry=registry)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert registry.digest(LEAF, "prod") == index
        rebuilt = run_tool(
            repo,
            *("--image", LEAF, "--build", "--verify_pinned", "--update_references", "--json", "-"),
            registry=registry,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert report(rebuilt)[LEAF]["identity"] == "identical"
        assert fake_tree.tracked_files(repo) == before  # the index stays the pin
        assert_holds_the_pins_content(registry, LEAF, index, f"{registry.url}/{LEAF}:latest")
    finally:  # the other tests' world: the image manifest under :latest and :prod
        for tag in ("latest", "prod"):
            registry.push_manifest(LEAF, tag, manifest, media_type)
