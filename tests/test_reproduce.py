"""--cache_from_pinned, --verify_pinned and --promote with a stand-in docker:
the commands each produces, in order, and their errors. The real engine and
registry are in test_e2e_reproduce.py."""

from __future__ import annotations


import pytest

import manage_images as mi
from helpers import D1, GRAPH, NEW, files, usage_error

CMAKE = "gcr.io/iree-oss/cmake"
PYTHON = "gcr.io/iree-oss/cmake-python"
OTHER = "sha256:" + "c" * 64


def docker_commands(standin) -> list[list[str]]:
    return [argv[1:] for argv in standin.commands() if argv[0] == "docker" and argv[1] != "version"]


def test_dry_run_of_cache_from_pinned_prints_the_pull_and_the_changed_build(tree, standin, capsys):
    assert mi.main(["--image", "cmake-python", "--build", "--cache_from_pinned", "-n"]) == 0
    out = capsys.readouterr().out
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
    assert standin.commands() == []


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


def test_verify_pinned_after_build_compares_image_ids(tree, standin, capsys):
    # The stand-in's `docker image inspect --format {{.Id}}` prints the repo digests it is given.
    standin.set(
        repo_digests={f"{PYTHON}:latest": "sha256:same", f"{PYTHON}@{D1}": "sha256:same"},
    )
    assert mi.main(["--image", "cmake-python", "--build", "--verify_pinned", "--keep-going"]) == 1
    out, err = capsys.readouterr()
    summary = out[out.index("Summary:") :].splitlines()
    assert [line.split()[-1] for line in summary if line.startswith("  cmake-python ")] == ["reproduced"]
    # cmake-python-vulkan is not pinned: nothing to compare with, a failure.
    assert "cmake-python-vulkan has no line in build_tools/docker/prod_digests.txt" in err


def test_verify_pinned_fails_an_image_that_differs_before_its_push(tree, standin, capsys):
    standin.set(repo_digests={f"{PYTHON}:latest": "sha256:new", f"{PYTHON}@{D1}": "sha256:old"})
    assert mi.main(["--image", "cmake-python", "--build", "--push", "--verify_pinned"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(
        f"cmake-python differs from the image the tree pins: built sha256:new, pinned {PYTHON}@"
    )
    assert "Its Dockerfile or a parent changed since it was pinned" in err
    assert not [argv for argv in docker_commands(standin) if argv[0] == "push"]
    assert "differs" in out[out.index("Summary:") :]


def test_promote_pulls_tags_pushes_and_confirms_each_pinned_digest(tree, standin, capsys):
    standin.set(manifests={f"{PYTHON}:prod": D1})
    assert mi.main(["--image", "cmake-python", "--promote", "--tag", "prod"]) == 1  # dependents are unpinned
    assert capsys.readouterr().err == (
        "cannot promote cmake-python-vulkan: build_tools/docker/prod_digests.txt has no line for "
        "gcr.io/iree-oss/cmake-python-vulkan; push it with --update_references first or add the line\n"
    )
    assert standin.commands() == []
    lines = "".join(f"gcr.io/iree-oss/{image}@{D1}\n" for image in GRAPH)
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(lines.encode())
    standin.set(manifests={f"gcr.io/iree-oss/{image}:prod": D1 for image in GRAPH})
    capsys.readouterr()
    assert mi.main(["--image", "cmake-python-nvidia", "--promote", "--tag", "prod"]) == 0
    nvidia = "gcr.io/iree-oss/cmake-python-nvidia"
    assert docker_commands(standin) == [
        ["pull", f"{nvidia}@{D1}"],
        ["tag", f"{nvidia}@{D1}", f"{nvidia}:prod"],
        ["push", f"{nvidia}:prod"],
        ["manifest", "inspect", "--verbose", f"{nvidia}:prod"],
    ]
    assert ["gcloud", "auth", "configure-docker"] in standin.commands()


def test_promote_fails_when_the_registry_does_not_serve_the_pin_under_the_tag(tree, standin, capsys):
    lines = "".join(f"gcr.io/iree-oss/{image}@{D1}\n" for image in GRAPH)
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(lines.encode())
    nvidia = "gcr.io/iree-oss/cmake-python-nvidia"
    standin.set(manifests={f"{nvidia}:prod": NEW})
    assert mi.main(["--image", "cmake-python-nvidia", "--promote", "--tag", "prod"]) == 1
    assert capsys.readouterr().err.startswith(f"after the push, {nvidia}:prod is not {D1}")


def test_promote_changes_no_file(tree, standin):
    lines = "".join(f"gcr.io/iree-oss/{image}@{D1}\n" for image in GRAPH)
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(lines.encode())
    standin.set(manifests={f"gcr.io/iree-oss/{image}:prod": D1 for image in GRAPH})
    before = files(tree)
    assert mi.main(["--images", "all", "--promote", "--tag", "prod", "-j", "4"]) == 0
    assert files(tree) == before


def test_verify_pinned_alone_reports_each_drift_at_its_prod_digests_line(tree, standin, capsys):
    standin.set(manifests={f"{CMAKE}@{D1}": D1, f"{CMAKE}:prod": OTHER, f"{PYTHON}:prod": D1})
    assert mi.main(["--image", "cmake-python", "--image", "cmake", "--verify_pinned", "--tag", "prod"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        f"build_tools/docker/prod_digests.txt:2: {PYTHON}@sha256:{'1' * 12} is pinned, but the "
        "registry does not serve it (never pushed, or deleted); push it with manage_images.py --image cmake-python "
        "--build --push --update_references"
    ) in out
    assert out[0] == (
        f"build_tools/docker/prod_digests.txt:1: {CMAKE}:prod is sha256:cccccccccccc, not the pinned "
        "sha256:111111111111; run manage_images.py --image cmake --promote --tag prod"
    )
    assert (
        "build_tools/docker/prod_digests.txt:1: gcr.io/iree-oss/swiftshader has no line, so there is no pin to verify"
        in out
    )
    assert out[-1] == "Verified 8 images in gcr.io/iree-oss: 8 problems found."


def test_verify_pinned_alone_passes_when_the_registry_agrees(tree, standin, capsys):
    standin.set(manifests={f"{ref}": D1 for ref in (f"{PYTHON}@{D1}", f"{PYTHON}:prod")})
    (tree / "build_tools/docker/prod_digests.txt").write_bytes(
        "".join(f"gcr.io/iree-oss/{image}@{D1}\n" for image in GRAPH).encode()
    )
    standin.set(
        manifests={
            f"gcr.io/iree-oss/{image}{suffix}": D1 for image in GRAPH for suffix in (f"@{D1}", ":prod")
        }
    )
    assert mi.main(["--images", "all", "--verify-pinned", "--tag", "prod"]) == 0
    assert capsys.readouterr().out.endswith(
        f"Verified {len(GRAPH)} images: gcr.io/iree-oss serves every pinned digest, and :prod as it.\n"
    )


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


def test_loopback_registries_are_asked_over_plain_http():
    assert mi.manifest_argv("127.0.0.1:5000/x/y:t", "127.0.0.1:5000/x")[-2:] == (
        "--insecure",
        "127.0.0.1:5000/x/y:t",
    )
    assert "--insecure" in mi.manifest_argv("r", "localhost:5000/x")
    assert "--insecure" in mi.manifest_argv("r", "[::1]:5000/x")
    assert "--insecure" not in mi.manifest_argv("r", "gcr.io/iree-oss")
    assert "--insecure" not in mi.manifest_argv("r", "127.example.com/x")
