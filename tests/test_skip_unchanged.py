"""--skip_unchanged and the inputs label, with the stand-in docker and registry: an
image is skipped exactly when the registry serves its pin and the pin's config
carries the digest of the image's inputs; any input edited makes it build again;
every build records its inputs in the label (none where a build must come out
as a pin from before the label). tests/test_e2e_skip.py holds the same on real
engines and a real registry."""

from __future__ import annotations

import json

import pytest

import manage_images as mi
from helpers import D1, D2, REGISTRY, usage_error

PYTHON = f"{REGISTRY}/cmake-python"  # pinned to D1 in the tree fixture
CONTEXT = "build_tools/docker/cmake-python"


def label_of(standin, image: str = "cmake-python") -> str | None:
    """The inputs label of the last `docker build` of IMAGE (None: it got none)."""
    builds = [
        argv for argv in standin.commands() if argv[1:2] == ["build"] and argv[-1].endswith(f"/{image}")
    ]
    argv = builds[-1]
    if "--label" not in argv:
        return None
    name, _, value = argv[argv.index("--label") + 1].partition("=")
    assert name == mi.INPUTS_LABEL
    return value


def built(standin) -> list[str]:
    return [argv[-1].rsplit("/", 1)[1] for argv in standin.commands() if argv[1:2] == ["build"]]


def report(capsys) -> dict[str, dict]:
    return {image["name"]: image for image in json.loads(capsys.readouterr().out)["images"]}


def pin_labelled_as_built(standin) -> str:
    """Builds cmake-python once and makes the registry's pin carry that build's label."""
    standin.set(manifests={f"{PYTHON}@{D1}": D1})
    assert mi.main(["--image", "cmake-python", "--build"]) == 0
    label = label_of(standin)
    assert label is not None and label.startswith(f"v{mi.INPUTS_VERSION}:sha256:")
    standin.set(labels={f"{PYTHON}@{D1}": label})
    standin.log.unlink()
    return label


def test_an_image_whose_inputs_are_its_pins_is_pulled_not_built(tree, standin, capsys):
    label = pin_labelled_as_built(standin)
    capsys.readouterr()
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged", "--json", "-"]) == 0
    assert "cmake-python" not in built(standin)
    docker = [argv[1:] for argv in standin.commands() if argv[0] == "docker"]
    # The run needs the image locally (a --build without --push): the pin, tagged as a build would be.
    assert ["pull", f"{PYTHON}@{D1}"] in docker
    assert ["tag", f"{PYTHON}@{D1}", f"{PYTHON}:latest"] in docker
    images = report(capsys)
    assert images["cmake-python"]["inputs"] == {
        "digest": label,
        "pin": label,
        "unchanged": True,
        "reason": None,
    }
    assert images["cmake-python"]["note"] == "unchanged (inputs of the pin)"
    assert images["cmake-python"]["result"] == "done"
    # Its dependents (no pin) are built.
    assert set(built(standin)) == set(
        mi.ordered_images_to_process(["cmake-python"], mi.IMAGES_TO_DEPENDENCIES)[1:]
    )


@pytest.mark.parametrize(("pulled", "pulls"), [(D1, 1), (D2, 2)])
def test_a_pin_the_tag_serves_is_pulled_by_its_tag(tree, standin, pulled, pulls):
    pin_labelled_as_built(standin)
    standin.set(manifests={f"{PYTHON}@{D1}": D1, f"{PYTHON}:latest": D1}, pulled={f"{PYTHON}:latest": pulled})
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged"]) == 0
    docker = [argv[1:] for argv in standin.commands() if argv[0] == "docker" and argv[1] in ("pull", "tag")]
    # One process when the pull gets the pin; else (the tag moved meanwhile) the pin by digest, tagged.
    expected = [["pull", f"{PYTHON}:latest"]]
    expected += (
        [["pull", f"{PYTHON}@{D1}"], ["tag", f"{PYTHON}@{D1}", f"{PYTHON}:latest"]] if pulls == 2 else []
    )
    assert docker == expected


@pytest.mark.parametrize("served", [False, True])
def test_with_push_an_unchanged_image_s_tag_is_moved_in_the_registry(tree, standin, served):
    pin_labelled_as_built(standin)
    if served:
        standin.set(manifests={f"{PYTHON}@{D1}": D1, f"{PYTHON}:latest": D1})
    argv = ["--image", "cmake-python", "--build", "--push", "--update_references", "--skip_unchanged"]
    assert mi.main(argv) == 0
    assert "cmake-python" not in built(standin)
    assert ["docker", "push", f"{PYTHON}:latest"] not in standin.commands()
    assert not [argv for argv in standin.commands() if argv[1:2] == ["pull"]]
    puts = [call for call in standin.registry.calls if call[0] == "PUT" and call[1] == PYTHON]
    assert puts == ([] if served else [("PUT", PYTHON, "latest")])
    assert f"{PYTHON}@{D1}".encode() in (tree / "build_tools/docker/prod_digests.txt").read_bytes()


def edit_tracked(tree):
    (tree / CONTEXT / "Dockerfile").write_bytes((tree / CONTEXT / "Dockerfile").read_bytes() + b"\n")


def edit_untracked(tree):
    (tree / CONTEXT / "notes.txt").write_text("not in git, but in the context\n")


def edit_mode(tree):
    (tree / CONTEXT / "Dockerfile").chmod(0o755)


def edit_parent_pin(tree):
    path = tree / CONTEXT / "Dockerfile"
    path.write_bytes(path.read_bytes().replace(D1.encode(), D2.encode()))


@pytest.mark.parametrize(
    ("edit", "extra"),
    [
        (edit_tracked, []),
        (edit_untracked, []),
        (edit_mode, []),
        (edit_parent_pin, []),
        (lambda tree: None, ["--build_arg", "A=1"]),
    ],
)
def test_editing_any_input_builds_it_again(tree, standin, capsys, edit, extra):
    label = pin_labelled_as_built(standin)
    edit(tree)
    capsys.readouterr()
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged", "--json", "-", *extra]) == 0
    assert "cmake-python" in built(standin)
    assert label_of(standin) != label
    inputs = report(capsys)["cmake-python"]["inputs"]
    assert inputs == {
        "digest": label_of(standin),
        "pin": label,
        "unchanged": False,
        "reason": "its inputs differ from its pin's",
    }


def test_a_dockerignored_file_is_no_input(tree, standin):
    (tree / CONTEXT / ".dockerignore").write_text("*.log\n.dockerignore\n")
    label = pin_labelled_as_built(standin)
    (tree / CONTEXT / "build.log").write_text("anything\n")
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged"]) == 0
    assert "cmake-python" not in built(standin)
    (tree / CONTEXT / "build.txt").write_text("anything\n")
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged"]) == 0
    assert "cmake-python" in built(standin) and label_of(standin) != label


@pytest.mark.parametrize(
    ("registry", "reason"),
    [
        ({"labels": {}}, "its pin carries no inputs label (built before the label, or by hand)"),
        ({"manifests": {}}, "the registry does not serve its pin"),
    ],
)
def test_a_pin_that_cannot_tell_its_inputs_is_built_again(tree, standin, capsys, registry, reason):
    label = pin_labelled_as_built(standin)
    standin.set(**registry)
    capsys.readouterr()
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged", "--json", "-"]) == 0
    assert "cmake-python" in built(standin)
    assert report(capsys)["cmake-python"]["inputs"] == {
        "digest": label,
        "pin": None,
        "unchanged": False,
        "reason": reason,
    }


def test_an_image_with_a_source_no_digest_fixes_is_never_unchanged_and_labelled_unknown(
    tree, standin, capsys
):
    path = tree / CONTEXT / "Dockerfile"
    path.write_bytes(path.read_bytes() + b"\nCOPY --from=debian:bookworm /etc/os-release /\n")
    standin.set(manifests={f"{PYTHON}@{D1}": D1})
    assert mi.main(["--image", "cmake-python", "--build", "--skip_unchanged", "--json", "-"]) == 0
    # Its label says its inputs are not known, rather than inherit its parent's.
    assert "cmake-python" in built(standin) and label_of(standin) == ""
    assert report(capsys)["cmake-python"]["inputs"] == {
        "digest": None,
        "pin": None,
        "unchanged": False,
        "reason": "COPY --from debian:bookworm: an external image not pinned by digest",
    }


@pytest.mark.parametrize(
    ("steps", "pin_label", "labelled"),
    [
        # A pin from before the label: a build that must come out as it is built without one.
        (["--update_references"], None, False),
        (["--verify_pinned"], None, False),
        # A pin with a label, or a run that pushes (and so may pin anew): the label.
        (["--update_references"], "v1:sha256:" + "0" * 64, True),
        (["--push", "--update_references"], None, True),
        ([], None, True),
    ],
)
def test_a_build_that_must_reproduce_a_pin_from_before_the_label_gets_none(
    tree, standin, steps, pin_label, labelled
):
    standin.set(
        manifests={f"{PYTHON}@{D1}": D1},
        repo_digests={f"{PYTHON}:latest": [f"{PYTHON}@{D1}"]},
        labels={f"{PYTHON}@{D1}": pin_label} if pin_label else {},
    )
    mi.main(["--image", "cmake-python", "--build", *steps])
    assert (label_of(standin) is not None) == labelled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--skip_unchanged"], "--skip_unchanged goes with --build"),
        (["--push", "--skip_unchanged"], "--skip_unchanged goes with --build"),
        (
            ["--build", "--skip_unchanged", "--verify_pinned"],
            "--skip_unchanged and --verify_pinned cannot be combined",
        ),
        (["--build", "--build_arg", "NOVALUE"], "--build_arg 'NOVALUE': give NAME=VALUE"),
        (["--build", "--build_arg", "=1"], "--build_arg '=1': give NAME=VALUE"),
    ],
)
def test_skip_unchanged_misused_is_a_usage_error(args, message, capsys):
    assert message in usage_error(["--image", "cmake", *args], capsys)


def test_the_view_counts_the_unchanged_images():
    state = mi.ViewState(17, 5, 0, (), 0.0, None, 5, unchanged=3)
    assert mi.render_view(state, 1.0, 200, 10)[0].startswith(
        "[5/17] 5 done (3 unchanged (inputs of the pin)), 0 running"
    )
