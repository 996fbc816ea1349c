"""End-to-end: on the engine this session runs on (MANAGE_IMAGES_ENGINE=classic|buildkit|
containerd), a run whose images are built for platforms the engine cannot build stops with
one line before any work, naming the image, the platform and the remedy; the registry, the
engine's image store and the files are left as they were.

What each engine can do is found here from docker itself (`docker version`, `docker info`,
`docker buildx inspect`), never from the module: the classic builder builds the engine's
platform only; BuildKit's docker driver on a graph-driver store builds no index; a RUN for a
platform the builder does not list needs QEMU. Until the build of other platforms lands
(#32, second part), a run the engine could build stops too, saying so."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest

import fake_tree
import manage_images as mi
from helpers import engine_kind

pytestmark = pytest.mark.e2e

SMALL = {"base": (), "util": (), "cmake": ("base", "util")}  # frozen: never the live graph
STOP = "; nothing was built or changed"


def own_platform() -> str:
    result = subprocess.run(
        ("docker", "version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def offered() -> list[str]:
    """What the builder lists, read from `docker buildx inspect` (none for the classic builder)."""
    if not engine_kind()[3].startswith("BuildKit"):
        return []
    result = subprocess.run(("docker", "buildx", "inspect"), capture_output=True, text=True, check=True)
    found = re.findall(r"^Platforms:\s*(.*)$", result.stdout, re.M)
    return [item.strip().rstrip("*") for line in found for item in line.split(",")]


def foreign(own: str, listed: list[str]) -> str:
    """A platform this engine's builder does not list: it has no emulator for it."""
    return next(
        platform
        for platform in ("linux/sparc64", "linux/mips", "linux/s390x", "linux/arm64", "linux/amd64")
        if platform not in listed and platform != own
    )


def expected(image: str, wanted: list[str], runs: bool) -> str:
    """The remedy the refusal must give on this engine."""
    _, driver, store, builder = engine_kind()
    own, listed = own_platform(), offered()
    if builder == "classic":
        return "the classic builder builds for the engine's platform only"
    if len(wanted) > 1 and store != "containerd":
        return f"BuildKit's docker driver on the {driver} image store cannot build an index"
    if runs and any(platform not in listed for platform in wanted):
        return "install QEMU's binfmt handlers (apt-get install qemu-user-static binfmt-support"
    return f"this version of manage_images.py builds for the engine's platform ({own}) only"


@pytest.fixture
def world(engine, registry, tmp_path, monkeypatch):
    """SMALL's tree under a repository path of its own in the session's registry, as the
    current directory; returns (registry, that path, the tree's root)."""
    path = f"{registry.host}/platforms-{uuid.uuid4().hex[:10]}"
    root = fake_tree.make_tree(tmp_path / "repo", path, SMALL)
    monkeypatch.chdir(root)
    return registry, path, root


def untouched(registry, path: str, root, tracked) -> None:
    """Nothing under `path` in the registry or the engine's store, the tree as it was."""
    for image in SMALL:
        status, _, body = registry.request("GET", f"/v2/{path.split('/', 1)[1]}/{image}/tags/list")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN", body
    images = subprocess.run(
        ("docker", "image", "ls", "--format", "{{.Repository}}"), capture_output=True, text=True, check=True
    ).stdout.split()
    assert [name for name in images if name.startswith(path)] == []
    assert fake_tree.tracked_files(root) == tracked
    assert fake_tree.git(root, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.parametrize("shape", ["own and foreign", "foreign alone", "foreign alone, COPY only"])
def test_a_run_the_engine_cannot_build_stops_with_one_line_before_any_work(world, capsys, shape):
    registry, path, root = world
    own = own_platform()
    other = foreign(own, offered())
    wanted = [own, other] if shape == "own and foreign" else [other]
    runs = "COPY only" not in shape
    if not runs:  # base's only RUN installs busybox's links: without it, base only copies files
        dockerfile = root / "build_tools/docker/base/Dockerfile"
        dockerfile.write_text(
            "".join(line for line in dockerfile.read_text().splitlines(True) if "RUN" not in line)
        )
        fake_tree.git(root, "commit", "-q", "-am", "base copies files only")
    tracked = fake_tree.tracked_files(root)
    platforms = dict.fromkeys(SMALL, tuple(wanted))
    args = ["--registry", path, "--image", "base", "--build", "--push", "--update_references"]
    assert mi.main(args, graph=SMALL, platforms=platforms) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("refusing to build: base is to be built for ")
    assert other in err and err.endswith(f"{STOP}\n")
    assert expected("base", wanted, runs) in err
    untouched(registry, path, root, tracked)


def test_a_platform_flag_a_parent_lacks_stops_naming_both_images(world, capsys):
    registry, path, root = world
    own = own_platform()
    other = foreign(own, [])
    tracked = fake_tree.tracked_files(root)
    args = ["--registry", path, "--image", "cmake", "--build", "--push"]  # --platform is never pinned
    assert mi.main([*args, "--platform", f"{own},{other}"], graph=SMALL, platforms={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"refusing to build: cmake is built for {other} but its parent base has no IMAGE_PLATFORMS entry, so it "
        f"is built for the engine's platform, {own} alone; list {other} for base too{STOP}\n"
    )
    untouched(registry, path, root, tracked)


def test_an_image_without_an_entry_whose_parent_lacks_the_engines_platform_stops(world, capsys):
    registry, path, root = world
    own = own_platform()
    other = foreign(own, [])
    tracked = fake_tree.tracked_files(root)
    args = ["--registry", path, "--image", "cmake", "--build", "--push", "--update_references"]
    assert mi.main(args, graph=SMALL, platforms={"base": (other,), "util": (own, other)}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"refusing to build: cmake is built for the engine's platform, {own} (it has no IMAGE_PLATFORMS "
        f"entry), but its parent base is not (base: {other}); build it on an engine of one of base's "
        f"platforms, or list the platforms of cmake in IMAGE_PLATFORMS{STOP}\n"
    )
    untouched(registry, path, root, tracked)
