"""Unit tests: the pure core, and main() in-process on temporary git repositories.

A stand-in `docker` on PATH records the commands; the real engine is in
test_e2e.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_tree
import manage_images as mi
from helpers import (
    after_engine_questions,
    D1,
    D2,
    D3,
    NEW,
    ORIGINAL_GRAPH,
    REGISTRY,
    WORKSPACE,
    files,
    ref,
    rewrite,
    unlabelled,
    usage_error,
    without_label,
    write,
)

GRAPH = mi.IMAGES_TO_DEPENDENCIES
# --- The graph ---------------------------------------------------------------

ORDERS = [
    (
        ["cmake"],
        "cmake swiftshader bazel-tensorflow-swiftshader cmake-python cmake-python-vulkan "
        "cmake-python-swiftshader cmake-python-nvidia cmake-android",
    ),
    (
        ["vulkan"],
        "vulkan rbe-toolchain cmake-python-vulkan cmake-python-swiftshader cmake-python-nvidia "
        "bazel-tensorflow-vulkan bazel-tensorflow-swiftshader bazel-tensorflow-nvidia",
    ),
    (
        sorted(ORIGINAL_GRAPH),
        "base util cmake swiftshader cmake-python cmake-android bazel bazel-python "
        "bazel-tensorflow vulkan rbe-toolchain cmake-python-vulkan cmake-python-swiftshader "
        "cmake-python-nvidia bazel-tensorflow-vulkan bazel-tensorflow-swiftshader "
        "bazel-tensorflow-nvidia",
    ),
    (
        ["cmake", "bazel"],
        "cmake swiftshader cmake-python cmake-python-vulkan cmake-python-swiftshader "
        "cmake-python-nvidia cmake-android bazel bazel-python bazel-tensorflow "
        "bazel-tensorflow-vulkan bazel-tensorflow-swiftshader bazel-tensorflow-nvidia",
    ),
]


@pytest.mark.parametrize(("images", "expected"), ORDERS)
def test_order_matches_the_original(images, expected):
    # The original's orders on the original's graph (frozen in helpers).
    assert mi.ordered_images_to_process(images, ORIGINAL_GRAPH) == expected.split()


def descendants(image: str) -> set[str]:
    found = {image}
    changed = True
    while changed:
        changed = False
        for child, parents in GRAPH.items():
            if child not in found and found.intersection(parents):
                found.add(child)
                changed = True
    return found


@given(st.lists(st.sampled_from(sorted(GRAPH)), min_size=1, max_size=6))
def test_any_selection_is_its_closure_in_dependency_order(images):
    order = mi.ordered_images_to_process(images, GRAPH)
    assert len(order) == len(set(order))
    assert set(order) == set().union(*(descendants(image) for image in images))
    for position, image in enumerate(order):
        for parent in GRAPH[image]:
            if parent in order:
                assert order.index(parent) < position


def test_graph_is_valid():
    mi.validate_graph(GRAPH)


def test_graph_with_a_cycle_names_it():
    with pytest.raises(mi.ManageImagesError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        mi.validate_graph({"a": ("b",), "b": ("a",)})


def test_graph_with_an_unknown_dependency_names_it():
    with pytest.raises(mi.ManageImagesError, match="a depends on nope, which is not an image"):
        mi.validate_graph({"a": ("nope",)})


# --- Matching and rewriting ----------------------------------------------------


REWRITE_TABLE = [
    # (input, expected) for rewriting `cmake` to NEW.
    (ref("cmake"), ref("cmake", NEW)),
    (b"FROM " + ref("cmake") + b" AS final\n", b"FROM " + ref("cmake", NEW) + b" AS final\n"),
    (ref("cmake-python"), ref("cmake-python")),
    (ref("cmake", registry="mirror.gcr.io/iree-oss"), ref("cmake", registry="mirror.gcr.io/iree-oss")),
    (ref("cmake", registry="gcr.io/iree-oss-staging"), ref("cmake", registry="gcr.io/iree-oss-staging")),
    (ref("cmake", registry="x/gcr.io/iree-oss"), ref("cmake", registry="x/gcr.io/iree-oss")),
    (b"docker://" + ref("cmake"), b"docker://" + ref("cmake", NEW)),
    (ref("cmake", "sha256:" + "A" * 64), ref("cmake", "sha256:" + "A" * 64)),
    (ref("cmake", "sha256:" + "1" * 63), ref("cmake", "sha256:" + "1" * 63)),
    (ref("cmake", "sha256:" + "1" * 65), ref("cmake", "sha256:" + "1" * 65)),
    (b"a\r\n" + ref("cmake") + b"\r\nb", b"a\r\n" + ref("cmake", NEW) + b"\r\nb"),
    (b"\xff\xfe " + ref("cmake") + b" \x80", b"\xff\xfe " + ref("cmake", NEW) + b" \x80"),
    (ref("cmake") + b"," + ref("cmake", D2), ref("cmake", NEW) + b"," + ref("cmake", NEW)),
    (b'"' + ref("cmake") + b'"', b'"' + ref("cmake", NEW) + b'"'),
    # A tagged pin: only the digest changes, the tag is kept byte for byte.
    (ref("cmake:prod"), ref("cmake:prod", NEW)),
    (b"run " + ref("cmake:Prod_1.x-y") + b" true", b"run " + ref("cmake:Prod_1.x-y", NEW) + b" true"),
    (ref("cmake-python:prod"), ref("cmake-python:prod")),
    (ref("cmake:prod", "sha256:" + "1" * 63), ref("cmake:prod", "sha256:" + "1" * 63)),
    # Unpinned references are never touched.
    (
        b"run " + ref("cmake")[: -len(D1) - 1] + b":latest true",
        b"run " + ref("cmake")[: -len(D1) - 1] + b":latest true",
    ),
    (b"run " + ref("cmake")[: -len(D1) - 1] + b" true", b"run " + ref("cmake")[: -len(D1) - 1] + b" true"),
]


@pytest.mark.parametrize(("data", "expected"), REWRITE_TABLE)
def test_rewrite_references(data, expected):
    assert rewrite(data, REGISTRY, {"cmake": NEW}) == expected


def test_rewrite_refuses_a_malformed_digest():
    with pytest.raises(mi.ManageImagesError, match="refusing the digest"):
        rewrite(ref("cmake"), REGISTRY, {"cmake": "sha256:abc"})


def test_registry_with_a_port_is_matched_literally():
    registry = "127.0.0.1:5000/iree-oss"
    data = ref("base", registry=registry) + b" " + ref("base", registry="127.0.0.1:50001/iree-oss")
    assert rewrite(data, registry, {"base": NEW}) == (
        ref("base", NEW, registry) + b" " + ref("base", registry="127.0.0.1:50001/iree-oss")
    )


def test_workspace_rewrite_touches_only_the_rbe_rule_digest():
    new, rules = mi.rewrite_workspace(WORKSPACE, "gcr.io/iree-oss/rbe-toolchain", NEW)
    assert rules == 1
    assert new == WORKSPACE.replace(b'digest = "' + D1.encode(), b'digest = "' + NEW.encode())
    assert D2.encode() in new and D3.encode() in new


def test_workspace_rule_for_another_registry_is_left_alone():
    assert mi.rewrite_workspace(WORKSPACE, "127.0.0.1:5000/iree-oss/rbe-toolchain", NEW) == (WORKSPACE, 0)


def test_parse_rbe_rules_reads_fields_and_line():
    (rule,) = mi.parse_rbe_rules(WORKSPACE)
    assert rule.line == 3
    assert rule.digest == D1
    assert rule.digest_line == 6
    assert rule.url == "gcr.io/iree-oss/rbe-toolchain"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b"u@" + D1.encode() + b"\n"),
        (b"a@" + D2.encode() + b"\n", b"a@" + D2.encode() + b"\nu@" + D1.encode() + b"\n"),
        (b"a@" + D2.encode(), b"a@" + D2.encode() + b"\nu@" + D1.encode() + b"\n"),
        (b"a@" + D2.encode() + b"\r\n", b"a@" + D2.encode() + b"\r\nu@" + D1.encode() + b"\r\n"),
    ],
)
def test_append_prod_digest_keeps_line_ends(data, expected):
    assert mi.append_prod_digest(data, "u", D1) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"gcr.io/iree-oss/base", "malformed line"),
        (ref("base", "sha256:abc"), "malformed line"),
        (b"gcr.io/iree-oss/base@" + ("sha256:" + "A" * 64).encode(), "malformed line"),
        (b"# comment", "malformed line"),
    ],
)
def test_parse_prod_digests_reports_path_and_line(line, message):
    data = ref("util") + b"\n" + line + b"\n"
    with pytest.raises(mi.ManageImagesError, match=f"^prod.txt:2: {message}"):
        mi.usable_prod_digests(data, "prod.txt")


@pytest.mark.parametrize(
    ("tags", "url", "expected"),
    [
        (
            [["gcr.io/iree-oss/cmake-python:latest"], ["gcr.io/iree-oss/cmake:latest"]],
            "gcr.io/iree-oss/cmake",
            1,
        ),
        ([["gcr.io/iree-oss/cmake:prod"]], "gcr.io/iree-oss/cmake", None),
        ([["mirror.gcr.io/iree-oss/cmake:latest"]], "gcr.io/iree-oss/cmake", None),
        ([], "gcr.io/iree-oss/cmake", None),
        ([["user/base:latest"]], "docker.io/user/base", 0),
        ([["base:latest", "base:prod"]], "docker.io/library/base", 0),
    ],
)
def test_inspected_among_finds_the_document_of_the_tag(tags, url, expected):
    documents = [{"Id": f"sha256:{n}", "RepoTags": names} for n, names in enumerate(tags)]
    output = "\n".join(["not json", "[]", *map(json.dumps, documents)])
    found = mi.inspected_among(output, url, "latest")
    assert found == (None if expected is None else documents[expected])


@pytest.mark.parametrize(
    ("registry", "google"),
    [
        ("gcr.io/iree-oss", True),
        ("us.gcr.io/x", True),
        ("us-docker.pkg.dev/p/r", True),
        ("127.0.0.1:5000/iree-oss", False),
        ("ghcr.io/iree-org", False),
        ("gcr.io.evil.com/x", False),
    ],
)
def test_google_registries(registry, google):
    assert mi.is_google_registry(registry) is google


def test_argv_builders():
    url = "gcr.io/iree-oss/cmake"
    assert mi.pull_argv(url, "prod") == ("docker", "pull", f"{url}:prod")
    assert mi.build_argv(mi.BuildPlan(url, "latest", "build_tools/docker/cmake")) == (
        "docker",
        "build",
        "--tag",
        f"{url}:latest",
        "build_tools/docker/cmake",
    )
    assert mi.push_argv(url, "latest") == ("docker", "push", f"{url}:latest")
    assert mi.gcloud_argv("gcr.io/iree-oss") == ("gcloud", "auth", "configure-docker")
    assert mi.gcloud_argv("us-docker.pkg.dev/p/r") == (
        "gcloud",
        "auth",
        "configure-docker",
        "us-docker.pkg.dev",
    )


# --- main() on temporary repositories ----------------------------------------


def test_update_references_rewrites_tracked_files_only(tree, standin, capsys):
    standin.set(repo_digests={"gcr.io/iree-oss/cmake:latest": ["gcr.io/iree-oss/cmake@" + NEW]})
    before = files(tree)

    assert mi.main(["--image", "cmake", "--update_references"]) == 1  # cmake-python has no digest

    after = files(tree)
    assert (
        after["build_tools/docker/cmake-python/Dockerfile"]
        == b"FROM " + ref("cmake", NEW) + b" AS final\r\nRUN true"
    )
    assert (
        after["ci/build.sh"]
        == b"docker run \\\n  " + ref("cmake-python") + b" \\\n  " + ref("cmake", NEW) + b"\n"
    )
    assert (
        after["build_tools/docker/prod_digests.txt"]
        == ref("cmake", NEW) + b"\n" + ref("cmake-python") + b"\n"
    )
    assert after["untracked.txt"] == before["untracked.txt"]
    assert after["WORKSPACE"] == before["WORKSPACE"]
    assert stat.S_IMODE((tree / "ci/build.sh").stat().st_mode) == 0o755
    out, err = capsys.readouterr()
    assert "Updating references to gcr.io/iree-oss/cmake\n" in out
    assert "Updating references in 3 files: [" in out
    assert err == (
        "the engine holds no gcr.io/iree-oss/swiftshader:latest, so there is no digest to pin: "
        "build or pull it first\n"
    )


def test_update_references_of_the_rbe_toolchain_updates_workspace_and_appends_prod_digests(
    tree, standin, capsys
):
    standin.set(
        repo_digests={
            "gcr.io/iree-oss/rbe-toolchain:prod": [
                "gcr.io/iree-oss/other@" + D2,
                "gcr.io/iree-oss/rbe-toolchain@" + NEW,
            ]
        }
    )

    assert mi.main(["--image", "rbe-toolchain", "--update_references", "--tag", "prod"]) == 0

    assert (tree / "WORKSPACE").read_bytes() == WORKSPACE.replace(D1.encode(), NEW.encode())
    assert (tree / "build_tools/docker/prod_digests.txt").read_bytes() == (
        ref("cmake") + b"\n" + ref("cmake-python") + b"\n" + ref("rbe-toolchain", NEW) + b"\n"
    )
    out = capsys.readouterr().out
    assert "Updating WORKSPACE file for rbe-toolchain\n" in out
    assert "Updating references in 1 file: ['build_tools/docker/prod_digests.txt']\n" in out


def test_a_tracked_symlink_is_not_followed(tree, standin):
    target = tree.parent / "outside.txt"
    target.write_bytes(ref("util"))
    os.symlink(target, tree / "link.txt")
    fake_tree.git(tree, "add", "link.txt")
    standin.set(repo_digests={f"gcr.io/iree-oss/{i}:latest": [f"gcr.io/iree-oss/{i}@" + NEW] for i in GRAPH})
    assert mi.main(["--image", "util", "--update_references"]) == 0
    assert target.read_bytes() == ref("util")
    assert os.readlink(tree / "link.txt") == str(target)
    # git grep never lists a symlink's target; were it listed, the tool would still refuse it.
    assert mi.path_problem(tree, "link.txt") == (
        "link.txt is a symbolic link, and the tool never reads or writes through one"
    )


def test_dry_run_changes_no_file_and_runs_only_read_only_commands(tree, standin, capsys):
    standin.set(repo_digests={"gcr.io/iree-oss/cmake:latest": ["gcr.io/iree-oss/cmake@" + NEW]})
    before = files(tree)

    code = mi.main(
        [
            "--image",
            "cmake",
            "--pull",
            "--build",
            "--push",
            "--update_references",
            "-n",
            "--registry",
            "127.0.0.1:5000/iree-oss",
        ]
    )

    assert code == 0
    assert files(tree) == before
    # The engine is asked which builder it has: read-only.
    assert {tuple(argv[:3]) for argv in standin.commands()} <= {
        ("docker", "image", "inspect"),
        ("docker", "version", "--format"),
        ("docker", "info", "--format"),
    }
    out = unlabelled(capsys.readouterr().out)
    assert (
        "Running: `docker build --tag 127.0.0.1:5000/iree-oss/cmake:latest build_tools/docker/cmake`" in out
    )


def test_dry_run_of_update_references_prints_the_diff(tree, standin, capsys):
    standin.set(repo_digests={"gcr.io/iree-oss/cmake-python:latest": ["gcr.io/iree-oss/cmake-python@" + NEW]})
    before = files(tree)

    assert mi.main(["--image", "cmake-python", "--update_references", "--dry-run"]) == 0

    assert files(tree) == before
    out = capsys.readouterr().out
    assert "--- a/ci/build.sh\n+++ b/ci/build.sh\n" in out
    assert "+  " + ref("cmake-python", NEW).decode() + " \\\n" in out


def test_a_docker_hub_image_is_pinned_to_its_shortened_repo_digest(tree, standin):
    # Docker lists a Docker Hub image's RepoDigests as `user/NAME@...`; the
    # registry serves it as docker.io/user/NAME.
    leaf = "cmake-python-nvidia"
    standin.set(
        repo_digests={f"docker.io/user/{leaf}:latest": [f"user/{leaf}@" + NEW]},
        manifests={f"docker.io/user/{leaf}@" + NEW: NEW},
    )
    assert mi.main(["--image", leaf, "--update_references", "--registry", "docker.io/user"]) == 0
    prod = (tree / "build_tools" / "docker" / "prod_digests.txt").read_text()
    assert f"docker.io/user/{leaf}@{NEW}\n" in prod


def test_commands_run_in_order_from_a_subdirectory(tree, standin, monkeypatch):
    monkeypatch.chdir(tree / "ci")
    standin.set(
        repo_digests={
            f"127.0.0.1:5000/iree-oss/{i}:latest": [f"127.0.0.1:5000/iree-oss/{i}@" + NEW] for i in GRAPH
        }
    )
    assert (
        mi.main(
            [
                "--image",
                "cmake-android",
                "--pull",
                "--build",
                "--push",
                "--update_references",
                "--registry",
                "127.0.0.1:5000/iree-oss",
            ]
        )
        == 0
    )
    url = "127.0.0.1:5000/iree-oss/cmake-android"
    # The registry gives the pushed digest: the engine is not asked for it (#30).
    assert [without_label(argv) for argv in after_engine_questions(standin.commands())] == [
        ["docker", "pull", f"{url}:latest"],
        ["docker", "build", "--tag", f"{url}:latest", "build_tools/docker/cmake-android"],
        ["docker", "push", f"{url}:latest"],
    ]
    assert (tree / "build_tools/docker/prod_digests.txt").read_bytes().endswith(f"{url}@{NEW}\n".encode())


def test_a_failing_command_passes_on_its_exit_code(tree, standin, capsys):
    standin.set(fail={"build": 7})
    code = mi.main(["--image", "cmake", "--build", "--push", "--registry", "127.0.0.1:5000/iree-oss"])
    assert code == 7
    assert [argv[1] for argv in after_engine_questions(standin.commands())] == ["build"]
    err = capsys.readouterr().err
    # The tree pins gcr.io/iree-oss: another --registry is used as asked, with one line first.
    assert unlabelled(err) == (
        "warning: --registry 127.0.0.1:5000/iree-oss is not the registry build_tools/docker/prod_digests.txt "
        "names (gcr.io/iree-oss): the tree's references to gcr.io/iree-oss are left alone; leave --registry "
        "out to work on them\n"
        "Command failed with exit code 7: "
        "`docker build --tag 127.0.0.1:5000/iree-oss/cmake:latest build_tools/docker/cmake`\n"
    )


def test_push_to_gcr_without_gcloud(tree, standin, capsys):
    standin.remove("gcloud")
    assert mi.main(["--image", "util", "--push"]) == 1
    assert (
        capsys.readouterr().err
        == "gcloud not found. See https://cloud.google.com/sdk/install for installation.\n"
    )
    assert after_engine_questions(standin.commands()) == []


def test_push_to_gcr_configures_docker_once(tree, standin):
    assert mi.main(["--image", "vulkan", "--push"]) == 0
    commands = standin.commands()
    assert commands[2] == ["gcloud", "auth", "configure-docker"]
    assert [argv[:2] for argv in commands[3:]] == [["docker", "push"]] * 8


def test_push_to_another_registry_needs_no_gcloud(tree, standin):
    standin.remove("gcloud")
    assert mi.main(["--image", "util", "--push", "--registry", "ghcr.io/iree-org"]) == 0


def test_no_step_prints_the_plan_and_runs_nothing(tree, standin, capsys):
    assert mi.main(["--image", "cmake-android"]) == 0
    assert standin.commands() == []
    # cmake-android has no dependents, so no line says it has.
    assert capsys.readouterr().out == (
        "Will process: ['cmake-android']\n"
        "No step requested (--pull, --build, --push, --update_references): nothing done.\n"
    )


# --- Bad input and faults --------------------------------------------------------


def test_unknown_image_is_one_usage_line_with_the_names_it_may_mean(capsys):
    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            mi.main(list(argv), graph=ORIGINAL_GRAPH)  # frozen: the names it may mean stay these
        assert exit_.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        return err

    prog = mi.build_parser().prog
    assert error("--image", "cmak") == f"{prog}: error: no image named 'cmak'; did you mean cmake?\n"
    assert error("--image", "bazel-tf", "--build") == (
        f"{prog}: error: no image named 'bazel-tf'; did you mean bazel, bazel-python or bazel-tensorflow?\n"
    )
    # Nothing close: every name, still on one line.
    assert error("--image", "zzz") == (
        f"{prog}: error: no image named 'zzz'; the images are {', '.join(sorted(ORIGINAL_GRAPH))}, or all\n"
    )


def test_missing_image_is_argparse_required_error(capsys):
    assert "error: the following arguments are required: --images/--image" in usage_error(["--build"], capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "has space"], "--tag 'has space' is not a valid Docker tag"),
        (["--tag", "x" * 129], "is not a valid Docker tag"),
        (["--tag", ".hidden"], "is not a valid Docker tag"),
        (["--registry", "gcr.io/Iree-OSS"], "--registry 'gcr.io/Iree-OSS' is not a valid registry"),
        (["--registry", "https://gcr.io/x"], "is not a valid registry"),
        (["--registry", "gcr.io//x"], "is not a valid registry"),
    ],
)
def test_bad_tag_or_registry_is_a_usage_error(args, message, capsys):
    assert message in usage_error(["--image", "util", *args], capsys)


def test_outside_a_git_work_tree(tmp_path, standin, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert mi.main(["--image", "util", "--build"]) == 1
    assert capsys.readouterr().err == (
        f"{tmp_path} is not inside a git work tree: run from the repository or pass --repo_root\n"
    )


def test_docker_not_installed(tree, standin, capsys):
    standin.remove("docker")
    assert mi.main(["--image", "util", "--build"]) == 1
    assert capsys.readouterr().err == (
        "`docker` not found on PATH: install Docker (https://docs.docker.com/engine/install/) and try again\n"
    )


def test_git_not_installed(tree, standin, capsys):
    (standin.tools / "git").unlink()
    assert mi.main(["--image", "util", "--build"]) == 1
    assert capsys.readouterr().err == "`git` not found on PATH: install git and try again\n"


def test_engine_not_running(tree, standin, capsys):
    standin.set(server_down=True)
    assert mi.main(["--image", "util", "--build"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cannot reach the Docker engine: start it")
    assert "Is the docker daemon running?" in err
    # Both engine questions are asked at once; nothing runs after them.
    assert after_engine_questions(standin.commands()) == []


def test_missing_dockerfile_fails_before_any_command(tree, standin, capsys):
    (tree / "build_tools/docker/cmake-android/Dockerfile").unlink()
    assert mi.main(["--image", "cmake", "--build"]) == 1
    assert capsys.readouterr().err == (
        "build_tools/docker/cmake-android/Dockerfile not found: the build context of cmake-android "
        "needs one; add it or fix IMAGES_TO_DEPENDENCIES\n"
    )
    assert standin.commands() == []


def test_a_malformed_digest_from_docker_is_refused(tree, standin, capsys):
    before = files(tree)
    standin.set(
        repo_digests={
            "gcr.io/iree-oss/cmake-python-nvidia:latest": [ref("cmake-python-nvidia", "sha256:ABC").decode()]
        }
    )
    assert mi.main(["--image", "cmake-python-nvidia", "--update_references"]) == 1
    assert capsys.readouterr().err.startswith(
        "refusing the digest 'sha256:ABC' for gcr.io/iree-oss/cmake-python-nvidia"
    )
    assert files(tree) == before


def test_a_malformed_prod_digests_line_stops_everything(tree, standin, capsys):
    write(tree, "build_tools/docker/prod_digests.txt", ref("cmake") + b"\nnot a line\n")
    before = files(tree)
    assert mi.main(["--image", "cmake", "--build", "--update_references"]) == 1
    assert capsys.readouterr().err.startswith(
        "build_tools/docker/prod_digests.txt:2: malformed line 'not a line'"
    )
    assert standin.commands() == []
    assert files(tree) == before


def test_a_read_only_file_leaves_every_file_of_the_image_unchanged(tree, standin, capsys):
    standin.set(repo_digests={"gcr.io/iree-oss/cmake:latest": ["gcr.io/iree-oss/cmake@" + NEW]})
    (tree / "ci/build.sh").chmod(0o555)
    before = files(tree)
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert capsys.readouterr().err == (
        "cannot write ci/build.sh: it is read-only; make it writable and run again "
        "(no file was changed for this image)\n"
    )
    assert files(tree) == before


def test_rerun_is_idempotent(tree, standin):
    standin.set(repo_digests={f"gcr.io/iree-oss/{i}:latest": [f"gcr.io/iree-oss/{i}@" + NEW] for i in GRAPH})
    assert mi.main(["--images", "all", "--update_references"]) == 0
    once = files(tree)
    assert mi.main(["--images", "all", "--update_references"]) == 0
    assert files(tree) == once
    assert not [name for name in once if name.endswith(".tmp")]


# --- Property: a rewrite changes exactly the well-formed pins of one image, tagged or not, never an unpinned reference --

NAMES = ["cmake", "cmake-python", "cmake-python-vulkan", "base", "cmakex"]
REGISTRIES = [REGISTRY, "mirror.gcr.io/iree-oss", "gcr.io/iree-oss-staging", "gcr.io/iree-ossx"]
hexdigests = st.text("0123456789abcdef", min_size=64, max_size=64)
bad_digests = st.one_of(
    st.text("0123456789abcdef", min_size=1, max_size=63),
    st.text("0123456789ABCDEF", min_size=64, max_size=64).filter(lambda d: d != d.lower()),
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
noise = st.one_of(
    st.binary(max_size=20).filter(
        lambda b: (
            not b[-1:].isalnum() and not b[:1].isalnum() and b[-1:] not in b"._/-" and b[:1] not in b"._/-"
        )
    ),
    st.sampled_from([b"\n", b"\r\n", b" ", b"\xff", b"FROM ", b" AS final\r\n", b'"', b"=", b"\t"]),
)


@st.composite
def documents(draw):
    """Random bytes with references; returns the data and the expected rewrite."""
    parts_in, parts_out = [], []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["noise", "ref", "bad", "unpinned"]))
        if kind == "noise":
            chunk = draw(noise)
            parts_in.append(chunk)
            parts_out.append(chunk)
            continue
        name, registry = draw(st.sampled_from(NAMES)), draw(st.sampled_from(REGISTRIES))
        tag = draw(st.one_of(st.just(""), tags.map(lambda tag: f":{tag}")))  # all four forms
        if kind == "unpinned":
            chunk = f"{registry}/{name}{tag}".encode()
            parts_in += [chunk, b" "]
            parts_out += [chunk, b" "]
            continue
        digest = draw(hexdigests if kind == "ref" else bad_digests)
        chunk = f"{registry}/{name}{tag}@sha256:{digest}".encode()
        hit = kind == "ref" and name == "cmake" and registry == REGISTRY
        parts_in += [chunk, b" "]
        parts_out += [ref(f"cmake{tag}", NEW) if hit else chunk, b" "]
    return b"".join(parts_in), b"".join(parts_out)


@settings(max_examples=300, deadline=None)  # a loaded CI machine must not make it flaky
@given(documents())
def test_rewrite_changes_exactly_the_references_of_one_image(document):
    data, expected = document
    assert rewrite(data, REGISTRY, {"cmake": NEW}) == expected


@pytest.mark.parametrize(
    ("argv", "output", "registry", "hint"),
    [
        (
            ["docker", "push", "r/x:latest"],
            ['Get "http://127.0.0.1:5/v2/": dial tcp 127.0.0.1:5: connect: connection refused'],
            "127.0.0.1:5/iree-oss",
            "the registry 127.0.0.1:5 is unreachable: check that it is up and that --registry is right",
        ),
        (
            ["docker", "push", "r/x:latest"],
            ["unauthorized: authentication required"],
            "ghcr.io/org",
            "the registry ghcr.io refused the request (authentication): run `docker login ghcr.io` and try again",
        ),
        (
            ["docker", "pull", "r/x:latest"],
            ["denied: Permission denied"],
            "gcr.io/iree-oss",
            "the registry gcr.io refused the request (authentication): run `gcloud auth configure-docker` and try again",
        ),
        (
            ["docker", "build", "."],
            ["Cannot connect to the Docker daemon at unix:///var/run/docker.sock."],
            "gcr.io/x",
            "the Docker engine is not running: start it or point DOCKER_HOST at one",
        ),
        (
            ["docker", "build", "."],
            ["The command '/bin/sh -c exit 3' returned a non-zero code: 3"],
            "gcr.io/x",
            "",
        ),
        # BuildKit through buildx pushes from the build.
        (
            ["docker", "build", "--tag", "r/x:latest", "--push", "."],
            ["ERROR: failed to push r/x:latest: dial tcp 127.0.0.1:5: connect: connection refused"],
            "127.0.0.1:5/iree-oss",
            "the registry 127.0.0.1:5 is unreachable: check that it is up and that --registry is right",
        ),
        (
            ["docker", "build", "--tag", "r/x:latest", "."],
            ["dial tcp 127.0.0.1:5: connect: connection refused"],
            "127.0.0.1:5/iree-oss",
            "",
        ),
        # A step of a build that pushes failed: what it printed is not the registry's answer.
        (
            ["docker", "build", "--tag", "r/x:latest", "--push", "."],
            [
                "#7 0.231 /bin/sh: ./configure: Permission denied",
                'ERROR: failed to solve: process "/bin/sh -c ./configure" did not complete successfully: '
                "exit code: 126",
            ],
            "ghcr.io/org",
            "",
        ),
        (
            ["docker", "build", "--tag", "r/x:latest", "--push", "."],
            [
                "#8 1.02 curl: (7) Failed to connect to 10.0.0.1 port 80: Connection refused",
                'ERROR: failed to solve: process "/bin/sh -c curl -fO http://10.0.0.1/x" did not complete '
                "successfully: exit code: 7",
            ],
            "127.0.0.1:5/iree-oss",
            "",
        ),
        (
            ["docker", "build", "--tag", "r/x:latest", "--push", "."],
            ["ERROR: failed to solve: failed to push r/x:latest: unexpected status: 401 Unauthorized"],
            "ghcr.io/org",
            "the registry ghcr.io refused the request (authentication): run `docker login ghcr.io` and try again",
        ),
    ],
)
def test_diagnose_failed_docker_commands(argv, output, registry, hint):
    assert mi.diagnose(argv, output, registry) == hint


def test_help_documents_every_flag_and_alias(capsys):
    with pytest.raises(SystemExit) as exit:
        mi.main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    # Read from the parser (test_docs.py holds the front page and the manual to the same list).
    flags = [flag for action in mi.build_parser()._actions for flag in action.option_strings]
    assert "--update_references" in flags and "-j" in flags
    for flag in [flag for flag in flags if flag not in ("-h", "--help")]:
        assert f"{flag} " in text or f"{flag}," in text or f"{flag}\n" in text, flag


def test_jobs_must_be_positive(capsys):
    assert "--jobs must be at least 1, not 0" in usage_error(
        ["--image", "util", "--build", "-j", "0"], capsys
    )


def test_binary_files_are_skipped(tree, standin):
    binary = b"\x00\x01" + ref("util") + b"\x00"
    write(tree, "blob.bin", binary)
    fake_tree.git(tree, "add", "blob.bin")
    standin.set(repo_digests={f"gcr.io/iree-oss/{i}:latest": [f"gcr.io/iree-oss/{i}@" + NEW] for i in GRAPH})
    write(tree, "text.txt", ref("util"))
    fake_tree.git(tree, "add", "text.txt")
    assert mi.main(["--image", "util", "--update_references"]) == 0
    assert (tree / "text.txt").read_bytes() == ref("util", NEW)
    assert (tree / "blob.bin").read_bytes() == binary


def test_a_file_that_would_not_change_is_not_written(tree, standin):
    standin.set(repo_digests={f"gcr.io/iree-oss/{i}:latest": [f"gcr.io/iree-oss/{i}@" + NEW] for i in GRAPH})
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    inodes = {name: (tree / name).stat().st_ino for name in files(tree)}
    assert mi.main(["--image", "cmake", "--update_references"]) == 0
    assert {name: (tree / name).stat().st_ino for name in files(tree)} == inodes


class HandOverStream(io.StringIO):
    """A stream whose first write waits (bounded) for another thread to write:
    without the console's lock, that thread's line lands inside this one's."""

    def __init__(self) -> None:
        super().__init__()
        self.first = threading.Event()
        self.second_wrote = threading.Event()

    def write(self, text: str) -> int:
        if not self.first.is_set():
            self.first.set()
            written = super().write(text)
            self.second_wrote.wait(timeout=1)
            return written
        self.second_wrote.set()
        return super().write(text)


def test_console_writes_whole_lines_from_many_threads():
    out = HandOverStream()
    console = mi.Console(out)
    first = threading.Thread(target=console.line, args=("one\ntwo\nthree", "[a] "))
    first.start()
    assert out.first.wait(timeout=5)
    console.line("other", "[b] ")
    first.join(timeout=5)
    assert out.getvalue().splitlines() == ["[a] one", "[a] two", "[a] three", "[b] other"]


def test_console_may_print_from_a_signal_handler_while_it_prints():
    # A handler runs in the main thread between two bytecodes, possibly inside
    # Console.line: the lock must be reentrant or the tool hangs.
    class Reentrant(io.StringIO):
        nested = False

        def write(self, text: str) -> int:
            if not self.nested:
                self.nested = True
                console.line("from the handler")
            return super().write(text)

    out = Reentrant()
    console = mi.Console(out)
    thread = threading.Thread(target=console.line, args=("main",), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "Console.line deadlocked when re-entered"
    assert out.getvalue() == "from the handler\nmain\n"


def test_signal_handlers_are_restored_after_a_run(tree, standin):
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    standin.set(repo_digests={f"gcr.io/iree-oss/{i}:latest": [f"gcr.io/iree-oss/{i}@" + NEW] for i in GRAPH})
    assert mi.main(["--image", "cmake-python", "--build"]) == 0
    assert {number: signal.getsignal(number) for number in before} == before


def test_a_new_prod_digests_line_is_listed_among_the_files_updated(tree, standin, capsys):
    fake_tree.git(tree, "rm", "-q", "build_tools/docker/prod_digests.txt")
    fake_tree.git(tree, "commit", "-q", "-m", "no prod_digests.txt")
    standin.set(
        repo_digests={
            "gcr.io/iree-oss/cmake-python-nvidia:latest": ["gcr.io/iree-oss/cmake-python-nvidia@" + NEW]
        }
    )
    assert mi.main(["--image", "cmake-python-nvidia", "--update_references"]) == 0
    out = capsys.readouterr().out
    assert "Updating references in 1 file: ['build_tools/docker/prod_digests.txt']\n" in out
