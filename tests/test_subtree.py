"""A build of a subtree builds each dependent on the parent this run built, not on the
old pin its FROM names (#29 item 4), with the stand-in docker and registry: through
buildx a named build context per reference, else a rebased copy of the Dockerfile
passed with --file; tracked files untouched; the summary and --json say which parent
each image was built on. With --update_references nothing of this happens: the pins
are rewritten first. tests/test_e2e_skip.py builds a subtree on real engines."""

from __future__ import annotations

import hashlib
import json

import pytest

import manage_images as mi
from helpers import D1, REGISTRY, files

CMAKE = f"{REGISTRY}/cmake"  # pinned to D1 in the tree fixture; cmake-python is built FROM it
BUILDX = {"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"}


def build_of(standin, image: str) -> list[str]:
    (argv,) = [
        argv for argv in standin.commands() if argv[1:2] == ["build"] and argv[-1].endswith(f"/{image}")
    ]
    return argv


def report(capsys) -> dict[str, dict]:
    return {image["name"]: image for image in json.loads(capsys.readouterr().out)["images"]}


def test_the_classic_builder_builds_a_dependent_on_this_run_s_parent_from_a_rebased_copy(
    tree, standin, capsys
):
    before = files(tree)
    assert mi.main(["--image", "cmake", "--build", "--json", "-"]) == 0
    argv = build_of(standin, "cmake-python")
    dockerfile = argv[argv.index("--file") + 1]
    assert dockerfile.endswith("/cmake-python.Dockerfile") and not dockerfile.startswith(str(tree))
    # The copy names the image this run built (not pushed: by its tag); the tracked file is untouched.
    tracked = (tree / "build_tools/docker/cmake-python/Dockerfile").read_bytes()
    assert standin.dockerfile("cmake-python.Dockerfile") == tracked.replace(
        f"{CMAKE}@{D1}".encode(), f"{CMAKE}:latest".encode()
    )
    assert files(tree) == before
    images = report(capsys)
    assert images["cmake-python"]["built_on"] == {"cmake": f"{CMAKE}:latest"}
    assert images["cmake-python"]["note"] == "built on this run's cmake (:latest, not pushed)"
    # Not by digest: its inputs are not known, and its label says so (rather than inherit cmake's).
    assert images["cmake-python"]["inputs"]["digest"] is None
    assert argv[argv.index("--label") + 1] == f"{mi.INPUTS_LABEL}="
    assert images["cmake"]["built_on"] == {}


def test_buildx_builds_a_dependent_on_this_run_s_push_through_a_named_context(tree, standin, capsys):
    standin.set(engine=BUILDX)
    assert mi.main(["--image", "cmake", "--build", "--push", "--json", "-"]) == 0
    pushed = "sha256:" + hashlib.sha256(f"{CMAKE}:latest".encode()).hexdigest()
    argv = build_of(standin, "cmake-python")
    assert argv[argv.index("--build-context") + 1] == f"{CMAKE}@{D1}=docker-image://{CMAKE}@{pushed}"
    assert "--file" not in argv
    images = report(capsys)
    assert images["cmake-python"]["built_on"] == {"cmake": f"{CMAKE}@{pushed}"}
    assert images["cmake-python"]["note"] == f"built on this run's cmake ({pushed[:19]})"
    # By digest: its inputs are those of its Dockerfile with that digest in place of the pin.
    assert images["cmake-python"]["inputs"]["digest"] == argv[argv.index("--label") + 1].partition("=")[2]


def test_a_parent_built_again_as_its_pin_leaves_its_dependents_on_the_pin(tree, standin, capsys):
    # What the engine holds after the build is the image the registry serves as the pin.
    standin.set(repo_digests={f"{CMAKE}:latest": [f"{CMAKE}@{D1}"]}, manifests={f"{CMAKE}@{D1}": D1})
    assert mi.main(["--image", "cmake", "--build", "--json", "-"]) == 0
    argv = build_of(standin, "cmake-python")
    assert "--file" not in argv and "--build-context" not in argv
    assert report(capsys)["cmake-python"]["built_on"] == {}


@pytest.mark.parametrize("engine", [{}, BUILDX])
def test_with_update_references_the_pins_are_rewritten_first_and_nothing_is_rebased(tree, standin, engine):
    standin.set(engine=engine)
    assert mi.main(["--image", "cmake", "--build", "--push", "--update_references"]) == 0
    argv = build_of(standin, "cmake-python")
    assert "--file" not in argv and "--build-context" not in argv


@pytest.mark.parametrize("engine", [{}, BUILDX, {**BUILDX, "store": "containerd"}])
def test_a_parent_built_and_not_pushed_is_taken_from_the_engine_by_every_builder(tree, standin, engine):
    # A named context would resolve CMAKE:latest in the registry on the containerd store.
    standin.set(engine=engine)
    assert mi.main(["--image", "cmake", "--build"]) == 0
    argv = build_of(standin, "cmake-python")
    assert "--file" in argv and "--build-context" not in argv
    rebased = standin.dockerfile("cmake-python.Dockerfile")
    assert f"FROM {CMAKE}:latest AS final".encode() in rebased


def test_a_dry_run_shows_what_a_dependent_would_be_built_on(tree, standin, capsys):
    standin.set(engine=BUILDX)
    assert mi.main(["--image", "cmake", "--build", "-n"]) == 0
    out = capsys.readouterr().out
    line = next(
        line
        for line in out.splitlines()
        if line.startswith("Running: `docker build") and "cmake-python`" in line
    )
    assert "--file " in line and line.endswith("build_tools/docker/cmake-python`")
