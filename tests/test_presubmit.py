"""Presubmit: --changed_since selects what a change touched, --check catches an
edited image that was never re-pinned, and --json reports every run. On
temporary git repositories, with a stand-in docker where one is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import D1, GRAPH, NEW, all_digests, unlabelled

REGISTRY = "gcr.io/iree-oss"
P = fake_tree.PLACEHOLDER
DOCKER = "build_tools/docker"


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """The fake world, every reference consistent, committed twice (so HEAD~1 exists)."""
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, GRAPH)
    (root / "notes.txt").write_text("second commit\n")
    fake_tree.git(root, "add", "notes.txt")
    fake_tree.git(root, "commit", "-q", "-m", "second")
    monkeypatch.chdir(root)
    return root


def commit(root: Path, message: str = "change") -> None:
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", message)


def planned(capsys, *args: str) -> list[str] | None:
    """The images a dry run plans, from its JSON report; None if it planned nothing."""
    code = mi.main([*args, "--build", "-n", "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0
    document = json.loads(out)
    return [image["name"] for image in document["images"]] or None


def closure(*images: str) -> list[str]:
    return mi.ordered_images_to_process(list(images), GRAPH)


# --- --changed_since selects -------------------------------------------------


def test_a_changed_dockerfile_selects_its_image_and_dependents(world, capsys):
    path = world / DOCKER / "cmake-python" / "Dockerfile"
    path.write_text(path.read_text() + "# a comment\n")
    commit(world)
    assert planned(capsys, "--changed_since", "HEAD~1") == closure("cmake-python")


def test_a_changed_file_in_the_context_selects_the_image(world, capsys):
    (world / DOCKER / "vulkan" / "stamp").write_text("vulkan 2\n")
    commit(world)
    assert planned(capsys, "--changed-since", "HEAD~1") == closure("vulkan")


def test_a_deleted_file_in_the_context_selects_the_image(world, capsys):
    fake_tree.git(world, "rm", "-q", f"{DOCKER}/util/stamp")
    commit(world)
    assert planned(capsys, "--changed_since", "HEAD~1") == closure("util")


def test_uncommitted_and_untracked_changes_count(world, capsys):
    (world / DOCKER / "bazel-python" / "stamp").write_text("edited, not committed\n")
    (world / DOCKER / "rbe-toolchain" / "new-file").write_text("untracked\n")
    assert planned(capsys, "--changed_since", "HEAD") == closure("bazel-python", "rbe-toolchain")


def test_a_renamed_image_folder_selects_the_image_it_was(world, capsys):
    fake_tree.git(world, "mv", f"{DOCKER}/cmake-android", f"{DOCKER}/cmake-android-old")
    commit(world)
    assert mi.changed_images(world, "HEAD~1", GRAPH) == ["cmake-android"]
    assert mi.main(["--changed_since", "HEAD~1", "--build"]) == 1  # and its Dockerfile is gone
    assert capsys.readouterr().err.startswith(f"{DOCKER}/cmake-android/Dockerfile not found")


def test_changed_since_adds_to_the_images_named(world, capsys):
    (world / DOCKER / "swiftshader" / "stamp").write_text("swiftshader 2\n")
    expected = closure("cmake-android", "swiftshader")
    assert planned(capsys, "--image", "cmake-android", "--changed_since", "HEAD") == expected


def test_nothing_changed_is_not_an_error(world, capsys):
    assert mi.main(["--changed_since", "HEAD~1", "--build", "--push"]) == 0
    assert capsys.readouterr().out == "No image changed since HEAD~1\n"
    (world / "notes.txt").write_text("outside any build context\n")
    assert mi.main(["--changed_since", "HEAD", "--check"]) == 0
    assert capsys.readouterr().out == "No image changed since HEAD\n"


def test_a_revision_git_does_not_know_is_a_usage_error(world, capsys):
    assert mi.main(["--changed_since", "no-such-branch", "--build"]) == 2
    assert capsys.readouterr().err == (
        f"manage_images.py: error: --changed_since: git knows no revision 'no-such-branch' in {world}; "
        "fetch it or fix the name\n"
    )


def test_changed_since_is_one_diff_per_run_not_one_per_image(world, monkeypatch):
    calls: list[tuple[str, ...]] = []
    real = mi.capture_bytes

    def counting(argv, cwd=None, env=None, timeout=None, each=None, stdin=None):
        calls.append(tuple(argv))
        return real(argv, cwd, env, timeout, each, stdin)

    monkeypatch.setattr(mi, "capture_bytes", counting)
    for image in GRAPH:
        (world / DOCKER / image / "stamp").write_text(f"{image} 2\n")
    assert mi.main(["--changed_since", "HEAD", "--graph"]) == 0
    diff = ("diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "--no-color", "-z")
    assert [argv for argv in calls if "diff" in argv] == [
        mi.git_argv(world, *diff, "HEAD", "--", f"{DOCKER}/")
    ]
    assert len(calls) <= 4


def test_images_in_paths():
    paths = [
        f"{DOCKER}/cmake/Dockerfile",
        f"{DOCKER}/cmake/sub/file",
        f"{DOCKER}/prod_digests.txt",
        f"{DOCKER}/not-an-image/Dockerfile",
        f"{DOCKER}/manage_images.py",
        "elsewhere/build_tools/docker/util/Dockerfile",
        f"{DOCKER}/util/x",
    ]
    assert mi.images_in_paths(paths, GRAPH) == ["cmake", "util"]


# --- --check --changed_since ----------------------------------------------------


def test_check_finds_an_image_edited_but_not_re_pinned(world, capsys):
    (world / DOCKER / "cmake-python-nvidia" / "stamp").write_text("edited\n")
    commit(world)
    assert mi.main(["--check", "--images", "all", "--changed_since", "HEAD~1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{DOCKER}/cmake-python-nvidia/Dockerfile:1: cmake-python-nvidia changed since HEAD~1 but is still "
        f"pinned to {P}; run manage_images.py --image cmake-python-nvidia --build --push --update_references",
        f"Checked {len(GRAPH)} images: 1 problem found.",
    ]


def test_check_is_quiet_when_the_pin_moved_too_and_names_dependents_left_behind(world, capsys):
    (world / DOCKER / "cmake-python-vulkan" / "stamp").write_text("edited and re-pinned\n")
    prod = world / DOCKER / "prod_digests.txt"
    prod.write_text(prod.read_text().replace(f"/cmake-python-vulkan@{P}", f"/cmake-python-vulkan@{NEW}"))
    # Re-pinning rewrites the children's FROM lines: they changed too.
    assert mi.main(["--only_references", "--image", "cmake-python-vulkan"]) == 0
    commit(world)
    capsys.readouterr()
    assert mi.main(["--check", "--images", "all", "--changed_since", "HEAD~1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split(":", 1)[0] for line in out[:-1]) == [
        f"{DOCKER}/cmake-python-nvidia/Dockerfile",
        f"{DOCKER}/cmake-python-swiftshader/Dockerfile",
    ]
    assert all(" changed since HEAD~1 but is still pinned to " in line for line in out[:-1])


# --- --json ----------------------------------------------------------------------


def test_json_of_a_successful_run(tree, standin, tmp_path):
    standin.set(repo_digests=all_digests())
    report = tmp_path / "report.json"
    argv = [
        "--image",
        "cmake-python-nvidia",
        "--image",
        "cmake-python",
        "--update_references",
        "--json",
        str(report),
    ]
    assert mi.main(argv) == 0
    document = json.loads(report.read_text())
    assert {
        key: document[key]
        for key in ("schema", "tool", "version", "mode", "registry", "tag", "steps", "dry_run")
    } == {
        "schema": 1,
        "tool": "manage_images.py",
        "version": mi.__version__,
        "mode": "steps",
        "registry": REGISTRY,
        "tag": "latest",
        "steps": ["update_references"],
        "dry_run": False,
    }
    assert document["command"] == argv
    names = [image["name"] for image in document["images"]]
    assert names == closure("cmake-python-nvidia", "cmake-python")
    first = document["images"][0]
    assert first["name"] == "cmake-python"
    assert first["result"] == "done"
    assert first["digest"] == {"old": D1, "new": NEW}
    assert first["files"] == [f"{DOCKER}/prod_digests.txt", "ci/build.sh"]
    assert first["exit_code"] is None and first["error"] is None
    assert isinstance(first["seconds"], float)
    assert document["findings"] == [] and document["exit_code"] == 0 and document["error"] is None
    assert document["wall_seconds"] >= 0


def test_json_of_a_failing_build(tree, standin, tmp_path):
    standin.set(fail={"build": 7})
    report = tmp_path / "report.json"
    assert mi.main(["--image", "cmake-python", "--build", "--json", str(report)]) == 7
    document = json.loads(report.read_text())
    assert document["exit_code"] == 7
    assert unlabelled(document["error"]) == (
        f"Command failed with exit code 7: `docker build --tag {REGISTRY}/cmake-python:latest "
        f"{DOCKER}/cmake-python`"
    )
    results = {image["name"]: image for image in document["images"]}
    assert results["cmake-python"]["result"] == "failed"
    assert results["cmake-python"]["exit_code"] == 7
    assert {image["result"] for name, image in results.items() if name != "cmake-python"} == {"skipped"}


def test_json_of_a_dry_run_on_standard_output(tree, standin, capsys):
    standin.set(repo_digests=all_digests())
    assert mi.main(["--image", "cmake-python-nvidia", "--update_references", "-n", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    document = json.loads(out)  # standard output holds the document alone
    assert "Summary (dry run" in err
    assert document["dry_run"] is True
    assert [(image["name"], image["result"]) for image in document["images"]] == [
        ("cmake-python-nvidia", "planned")
    ]


def test_json_of_check_lists_each_finding(world, tmp_path, capsys):
    (world / DOCKER / "util" / "stamp").write_text("edited\n")
    (world / "ci.txt").write_text(f"{REGISTRY}/util@{NEW}\n")
    commit(world)
    report = tmp_path / "report.json"
    assert mi.main(["--check", "--images", "all", "--changed_since", "HEAD~1", "--json", str(report)]) == 1
    document = json.loads(report.read_text())
    assert (
        document["mode"] == "check" and document["changed_since"] == "HEAD~1" and document["exit_code"] == 1
    )
    assert document["findings"] == [
        {
            "path": "ci.txt",
            "line": 1,
            "kind": "stale",
            "message": f"{REGISTRY}/util is pinned to sha256:{'f' * 12}, but {DOCKER}/prod_digests.txt says {P[:19]}",
        },
        {
            "path": f"{DOCKER}/util/Dockerfile",
            "line": 1,
            "kind": "not-re-pinned",
            "message": f"util changed since HEAD~1 but is still pinned to {P}; run manage_images.py --image util "
            "--build --push --update_references",
        },
    ]


def test_json_of_a_usage_error_after_parsing(world, tmp_path):
    report = tmp_path / "report.json"
    assert mi.main(["--changed_since", "nope", "--check", "--json", str(report)]) == 2
    document = json.loads(report.read_text())
    assert document["exit_code"] == 2 and "git knows no revision 'nope'" in document["error"]
