"""End-to-end: the CLI as a subprocess against a real engine and registry.

Results are read from the registry's HTTP API, the local image store and the
files themselves, never from what the tool printed.
"""

from __future__ import annotations


import pytest

import fake_tree
import manage_images
from helpers import (
    ALL,
    GRAPH,
    STEPS,
    assert_pinned_to_registry,
    change_stamp,
    docker,
    failed_run_exit_code,
    inspect,
    push_command,
    references,
    references_in,
    run_tool,
    stamp,
)

pytestmark = pytest.mark.e2e


def dependents_of(image: str) -> set[str]:
    return set(manage_images.ordered_images_to_process([image], GRAPH))


def test_build_push_update_base_rebuilds_its_dependents_on_the_new_base(repo, registry):
    before = fake_tree.tracked_files(repo)
    new_stamp = change_stamp(repo, "base", "base 2\n")
    old = references(repo, registry)

    result = run_tool(repo, "--image", "base", *STEPS, registry=registry)

    assert result.returncode == 0, result.stdout + result.stderr
    processed = dependents_of("base")
    assert len(processed) == 14
    assert_pinned_to_registry(repo, registry, ALL)
    for image in ALL:
        assert (references(repo, registry)[image] == old[image]) == (image not in processed), image
    for image in processed:
        digest = registry.digest(image, "latest")
        assert stamp(registry, image, digest, "base") == new_stamp, image
    # Every parent was built before its child.
    created = {image: inspect(f"{registry.url}/{image}:latest")["Created"] for image in processed}
    for image in processed:
        for parent in GRAPH[image]:
            if parent in processed:
                assert created[parent] < created[image], (parent, image)
    changed = {name for name, data in fake_tree.tracked_files(repo).items() if before.get(name) != data}
    assert "build_tools/docker/prod_digests.txt" in changed
    assert "build_tools/docker/util/Dockerfile" not in changed


def test_each_step_alone_then_pull_brings_back_the_registry_digests(repo, registry):
    tag = "steps"
    change_stamp(repo, "util", "util steps\n")
    before_files = fake_tree.tracked_files(repo)

    result = run_tool(repo, "--images", "all", "--build", "--tag", tag, registry=registry)
    assert result.returncode == 0, result.stderr
    assert all(inspect(f"{registry.url}/{image}:{tag}") for image in ALL)
    assert all(tag not in registry.tags(image) for image in ALL)
    assert fake_tree.tracked_files(repo) == before_files

    result = run_tool(repo, "--images", "all", "--push", "--tag", tag, registry=registry)
    assert result.returncode == 0, result.stderr
    for image in ALL:
        local = inspect(f"{registry.url}/{image}:{tag}")["RepoDigests"]
        assert f"{registry.url}/{image}@{registry.digest(image, tag)}" in local
    assert fake_tree.tracked_files(repo) == before_files

    result = run_tool(repo, "--images", "all", "--update_references", "--tag", tag, registry=registry)
    assert result.returncode == 0, result.stderr
    found = references(repo, registry)
    for image in ALL:
        assert found[image] == {registry.digest(image, tag)}, image

    for image in ALL:
        docker("rmi", f"{registry.url}/{image}:{tag}")
    assert not any(inspect(f"{registry.url}/{image}:{tag}") for image in ALL)
    result = run_tool(repo, "--images", "all", "--pull", "--tag", tag, registry=registry)
    assert result.returncode == 0, result.stderr
    for image in ALL:
        local = inspect(f"{registry.url}/{image}:{tag}")
        assert f"{registry.url}/{image}@{registry.digest(image, tag)}" in local["RepoDigests"]


def test_prod_flow_then_nothing_changed_is_all_cache_hits(repo, registry):
    change_stamp(repo, "vulkan", "vulkan prod\n")
    result = run_tool(repo, "--image", "vulkan", *STEPS, "--tag", "prod", registry=registry)
    assert result.returncode == 0, result.stderr
    processed = dependents_of("vulkan")
    found = references(repo, registry)
    for image in processed:
        assert found[image] == {registry.digest(image, "prod")}, image
    fake_tree.git(repo, "commit", "-q", "-am", "Update vulkan")
    ids = {image: inspect(f"{registry.url}/{image}:prod")["Id"] for image in processed}
    served = registry.snapshot(processed, ("prod",))

    again = run_tool(repo, "--image", "vulkan", *STEPS, "--tag", "prod", registry=registry)

    assert again.returncode == 0, again.stderr
    assert fake_tree.git(repo, "diff") == ""
    assert fake_tree.git(repo, "status", "--porcelain") == ""
    assert {image: inspect(f"{registry.url}/{image}:prod")["Id"] for image in processed} == ids
    assert registry.snapshot(processed, ("prod",)) == served


def test_dry_run_changes_nothing(repo, registry):
    change_stamp(repo, "base", "base dry\n")
    ids = {image: inspect(f"{registry.url}/{image}:latest")["Id"] for image in ALL}
    served = registry.snapshot(ALL)

    result = run_tool(repo, "--images", "all", "--pull", *STEPS, "--dry-run", registry=registry)

    assert result.returncode == 0, result.stderr
    assert fake_tree.git(repo, "status", "--porcelain") == ""
    assert registry.snapshot(ALL) == served
    assert {image: inspect(f"{registry.url}/{image}:latest")["Id"] for image in ALL} == ids


def test_dry_run_of_update_references_shows_the_diff_it_would_make(repo, registry):
    context = repo / "build_tools" / "docker" / "rbe-toolchain"
    (context / "stamp").write_text("rbe dry\n")
    url = f"{registry.url}/rbe-toolchain"
    docker("build", "--tag", f"{url}:dryrun", str(context))
    docker("push", f"{url}:dryrun")
    fake_tree.git(repo, "checkout", "--", ".")
    new = registry.digest("rbe-toolchain", "dryrun")
    old = references(repo, registry)["rbe-toolchain"].pop()
    assert new != old
    before = fake_tree.tracked_files(repo)

    result = run_tool(
        repo,
        "--image",
        "rbe-toolchain",
        "--update_references",
        "--tag",
        "dryrun",
        "--dry-run",
        registry=registry,
    )

    assert result.returncode == 0, result.stderr
    assert fake_tree.tracked_files(repo) == before
    assert f'-    digest = "{old}",' in result.stdout
    assert f'+    digest = "{new}",' in result.stdout
    assert f"+{url}@{new}" in result.stdout

    unknown = run_tool(
        repo,
        "--image",
        "rbe-toolchain",
        "--update_references",
        "--tag",
        "never-pushed",
        "--dry-run",
        registry=registry,
    )
    assert unknown.returncode == 0, unknown.stderr
    assert "the engine holds no" in unknown.stdout and "the new digest is unknown" in unknown.stdout
    assert fake_tree.tracked_files(repo) == before


def test_failing_run_stops_the_graph_and_leaves_whole_files(repo, registry):
    change_stamp(repo, "base", "base fail\n")
    dockerfile = repo / "build_tools" / "docker" / "cmake-python" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN exit 3\n")
    fake_tree.git(repo, "commit", "-q", "-am", "Break cmake-python")
    before = fake_tree.tracked_files(repo)
    served = registry.snapshot(ALL, ("latest",))

    result = run_tool(repo, "--images", "all", *STEPS, registry=registry)

    code = failed_run_exit_code(3)
    assert result.returncode == code
    assert f"Command failed with exit code {code}: `docker build" in result.stderr
    order = manage_images.ordered_images_to_process(ALL, GRAPH)
    done = order[: order.index("cmake-python")]
    assert done == ["base", "util", "cmake", "swiftshader"]
    after = registry.snapshot(ALL, ("latest",))
    for image in ALL:
        if image in done:
            continue
        assert after[(image, "latest")] == served[(image, "latest")], image
    found = references(repo, registry)
    for image in ("base", "cmake", "swiftshader"):
        assert after[(image, "latest")] != served[(image, "latest")], image
        assert found[image] == {after[(image, "latest")]}, image
    untouched = set(ALL) - set(done)
    for image in untouched:
        assert found[image] == references_in(before, registry)[image], image
    status = fake_tree.git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert status and all(line.startswith(" M ") for line in status), status

    # Fixed, the same command completes the job.
    dockerfile.write_text(dockerfile.read_text().replace("RUN exit 3\n", ""))
    rerun = run_tool(repo, "--images", "all", *STEPS, registry=registry)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_pinned_to_registry(repo, registry, ALL)


def test_push_to_a_registry_that_is_down_changes_nothing(repo, registry):
    change_stamp(repo, "util", "util down\n")
    before = fake_tree.tracked_files(repo)
    registry.stop()
    try:
        result = run_tool(repo, "--image", "util", *STEPS, registry=registry)
    finally:
        registry.start()

    assert result.returncode != 0
    assert push_command(f"{registry.url}/util") in result.stderr
    assert fake_tree.tracked_files(repo) == before
    assert fake_tree.git(repo, "status", "--porcelain", "--untracked-files=all") == ""
