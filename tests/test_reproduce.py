"""--cache_from_pinned, --verify_pinned and --promote with a stand-in docker:
the commands each produces, in order, and their errors. --promote and
--verify_pinned alone talk to the registry's API: test_registry_client.py runs
them against a real registry; the real engine is in test_e2e_pins.py."""

from __future__ import annotations


import pytest

import manage_images as mi
from helpers import D1, GRAPH, files, unlabelled, usage_error, without_label

CMAKE = "gcr.io/iree-oss/cmake"
PYTHON = "gcr.io/iree-oss/cmake-python"
OTHER = "sha256:" + "c" * 64


def docker_commands(standin) -> list[list[str]]:
    return [
        without_label(argv)[1:]
        for argv in standin.commands()
        if argv[0] == "docker" and argv[1] not in ("version", "info")
    ]


def test_dry_run_of_cache_from_pinned_prints_the_pull_and_the_changed_build(tree, standin, capsys):
    assert mi.main(["--image", "cmake-python", "--build", "--cache_from_pinned", "-n"]) == 0
    out = unlabelled(capsys.readouterr().out)
    lines = [line for line in out.splitlines() if line.startswith(("Running:", "No cache"))]
    assert lines[:2] == [
        f"Running: `docker pull {PYTHON}@{D1}`",
        f"Running: `docker build --tag {PYTHON}:latest --cache-from {PYTHON}@{D1} build_tools/docker/cmake-python`",
    ]
    # cmake-python-vulkan has no line in prod_digests.txt: built without cache, and said so.
    assert "No cache for cmake-python-vulkan: build_tools/docker/prod_digests.txt does not pin it" in out
    assert (
        "Running: `docker build --tag gcr.io/iree-oss/cmake-python-vulkan:latest build_tools/docker/cmake-python-vulkan`"
        in out
    )
    assert docker_commands(standin) == []


def test_cache_from_pinned_pulls_by_digest_then_builds_from_it(tree, standin):
    assert mi.main(["--image", "cmake-python-nvidia", "--build", "--cache-from-pinned"]) == 0
    assert docker_commands(standin) == [
        [
            "build",
            "--tag",
            "gcr.io/iree-oss/cmake-python-nvidia:latest",
            "build_tools/docker/cmake-python-nvidia",
        ]
    ]
    standin.log.unlink()
    assert mi.main(["--image", "cmake-python", "--build", "--cache-from-pinned", "-j", "1"]) == 0
    assert docker_commands(standin)[:2] == [
        ["pull", f"{PYTHON}@{D1}"],
        [
            "build",
            "--tag",
            f"{PYTHON}:latest",
            "--cache-from",
            f"{PYTHON}@{D1}",
            "build_tools/docker/cmake-python",
        ],
    ]


def test_a_pinned_digest_the_registry_does_not_serve_builds_without_cache(tree, standin, capsys):
    standin.set(fail={"pull": 1})
    assert (
        mi.main(
            ["--image", "cmake-python-nvidia", "--image", "cmake-python", "--build", "--cache_from_pinned"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f"No cache for cmake-python: the registry does not serve {PYTHON}@{D1}; building without --cache-from"
        in out
    )
    assert ["build", "--tag", f"{PYTHON}:latest", "build_tools/docker/cmake-python"] in docker_commands(
        standin
    )
    summary = out[out.index("Summary:") :]
    assert "pinned image not served: built without cache" in summary


def test_verify_pinned_after_build_compares_the_built_config_with_the_pinned_one(tree, standin, capsys):
    # The built image holds the layer the registry's pin holds: the same config.
    standin.set(
        repo_digests={f"{PYTHON}:latest": []},
        local_content={f"{PYTHON}:latest": "layer"},
        manifests={f"{PYTHON}@{D1}": D1},
        contents={D1: "layer"},
    )
    assert mi.main(["--image", "cmake-python", "--build", "--verify_pinned", "--keep-going"]) == 1
    out, err = capsys.readouterr()
    summary = out[out.index("Summary:") :].splitlines()
    assert [line.split()[-1] for line in summary if line.startswith("  cmake-python ")] == ["reproduced"]
    # cmake-python-vulkan is not pinned: nothing to compare with, a failure.
    assert "cmake-python-vulkan has no line in build_tools/docker/prod_digests.txt" in err


def test_verify_pinned_fails_an_image_that_differs_before_its_push(tree, standin, capsys):
    standin.set(
        repo_digests={f"{PYTHON}:latest": []},
        local_content={f"{PYTHON}:latest": "new layer"},
        manifests={f"{PYTHON}@{D1}": D1},
        contents={D1: "old layer"},
    )
    assert mi.main(["--image", "cmake-python", "--build", "--push", "--verify_pinned"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("cmake-python differs from the image the tree pins: built sha256:")
    assert f"pinned {PYTHON}@{D1[:19]} holds other layers or another config" in err
    assert "Its Dockerfile or a parent changed since it was pinned" in err
    assert not [argv for argv in docker_commands(standin) if argv[0] == "push"]
    assert "differs" in out[out.index("Summary:") :]


def test_promote_needs_a_pin_for_every_image_and_runs_no_docker_command(tree, standin, capsys):
    assert mi.main(["--image", "cmake-python", "--promote", "--tag", "prod"]) == 1  # dependents are unpinned
    assert capsys.readouterr().err == (
        "cannot promote cmake-python-vulkan: build_tools/docker/prod_digests.txt has no line for "
        "gcr.io/iree-oss/cmake-python-vulkan; push it with --update_references first or add the line\n"
    )
    assert standin.commands() == []


def test_a_dry_run_of_promote_on_a_google_registry_configures_gcloud_then_plans_manifest_requests(
    tree, standin, capsys
):
    lines = "".join(f"gcr.io/iree-oss/{image}@{D1}\n" for image in GRAPH)
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(lines.encode())
    before = files(tree)
    assert mi.main(["--images", "all", "--promote", "--tag", "prod", "-n", "-j", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Running: `gcloud auth configure-docker`"
    nvidia = "gcr.io/v2/iree-oss/cmake-python-nvidia/manifests"
    assert f"[cmake-python-nvidia] Running: `GET {nvidia}/{D1}`" in out
    assert f"[cmake-python-nvidia] Running: `PUT {nvidia}/prod` (the same bytes and media type)" in out
    assert len([line for line in out if "Running: `GET " in line]) == len(GRAPH)
    assert standin.commands() == []  # a dry run runs not even gcloud, and promote never runs docker
    assert files(tree) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cache_from_pinned"], "--cache_from_pinned goes with --build"),
        (["--cache_from_pinned", "--push"], "--cache_from_pinned goes with --build"),
        (
            ["--verify_pinned", "--push"],
            "--verify_pinned goes with --build (or, for --verify_pinned, with no step",
        ),
        (["--promote", "--build"], "--promote and --build cannot be combined"),
        (["--promote", "--update_references"], "--promote and --update_references cannot be combined"),
        (["--promote", "--check"], "--promote and --check cannot be combined"),
        (["--verify_pinned", "--check"], "--check and --verify_pinned cannot be combined"),
    ],
)
def test_reproducibility_flags_misused_are_usage_errors(args, message, capsys):
    assert message in usage_error(["--image", "cmake", *args], capsys)
