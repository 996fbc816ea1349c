"""#32, second part, without an engine: the argv of an image built for several platforms
(one `docker build --platform a,b` that pushes the index, then a cache-only build per
platform), the engines that refuse it before any work, and the pure pieces that compare an
index platform by platform (`layout_configs`, `config_identity`, `overall_identity`).
tests/test_e2e_platforms.py runs the same against the real engines and registry."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import manage_images as mi
from helpers import GRAPH, without_label
from registry import OCI_INDEX

AMD64, ARM64 = "linux/amd64", "linux/arm64"
BOTH = (AMD64, ARM64)
URL = "gcr.io/iree-oss/cmake"
STANDIN_ENGINES = {
    "containerd": {"client": "26.1.5", "server": "26.1.5", "store": "containerd", "buildx": "0.13.1"},
    "overlay2": {"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"},
    "classic": {},
}
# What `docker buildx inspect` lists once QEMU's handlers are installed (see test_platforms.py).
INSPECTED = [["inspect", "Platforms:        linux/amd64, linux/amd64/v2, linux/arm64, linux/riscv64", 0]]


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def builds(standin, image: str = "cmake") -> list[list[str]]:
    """The `docker build` commands of IMAGE the stand-in ran, in order."""
    return [
        without_label(argv)
        for argv in standin.commands()
        if argv[:2] == ["docker", "build"] and argv[-1] == f"{mi.DOCKER_DIR}/{image}"
    ]


# --- The run, with the stand-in docker and registry -----------------------------------


def test_an_index_is_pushed_by_its_build_then_each_platform_writes_its_own_cache(tree, standin, capsys):
    standin.set(engine=STANDIN_ENGINES["containerd"], say={"buildx": INSPECTED})
    argv = ["--image", "cmake", "--build", "--push", "--json", "report.json"]
    assert mi.main(argv, platforms=dict.fromkeys(GRAPH, BOTH)) == 0
    out = capsys.readouterr().out
    report = {item["name"]: item for item in json.loads((tree / "report.json").read_text())["images"]}
    assert report["cmake"]["platforms"] == list(BOTH) and report["cmake"]["platform_identities"] is None
    first, *caches = builds(standin)
    # One build for every platform, pushing the index itself: no `docker push`, no --load.
    assert value(first, "--platform") == ",".join(BOTH)
    assert "--push" in first and "--output" not in first and "--cache-to" not in first
    assert "--provenance=false" in first and "--sbom=false" in first
    assert not [argv for argv in standin.commands() if argv[:2] == ["docker", "push"]]
    # Then one cache-only build per platform, each writing a registry cache of its own.
    assert [value(argv, "--platform") for argv in caches] == list(BOTH)
    for platform, argv in zip(BOTH, caches):
        assert value(argv, "--output") == "type=cacheonly" and "--push" not in argv
        tag = mi.build_cache_tag("latest", platform)
        assert value(argv, "--cache-to") == f"type=registry,ref={URL}:{tag},mode=max,ignore-error=true"
        assert argv[-1] == first[-1] == "build_tools/docker/cmake"
    # The stand-in's cache-only builds say no cache manifest: the run says so per platform.
    assert all(f"no registry cache kept for {platform}" in out for platform in BOTH), out


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        ("classic", "and the classic builder builds for the engine's platform only"),
        ("overlay2", "BuildKit's docker driver on the overlay2 image store cannot build an index"),
    ],
)
def test_an_engine_that_cannot_build_an_index_refuses_before_any_command(
    tree, standin, capsys, engine, reason
):
    standin.set(engine=STANDIN_ENGINES[engine], say={"buildx": INSPECTED})
    before = (tree / "build_tools/docker/prod_digests.txt").read_bytes()
    argv = ["--image", "cmake", "--build", "--push", "--update_references"]
    assert mi.main(argv, platforms=dict.fromkeys(GRAPH, BOTH)) == 1
    out, err = capsys.readouterr()
    assert err.startswith("refusing to build: cmake is to be built for ") and err.count("\n") == 1
    assert reason in err and err.endswith("; nothing was built or changed\n")
    assert not [argv for argv in standin.commands() if argv[:2] == ["docker", "build"]] and not [
        argv for argv in standin.commands() if "push" in argv
    ]
    assert (tree / "build_tools/docker/prod_digests.txt").read_bytes() == before


@pytest.mark.parametrize("engine", list(STANDIN_ENGINES))
def test_an_entry_of_the_engines_own_platform_alone_builds_as_without_one(tree, standin, engine):
    standin.set(engine=STANDIN_ENGINES[engine])
    argv = ["--image", "cmake", "--build", "--push"]
    assert mi.main([*argv, "--json", "report.json"], platforms={}) == 0
    assert json.loads((tree / "report.json").read_text())["images"][0]["platforms"] is None
    without = builds(standin)
    standin.log.unlink()
    assert mi.main(argv, platforms=dict.fromkeys(GRAPH, (AMD64,))) == 0
    assert [strip_scratch(one) for one in builds(standin)] == [strip_scratch(one) for one in without]
    assert all("--platform" not in one for one in without)


def strip_scratch(argv: list[str]) -> list[str]:
    """`argv` without its metadata file's path (a folder of each run's own)."""
    return [part for part in argv if part != value(argv, "--metadata-file")]


# --- Pure pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "engine_platform", "flag"),
    [
        ((), AMD64, ()),
        ((AMD64,), AMD64, ()),
        ((ARM64,), AMD64, (ARM64,)),
        (BOTH, AMD64, BOTH),
        ((AMD64,), ARM64, (AMD64,)),
        ((ARM64,), "linux/aarch64", ()),  # the engine's platform as docker says it, compared canonically
    ],
)
def test_the_platform_flag_is_left_out_for_the_engines_own_platform_alone(wanted, engine_platform, flag):
    engine = mi.Engine("26.1.5", "26.1.5", "buildkit", "containerd", "0.13.1", engine_platform)
    assert mi.platform_flag(wanted, engine) == flag


def test_each_platforms_cache_tag_is_a_valid_tag_of_its_own():
    tags = {mi.build_cache_tag(tag, platform) for tag in ("latest", "x" * 128) for platform in ("", *BOTH)}
    assert len(tags) == 6
    assert all(mi.TAG_RE.fullmatch(tag) for tag in tags), tags
    assert mi.build_cache_tag("latest") == "latest.cache"
    assert mi.build_cache_tag("latest", "linux/arm64/v8") == "latest.cache-linux-arm64-v8"


def test_an_index_built_has_no_config_digest_in_its_metadata(tmp_path):
    index = "sha256:" + "a" * 64
    config = "sha256:" + "c" * 64
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"containerimage.digest": index, "containerimage.config.digest": index}))
    assert mi.built_config_digest(str(metadata)) is None
    metadata.write_text(json.dumps({"containerimage.digest": index, "containerimage.config.digest": config}))
    assert mi.built_config_digest(str(metadata)) == config


def blob(data: object) -> tuple[str, bytes]:
    raw = json.dumps(data).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw


def layout(platforms: tuple[str, ...], attestation: bool = True, single: bool = False) -> dict[str, bytes]:
    """The JSON files of an OCI layout as `docker save` writes one: an index of an image per
    platform (and an attestation manifest), or, `single`, the first platform's image alone."""
    blobs: dict[str, bytes] = {}

    def put(data: object) -> str:
        digest, raw = blob(data)
        blobs["blobs/" + digest.replace(":", "/")] = raw
        return digest

    entries = []
    for platform in platforms:
        os_, architecture = platform.split("/")[:2]
        config = put({"os": os_, "architecture": architecture, "rootfs": {"diff_ids": [platform]}})
        manifest = put({"schemaVersion": 2, "config": {"digest": config}, "layers": []})
        entries.append({"digest": manifest, "platform": {"os": os_, "architecture": architecture}})
    if attestation:
        manifest = put({"schemaVersion": 2, "config": {"digest": put({"unknown": True})}, "layers": []})
        annotations = {mi.REFERENCE_TYPE_ANNOTATION: mi.ATTESTATION_MANIFEST}
        entries.append(
            {
                "digest": manifest,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": annotations,
            }
        )
    target = entries[0]["digest"] if single else put({"schemaVersion": 2, "manifests": entries})
    blobs["index.json"] = json.dumps({"manifests": [{"digest": target}]}).encode()
    return blobs


def test_a_saved_index_gives_each_platforms_config_and_a_saved_image_its_own():
    found = mi.layout_configs(layout(BOTH))
    assert list(found) == list(BOTH)
    for platform, (digest, config) in found.items():
        assert "sha256:" + hashlib.sha256(config).hexdigest() == digest
        assert mi.config_platform(config) == platform
    assert list(mi.layout_configs(layout(BOTH, single=True))) == [AMD64]


@pytest.mark.parametrize(
    "damage",
    ["a blob missing", "a blob that is not its digest's bytes", "two images named", "no index.json"],
)
def test_a_saved_layout_that_is_not_one_whole_image_is_refused(damage):
    blobs = layout(BOTH)
    some = next(name for name in blobs if name.startswith("blobs/") and b'"rootfs"' in blobs[name])
    if damage == "a blob missing":
        del blobs[some]
    elif damage == "a blob that is not its digest's bytes":
        blobs[some] = blobs[some].replace(b"amd64", b"arm64")
    elif damage == "two images named":
        blobs["index.json"] = json.dumps({"manifests": [{"digest": "sha256:" + "1" * 64}] * 2}).encode()
    else:
        del blobs["index.json"]
    with pytest.raises(ValueError):
        mi.layout_configs(blobs)


def same_bytes(one: bytes, other: bytes) -> bool:
    return one.strip() == other.strip()


@pytest.mark.parametrize(
    ("built", "pinned", "identity"),
    [
        (("sha256:1", b"a"), ("sha256:1", b"a"), "identical"),
        (("sha256:1", b"a"), ("sha256:2", b"a "), "same content"),
        (("sha256:1", b"a"), ("sha256:2", b"b"), "differs"),
        (None, ("sha256:2", b"b"), "differs"),
        (("sha256:1", b"a"), None, "differs"),
    ],
)
def test_one_platform_compares_by_digest_then_by_content(built, pinned, identity):
    assert mi.config_identity(built, pinned, same_bytes) == identity


@pytest.mark.parametrize(
    ("identities", "overall"),
    [
        ({AMD64: "identical", ARM64: "identical"}, "identical"),
        ({AMD64: "identical", ARM64: "same content"}, "same content"),
        ({AMD64: "identical", ARM64: "differs"}, "differs"),
        ({AMD64: "differs", ARM64: "same content"}, "differs"),
        ({}, "differs"),
    ],
)
def test_an_index_is_identical_only_if_every_platform_is_and_differs_if_one_does(identities, overall):
    assert mi.overall_identity(identities) == overall


# --- A push against its pin, platform by platform, in a real registry ---------------------


def mixed_index(registry, image: str, entries: list[str]) -> str:
    """An OCI index of the image manifests `entries` (digests), each under the platform its config says."""
    described = []
    for digest in entries:
        media_type, data = registry.manifest(image, digest)
        config = registry.image_config(image, digest)
        platform = {"os": config["os"], "architecture": config["architecture"]}
        described.append({"mediaType": media_type, "digest": digest, "size": len(data), "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": described}).encode()
    return registry.push_manifest(image, mi.body_digest(index), index, OCI_INDEX)


def test_a_push_is_compared_with_its_pin_platform_by_platform(plain_registry, docker_env, tmp_path):
    registry, url = plain_registry, f"{plain_registry.url}/base"
    client = mi.RegistryClient(dict(os.environ))
    pinned = registry.push_index("base", platforms=BOTH, label=f"pin {tmp_path.name}")
    other = registry.push_index("base", platforms=BOTH, label=f"other {tmp_path.name}")
    images = {
        digest: dict(mi.index_entries(registry_document(registry, digest))) for digest in (pinned, other)
    }
    # The pin's amd64 image with another arm64 image: only arm64 differs.
    mixed = mixed_index(registry, "base", [images[pinned][AMD64], images[other][ARM64]])
    assert mi.registry_identities(client, url, pinned, pinned, BOTH) == dict.fromkeys(BOTH, "identical")
    assert mi.registry_identities(client, url, pinned, mixed, BOTH) == {AMD64: "identical", ARM64: "differs"}
    assert mi.registry_identities(client, url, pinned, other, BOTH) == dict.fromkeys(BOTH, "differs")
    # One platform's manifest pushed where the pin is an index: the platform it lacks differs.
    single = images[pinned][AMD64]
    assert mi.registry_identities(client, url, pinned, single, BOTH) == {AMD64: "identical", ARM64: "differs"}
    assert mi.overall_identity(mi.registry_identities(client, url, pinned, mixed, BOTH)) == "differs"


def test_a_pin_holding_a_platform_the_graph_dropped_is_not_kept(plain_registry, docker_env, tmp_path):
    # The pin is from when the graph listed linux/riscv64 too; the rebuild for the two it lists
    # now gives the very same two images. Keeping the pin would keep what --verify_pinned refuses.
    riscv = "linux/riscv64"
    registry, url = plain_registry, f"{plain_registry.url}/base"
    client = mi.RegistryClient(dict(os.environ))
    pinned = registry.push_index("base", platforms=(*BOTH, riscv), label=f"pin {tmp_path.name}")
    held = dict(mi.index_entries(registry_document(registry, pinned)))
    pushed = mixed_index(registry, "base", [held[platform] for platform in BOTH])
    identities = mi.registry_identities(client, url, pinned, pushed, BOTH)
    assert identities == {AMD64: "identical", ARM64: "identical", riscv: "differs"}
    assert mi.overall_identity(identities) == "differs"
    entry = mi.ProdDigest(1, url, pinned)
    settings = mi.Settings(plain_registry.url, "latest", False, tmp_path)
    assert [finding.message for finding in mi.pin_platform_findings(settings, "base", entry, BOTH)]


def registry_document(registry, digest: str) -> dict:
    return json.loads(registry.manifest("base", digest)[1])


CONFIG = {
    "os": "linux",
    "architecture": "arm64",
    "created": "2026-12-06T00:00:00Z",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    "config": {"Env": ["PATH=/bin"]},
}


@pytest.mark.parametrize(
    ("other", "same"),
    [
        ({**CONFIG, "history": [{"created_by": "COPY"}], "moby.buildkit.cache.v0": "x"}, True),
        ({**CONFIG, "architecture": "amd64"}, False),
        ({**CONFIG, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}}, False),
        ({**CONFIG, "created": "2026-12-07T00:00:00Z"}, False),
        ({**CONFIG, "config": {"Env": ["PATH=/usr/bin"]}}, False),
    ],
)
def test_a_platforms_config_built_here_has_the_pins_content_when_its_view_is_the_same(other, same):
    # The engine's side of an index (from `docker save`) against the pin's, one platform.
    assert mi.same_view(json.dumps(CONFIG).encode(), json.dumps(other, indent=1).encode()) is same
    assert mi.same_view(b"not json", json.dumps(CONFIG).encode()) is False
