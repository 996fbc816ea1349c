"""The repository's own image tree: a Dockerfile per image, the CI scripts and WORKSPACE
that pin them, prod_digests.txt. Nothing here can be built on a machine without
access to the outside registries, so these tests prove what can be proven:
the tree agrees with the graph and with itself.

The parsing here is deliberately independent of manage_images.py's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import manage_images as mi
from helpers import after_engine_questions, unlabelled
from standin import StandIn

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "build_tools" / "docker"
KOKORO = ROOT / "build_tools" / "kokoro" / "gcp_ubuntu"
GRAPH = mi.IMAGES_TO_DEPENDENCIES
REFERENCE = re.compile(r"gcr\.io/iree-oss/([a-z0-9-]+)(@sha256:[0-9a-f]{64}|[@:][^\s\"']*)?")
PINNED = re.compile(r"@sha256:[0-9a-f]{64}")


def prod_digests() -> dict[str, str]:
    digests = {}
    for line in (DOCKER / "prod_digests.txt").read_text().splitlines():
        url, digest = line.split("@")
        assert url.startswith("gcr.io/iree-oss/"), line
        digests[url.removeprefix("gcr.io/iree-oss/")] = digest
    return digests


def logical_lines(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("image", sorted(GRAPH))
def test_dockerfile_pulls_exactly_its_graph_parents_pinned_by_digest(image):
    dockerfile = DOCKER / image / "Dockerfile"
    lines = logical_lines(dockerfile)
    parents = set()
    for line in lines:
        for source in re.findall(r"^FROM\s+(\S+)|--from=(\S+)", line):
            source = source[0] or source[1]
            match = REFERENCE.fullmatch(source)
            if match:
                parents.add(match.group(1))
                assert PINNED.search(source), f"{image}: {source} is not pinned by digest"
            elif "/" in source or "@" in source:
                assert PINNED.search(source), f"{image}: external base {source} is not pinned by digest"
    assert parents == set(GRAPH[image])
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms[-1].endswith(" AS final"), image
    assert dockerfile.read_text().splitlines()[3].startswith(f"# {image}: ")


def test_prod_digests_lists_every_image_once():
    lines = (DOCKER / "prod_digests.txt").read_text().splitlines()
    assert len(lines) == len(GRAPH)
    assert sorted(prod_digests()) == sorted(GRAPH)
    assert all(re.fullmatch(r"gcr\.io/iree-oss/[a-z0-9-]+@sha256:[0-9a-f]{64}", line) for line in lines)


def tracked() -> list[Path]:
    names = subprocess.run(
        ("git", "-C", str(ROOT), "ls-files", "-z"), capture_output=True, text=True, check=True
    ).stdout.split("\0")
    return [ROOT / name for name in names if name and (ROOT / name).is_file()]


def test_every_digest_reference_in_the_tree_equals_prod_digests():
    expected = prod_digests()
    seen = set()
    for path in tracked():
        if path.parent.name == "tests" or path.suffix in (".py", ".md") or path.name == "prod_digests.txt":
            continue
        for name, suffix in REFERENCE.findall(path.read_text(errors="replace")):
            assert suffix == "@" + expected[name], f"{path.relative_to(ROOT)}: {name}{suffix}"
            seen.add(name)
    # rbe-toolchain is used by the WORKSPACE rule below; an image whose Dockerfile carries the
    # allow-unreferenced marker needs no use at all (README, "Deploy a new image").
    marked = {
        image for image in GRAPH if mi.ALLOW_UNREFERENCED in (DOCKER / image / "Dockerfile").read_text()
    }
    assert seen >= set(GRAPH) - {"rbe-toolchain"} - marked
    workspace = (ROOT / "WORKSPACE").read_text()
    rule = re.search(r"rbe_autoconfig\((.*?)\n\)", workspace, re.S).group(1)
    assert re.search(r'\n    digest = "(sha256:[0-9a-f]{64})"', rule).group(1) == expected["rbe-toolchain"]
    assert 'repository = "iree-oss/rbe-toolchain"' in rule
    others = re.findall(r'\n    digest = "(sha256:[0-9a-f]{64})"', workspace.replace(rule, ""))
    assert others and expected["rbe-toolchain"] not in others


def readme_ci_jobs() -> dict[str, str]:
    """The README's table of CI jobs: job folder -> image."""
    readme = (ROOT / "README.md").read_text()
    return dict(re.findall(r"^  \| `([a-z0-9/_-]+)` \| ([a-z0-9-]+)", readme, re.M))


def test_ci_scripts_are_executable_and_run_one_image_by_digest():
    scripts = sorted(KOKORO.rglob("build_kokoro.sh"))
    assert scripts
    jobs = {}
    for script in scripts:
        jobs[str(script.parent.relative_to(KOKORO))] = REFERENCE.findall(script.read_text())[0][0]
        assert os.access(script, os.X_OK), script
        images = REFERENCE.findall(script.read_text())
        assert len(images) == 1 and images[0][0] in GRAPH, script
        assert os.access(script.parent / "build.sh", os.X_OK), script
        assert f"{script.parent.relative_to(ROOT)}/build.sh" in script.read_text()
        assert ("--gpus all" in script.read_text()) == ("x86-turing" in str(script))
    assert jobs == readme_ci_jobs(), "README's table of CI jobs differs from build_tools/kokoro"


def test_the_readme_image_table_lists_every_image_of_the_graph():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| image | what it adds | built from |") :].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]  # below the header and its rule
    assert sorted(row.split(" | ")[0].removeprefix("| ") for row in rows) == sorted(GRAPH)


def test_check_passes_on_the_tree():
    result = subprocess.run(
        (sys.executable, str(DOCKER / "manage_images.py"), "--check", "--images", "all"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"Checked {len(GRAPH)} images: the graph, the Dockerfiles, the references and "
        "build_tools/docker/prod_digests.txt agree."
    ]


def test_dry_run_of_everything_plans_every_image_and_changes_nothing(tmp_path):
    standin = StandIn(tmp_path / "standin")
    before = {path: path.read_bytes() for path in tracked()}
    result = subprocess.run(
        (
            sys.executable,
            str(DOCKER / "manage_images.py"),
            "--images",
            "all",
            "--build",
            "--push",
            "--update_references",
            "--dry-run",
        ),
        cwd=ROOT / "build_tools",
        capture_output=True,
        text=True,
        env={**os.environ, **standin.environ()},
    )
    assert result.returncode == 0, result.stderr
    # Only the two read-only questions that tell which builder the plan is for.
    assert after_engine_questions(standin.commands()) == []
    assert "Engine: Docker 20.10.24 (client 20.10.24), the classic builder, the overlay2 image store\n" in (
        result.stdout
    )
    assert {path: path.read_bytes() for path in tracked()} == before
    processing = re.findall(rf"^Processing image (\S+) \[(\d+)/{len(GRAPH)}\]$", result.stdout, re.M)
    assert [image for image, _ in processing] == mi.ordered_images_to_process(sorted(GRAPH), GRAPH)
    assert [int(number) for _, number in processing] == list(range(1, len(GRAPH) + 1))
    assert "Running: `gcloud auth configure-docker`" in result.stdout
    assert (
        "Running: `docker build --tag gcr.io/iree-oss/cmake:latest build_tools/docker/cmake`"
        in unlabelled(result.stdout)
    )


def test_readme_diagram_is_the_graph_output():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- graph:begin -->\n```mermaid\n(.*?)```\n<!-- graph:end -->", readme, re.S).group(
        1
    )
    result = subprocess.run(
        (sys.executable, str(DOCKER / "manage_images.py"), "--graph", "mermaid", "--images", "all"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert block == result.stdout


def copy_of_the_tree(destination: Path) -> Path:
    """This repository's tracked files as they are on disk, in a new git repository."""
    for path in tracked():
        target = destination / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        target.chmod(path.stat().st_mode)
    for args in (("init", "-q", "--template="), ("add", "-A")):
        subprocess.run(("git", "-C", str(destination), *args), check=True, capture_output=True)
    return destination


def test_check_on_a_copy_of_the_tree_names_each_defect_by_path_and_line(tmp_path):
    root = copy_of_the_tree(tmp_path / "tree")
    registry = "gcr.io/" + "iree-oss"  # in pieces: this file is no reference
    scripts = sorted(KOKORO.rglob("build_kokoro.sh"))
    stale_job, latest_job, bare_job = (script.relative_to(ROOT) for script in scripts[:3])
    expected = []

    def append(relative: Path | str, text: str, message: str) -> None:
        path = root / relative
        path.write_text(path.read_text() + text + "\n")
        expected.append(f"{relative}:{len(path.read_text().splitlines())}: {message}")

    old = "sha256:" + "e" * 64
    append(
        stale_job,
        f"docker run {registry}/cmake:prod@{old} true",
        f"{registry}/cmake:prod is pinned to sha256:eeeeeeeeeeee",
    )
    append(
        latest_job,
        f"docker run {registry}/bazel:latest true",
        f"{registry}/bazel:latest is not pinned by digest",
    )
    append(bare_job, f"docker run {registry}/bazel true", f"{registry}/bazel is not pinned by digest")
    prod = root / "build_tools/docker/prod_digests.txt"
    prod.write_text(
        "".join(line + "\n" for line in prod.read_text().splitlines() if "/cmake-android@" not in line)
    )
    expected.append(f"build_tools/docker/cmake-android/Dockerfile:1: {registry}/cmake-android has no line in")
    subprocess.run(("git", "-C", str(root), "add", "-A"), check=True)
    result = subprocess.run(
        (sys.executable, str(DOCKER / "manage_images.py"), "--check", "--images", "all"),
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    for finding in expected:
        assert [line for line in result.stdout.splitlines() if line.startswith(finding)], finding
