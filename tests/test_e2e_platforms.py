"""End-to-end: on the engine this session runs on (MANAGE_IMAGES_ENGINE=classic|buildkit|
containerd), a run whose images are built for platforms the engine cannot build stops with
one line before any work, naming the image, the platform and the remedy; the registry, the
engine's image store and the files are left as they were.

What each engine can do is found here from docker itself (`docker version`, `docker info`,
`docker buildx inspect`), never from the module: the classic builder builds the engine's
platform only; BuildKit's docker driver on a graph-driver store builds no index; a RUN for a
platform the builder does not list needs QEMU.

Where the engine can (BuildKit on the containerd store), an image listed for two platforms
is built, pushed and pinned as one index, the very one the registry serves; it is verified
platform by platform, from the registry and by a rebuild; a pin of one platform's manifest
where the index is expected fails naming the image and the platform it lacks; --promote
publishes the index byte for byte; and a cold engine reproduces every platform of it from
the registry caches kept beside each platform's image."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import uuid
from types import SimpleNamespace

import pytest

import fake_tree
import manage_images as mi
from helpers import engine_kind, fresh_engine
from registry import DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST

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
    listed = offered()
    if builder == "classic":
        return "the classic builder builds for the engine's platform only"
    if len(wanted) > 1 and store != "containerd":
        return f"BuildKit's docker driver on the {driver} image store cannot build an index"
    if runs and any(platform not in listed for platform in wanted):
        return "install QEMU's binfmt handlers (apt-get install qemu-user-static binfmt-support"
    return ""  # the engine builds it


@pytest.fixture
def world(engine, registry, tmp_path, monkeypatch):
    """SMALL's tree under a repository path of its own in the session's registry, as the
    current directory; returns (registry, that path, the tree's root)."""
    path = f"{registry.host}/platforms-{uuid.uuid4().hex[:10]}"
    root = fake_tree.make_tree(tmp_path / "repo", path, SMALL)
    monkeypatch.chdir(root)
    return registry, path, root


def manifest(registry, path: str, image: str, reference: str) -> tuple[str, bytes, str]:
    """(media type, bytes, digest) of what the registry serves as PATH/IMAGE:REFERENCE (or @)."""
    repository = f"{path.split('/', 1)[1]}/{image}"
    status, headers, body = registry.request(
        "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert status == 200, (image, reference, status, body)
    assert headers["Docker-Content-Digest"] == mi.body_digest(body)
    return headers["Content-Type"], body, headers["Docker-Content-Digest"]


def served(registry, path: str, image: str, reference: str) -> tuple[str, dict]:
    media_type, body, _ = manifest(registry, path, image, reference)
    return media_type, json.loads(body)


def config_of(registry, path: str, image: str, document: dict) -> dict:
    """The image config an image manifest names, from the registry."""
    repository = f"{path.split('/', 1)[1]}/{image}"
    status, _, body = registry.request("GET", f"/v2/{repository}/blobs/{document['config']['digest']}")
    assert status == 200, status
    return json.loads(body)


def pins(root, path: str) -> dict[str, str]:
    """image -> the digest prod_digests.txt pins it to."""
    lines = (root / "build_tools/docker/prod_digests.txt").read_text().splitlines()
    return {
        url.removeprefix(f"{path}/"): digest
        for url, _, digest in (line.partition("@") for line in lines)
        if digest
    }


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
    remedy = expected("base", wanted, runs)
    if not remedy:  # BuildKit builds one foreign platform that only copies files: one image manifest
        alone = {"base": ()}  # base's dependents copy from util, which this run does not push
        args = ["--registry", path, "--image", "base", "--build", "--push"]
        assert mi.main(args, graph=alone, platforms={"base": (other,)}) == 0, capsys.readouterr()
        media_type, document = served(registry, path, "base", "latest")
        assert media_type in (DOCKER_MANIFEST, OCI_MANIFEST), media_type
        assert config_of(registry, path, "base", document)["architecture"] == other.split("/")[1]
        return
    assert mi.main(args, graph=SMALL, platforms=platforms) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("refusing to build: base is to be built for ")
    assert other in err and err.endswith(f"{STOP}\n")
    assert remedy in err
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


def hello_elf(architecture: str) -> bytes:
    """A static Linux program for `architecture` (amd64 or arm64) that writes
    "ARCH ok" and exits 0: an ELF header, one loadable segment, the code."""
    message = f"{architecture} ok\n".encode()
    base, start = 0x400000, 64 + 56
    if architecture == "amd64":
        # mov eax,1; mov edi,1; lea rsi,[rip+msg]; mov edx,len; syscall; mov eax,60; xor edi,edi; syscall
        code_len = 5 + 5 + 7 + 5 + 2 + 5 + 2 + 2
        lea_end = 5 + 5 + 7
        code = (
            b"\xb8\x01\x00\x00\x00"
            + b"\xbf\x01\x00\x00\x00"
            + b"\x48\x8d\x35"
            + struct.pack("<i", code_len - lea_end)
            + b"\xba"
            + struct.pack("<I", len(message))
            + b"\x0f\x05"
            + b"\xb8\x3c\x00\x00\x00"
            + b"\x31\xff"
            + b"\x0f\x05"
        )
        machine = 62
    else:
        # movz x0,#1; adr x1,msg; movz x2,#len; movz x8,#64; svc 0; movz x0,#0; movz x8,#93; svc 0
        offset = 8 * 4 - 4  # from the adr (the second instruction) to the message
        words = [
            0xD2800020,
            0x10000001 | ((offset & 3) << 29) | ((offset >> 2) << 5),
            0xD2800002 | (len(message) << 5),
            0xD2800808,
            0xD4000001,
            0xD2800000,
            0xD2800BA8,
            0xD4000001,
        ]
        code = struct.pack("<8I", *words)
        machine = 183
    body = code + message
    size = start + len(body)
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, base + start, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    )
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + segment + body


def run_everywhere(root, platforms: tuple[str, ...]) -> None:
    """util's build runs a program of each platform it is built for: a foreign one runs under
    QEMU's handlers (busybox, which base's RUN runs, is an amd64 program whatever the platform)."""
    context = root / "build_tools/docker/util"
    (context / "stamp").write_text(
        f"util {uuid.uuid4()}\n"
    )  # so its RUN runs, whatever the engine's cache holds
    for platform in platforms:
        architecture = platform.split("/")[1]
        program = context / f"hello-{architecture}"
        program.write_bytes(hello_elf(architecture))
        program.chmod(0o755)
    (context / "Dockerfile").write_text(
        "FROM scratch AS final\nARG TARGETARCH\nCOPY stamp /stamp/util\nCOPY hello-${TARGETARCH} /hello\n"
        'RUN ["/hello"]\n'
    )
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", "util runs a program of each platform")


def two_platforms() -> tuple[str, str]:
    """The engine's platform and the other of linux/amd64 and linux/arm64."""
    own = own_platform()
    return own, "linux/arm64" if own != "linux/arm64" else "linux/amd64"


def test_an_index_is_built_pushed_pinned_verified_promoted_and_reproduced_where_the_engine_can(
    world, capsys, monkeypatch
):
    registry, path, root = world
    both = two_platforms()
    platforms = dict.fromkeys(SMALL, both)
    run_everywhere(root, both)
    tracked = fake_tree.tracked_files(root)
    every = ["--registry", path, "--images", "all"]
    code = mi.main([*every, "--build", "--push", "--update_references"], graph=SMALL, platforms=platforms)
    out, err = capsys.readouterr()
    remedy = expected("base", list(both), runs=True)
    # The containerd engine builds it: without QEMU it would not run util's foreign program.
    assert not (remedy and engine_kind()[2] == "containerd"), "install qemu-user-static binfmt-support"
    if remedy:  # the classic builder, and BuildKit's docker driver on a graph-driver store
        assert (code, out, err.count("\n")) == (1, "", 1) and remedy in err, err
        untouched(registry, path, root, tracked)
        return
    assert code == 0, err
    said = out + err
    assert all(f"{platform.split('/')[1]} ok" in said for platform in both), said  # each RUN ran its own
    pinned = pins(root, path)
    assert set(pinned) == set(SMALL)
    for image, digest in pinned.items():
        # The pin is the index the registry serves under the tag, of exactly those platforms.
        media_type, data, tagged = manifest(registry, path, image, "latest")
        assert (tagged, media_type in (DOCKER_LIST, OCI_INDEX)) == (digest, True), (image, media_type)
        held = mi.index_entries(json.loads(data))
        assert sorted(platform for platform, _ in held) == sorted(both), (image, held)
        for platform, entry in held:
            config = config_of(registry, path, image, served(registry, path, image, entry)[1])
            assert f"{config['os']}/{config['architecture']}" == platform, (image, platform)
            # Each platform's registry cache is kept beside its image, for a cold engine.
            assert manifest(registry, path, image, mi.pinned_cache_tag(entry))[0] == OCI_INDEX
    # What the engine holds for the tag, read platform by platform from `docker save`: the pin's configs.
    held = mi.saved_configs(SimpleNamespace(settings=mi.Settings(path, "latest", False, root)), "cmake")
    index = served(registry, path, "cmake", pinned["cmake"])[1]
    assert {platform: config for platform, (config, _) in held.items()} == {
        platform: served(registry, path, "cmake", entry)[1]["config"]["digest"]
        for platform, entry in mi.index_entries(index)
    }
    cmake = (root / "build_tools/docker/cmake/Dockerfile").read_text()
    assert f"FROM {path}/base@{pinned['base']} AS final" in cmake
    fake_tree.git(root, "commit", "-q", "-am", "Pin the indexes")

    # From the registry alone; then a rebuild, compared platform by platform before its push
    # (`docker push` of the index), pushed, and the pin kept: the same content on every platform.
    assert mi.main([*every, "--verify_pinned"], graph=SMALL, platforms=platforms) == 0
    capsys.readouterr()
    rebuild = [
        "--registry",
        path,
        "--image",
        "cmake",
        "--build",
        "--push",
        "--verify_pinned",
        "--update_references",
    ]
    assert mi.main(rebuild, graph=SMALL, platforms=platforms) == 0
    out = capsys.readouterr().out
    assert f"Reproduced the pinned index {path}/cmake@{pinned['cmake'][:19]} ({', '.join(both)})" in out, out
    assert pins(root, path) == pinned and manifest(registry, path, "cmake", "latest")[2] == pinned["cmake"]
    assert fake_tree.git(root, "status", "--porcelain") == ""

    # The inputs label of an index (read from its first platform's config) says it is unchanged.
    unchanged = ["--build", "--push", "--update_references", "--skip_unchanged"]
    assert mi.main([*every, *unchanged], graph=SMALL, platforms=platforms) == 0
    out = capsys.readouterr().out
    assert "Running: `docker build" not in out and out.count(
        "is unchanged (inputs of the pin): not built"
    ) == len(SMALL), out
    assert pins(root, path) == pinned and fake_tree.git(root, "status", "--porcelain") == ""

    # --promote publishes each index under the new tag byte for byte.
    assert mi.main([*every, "--promote", "--tag", "prod"], graph=SMALL, platforms=platforms) == 0
    capsys.readouterr()
    for image, digest in pinned.items():
        assert manifest(registry, path, image, "prod") == manifest(registry, path, image, digest), image
    assert pins(root, path) == pinned and fake_tree.git(root, "status", "--porcelain") == ""

    # One platform's program changed: the rebuild, compared platform by platform from `docker
    # save`, differs on each (the inputs label in every config changes with the context), and stops.
    program = root / f"build_tools/docker/util/hello-{both[1].split('/')[1]}"
    program.write_bytes(program.read_bytes() + b"\0")  # past its segment: it runs as before
    verify_util = ["--registry", path, "--image", "util", "--build", "--verify_pinned"]
    assert mi.main(verify_util, graph=SMALL, platforms=platforms) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"util differs from the index the tree pins for {', '.join(both)}: built "), err
    assert "(no platform reproduced)" in err and err.endswith("nothing was pushed\n"), err
    assert manifest(registry, path, "util", "latest")[2] == pinned["util"]
    fake_tree.git(root, "checkout", "-q", "--", ".")

    # A pin of one platform's manifest where the index is expected names the image and the platform.
    prod = root / "build_tools/docker/prod_digests.txt"
    own_image = dict(mi.index_entries(served(registry, path, "base", pinned["base"])[1]))[both[0]]
    prod.write_text(prod.read_text().replace(pinned["base"], own_image))
    assert mi.main([*every, "--verify_pinned"], graph=SMALL, platforms=platforms) == 1
    lines = capsys.readouterr().out.splitlines()
    found = [line for line in lines if "is one image manifest" in line]  # and :latest is not the pin
    assert (
        len(found) == 1 and f"base: the pin {path}/base@{own_image[:19]} is one image manifest" in found[0]
    ), lines
    assert f"({both[0]}), not an index of {', '.join(both)}: it has no {both[1]}" in found[0], lines
    fake_tree.git(root, "checkout", "-q", "--", ".")

    # A cold engine of the same kind reproduces every platform from the registry caches kept.
    report = root.parent / "cold.json"
    cold_run = [*every, "--build", "--cache_from_pinned", "--verify_pinned", "--json", str(report)]
    with fresh_engine() as cold:
        monkeypatch.setenv("DOCKER_HOST", cold["DOCKER_HOST"])
        assert mi.main(cold_run, graph=SMALL, platforms=platforms) == 0, capsys.readouterr()
    for item in json.loads(report.read_text())["images"]:
        assert list(item["platform_identities"]) == list(both), item
        assert set(item["platform_identities"].values()) <= {"identical", "same content"}, item
    assert pins(root, path) == pinned and fake_tree.git(root, "status", "--porcelain") == ""
