"""Images for several platforms (#32, first part): the platform grammar, the subset rule,
what an engine can build (tables); --check's subset findings on temporary repositories;
--verify_pinned and --check --json against a real `docker-registry` on loopback, its
indexes made through the API (no engine). The refusals on real engines are in
test_e2e_platforms.py.

The graphs here are frozen copies, never IMAGES_TO_DEPENDENCIES or IMAGE_PLATFORMS."""

from __future__ import annotations

import json

import pytest

import fake_tree
import manage_images as mi
from helpers import ORIGINAL_GRAPH
from registry import OCI_INDEX, OCI_MANIFEST

REGISTRY = "gcr.io/" + "iree-oss"  # in pieces: this tree's own --check must not read test data
P = fake_tree.PLACEHOLDER
PROD = "build_tools/docker/prod_digests.txt"
AMD64, ARM64, S390X = "linux/amd64", "linux/arm64", "linux/s390x"
BOTH = (AMD64, ARM64)
# The smallest graph with a child of two parents, for the registry tests.
SMALL = {"base": (), "util": (), "cmake": ("base", "util")}


# --- The grammar: containerd's platforms.Parse, then Normalize ----------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("linux/amd64", AMD64),
        ("amd64", AMD64),  # an architecture alone is for linux
        ("x86_64", AMD64),
        ("linux/x86-64", AMD64),
        ("linux/amd64/v1", AMD64),
        ("linux/amd64/v2", "linux/amd64/v2"),
        ("LINUX/AMD64", AMD64),
        ("linux/arm64", ARM64),
        ("linux/arm64/v8", ARM64),
        ("linux/arm64/8", ARM64),
        ("aarch64", ARM64),
        ("linux/aarch64/v8", ARM64),
        ("linux/arm64/9", "linux/arm64/v9"),
        ("linux/arm", "linux/arm/v7"),
        ("arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("i386", "linux/386"),
        ("linux/s390x", S390X),
        ("windows/amd64", "windows/amd64"),
    ],
)
def test_a_platform_is_read_as_containerd_reads_it_and_written_in_one_form(written, canonical):
    assert mi.parse_platform(written) == canonical


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("", "'' is not a platform"),
        ("linux", "'linux' names an operating system alone"),  # containerd would add the host's architecture
        ("linux/amd46", "'amd46' is no architecture containerd knows"),
        ("lnux/amd64", "'lnux' is no operating system containerd knows"),
        ("amd64/linux", "'amd64' is no operating system containerd knows"),
        ("linux/amd64/v2/x", "is not a platform"),
        ("linux//amd64", "is not a platform"),
        ("linux/*", "is not a platform"),
        ("linux/amd64 ", "is not a platform"),
        ("linux/arm64/v8.0", "is not a platform"),  # containerd's parts are [A-Za-z0-9_-]+
        ("windows(10.0.17763)/amd64", "is not a platform"),
    ],
)
def test_what_is_not_a_platform_is_refused_saying_why(written, why):
    with pytest.raises(ValueError) as error:
        mi.parse_platform(written)
    assert why in str(error.value)
    assert str(error.value).endswith("e.g. linux/amd64 or linux/arm64")


def test_a_list_keeps_its_order_and_names_a_platform_written_twice():
    assert mi.parse_platforms("linux/arm64, amd64") == (ARM64, AMD64)
    with pytest.raises(
        ValueError, match=r"'linux/arm64/v8' and 'aarch64' are both linux/arm64: list it once"
    ):
        mi.parse_platforms("linux/arm64/v8,linux/amd64,aarch64")
    with pytest.raises(ValueError, match="'' is not a platform"):
        mi.parse_platforms("linux/amd64,")


@pytest.mark.parametrize(
    ("described", "canonical"),
    [
        (("linux", "arm64", "v8"), ARM64),
        (("linux", "arm", ""), "linux/arm/v7"),
        (("Linux", "x86_64", ""), AMD64),
        (("unknown", "unknown", ""), "unknown/unknown"),  # never refused: an index may say anything
    ],
)
def test_an_index_entry_is_compared_in_the_same_form(described, canonical):
    assert mi.normalize_platform(*described) == canonical


# --- IMAGE_PLATFORMS ---------------------------------------------------------------


def test_the_entries_are_kept_in_canonical_form():
    assert mi.validate_platforms({"base": ("linux/amd64", "aarch64")}, SMALL) == {"base": BOTH}
    assert mi.validate_platforms({}, SMALL) == {}


@pytest.mark.parametrize(
    ("platforms", "message"),
    [
        ({"nope": BOTH}, "IMAGE_PLATFORMS lists nope, which is not an image of IMAGES_TO_DEPENDENCIES"),
        ({"base": ()}, "IMAGE_PLATFORMS: base must list its platforms as a tuple of one or more"),
        ({"base": "linux/amd64"}, "IMAGE_PLATFORMS: base must list its platforms as a tuple of one or more"),
        ({"base": ("linux/amd64", "linux/amd46")}, "IMAGE_PLATFORMS: base: 'linux/amd46': 'amd46' is no"),
        (
            {"base": ("linux/arm64", "linux/arm64/v8")},
            "IMAGE_PLATFORMS: base: 'linux/arm64' and 'linux/arm64/v8'",
        ),
    ],
)
def test_a_wrong_entry_stops_every_run_with_one_line(platforms, message, capsys):
    with pytest.raises(mi.ManageImagesError, match=message.replace("(", r"\(")):
        mi.validate_platforms(platforms, SMALL)
    assert mi.main(["--graph", "--images", "all"], graph=SMALL, platforms=platforms) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1


def test_the_platform_flag_replaces_the_entries_of_the_runs_images_only():
    entries = {"base": BOTH, "cmake": BOTH}
    assert mi.run_platforms(["cmake"], entries, None) == entries
    assert mi.run_platforms(["cmake"], entries, (S390X,)) == {"base": BOTH, "cmake": (S390X,)}
    assert mi.run_platforms(["util", "cmake"], {}, (ARM64,)) == {"util": (ARM64,), "cmake": (ARM64,)}


# --- The subset rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("platforms", "engine", "conflicts"),
    [
        ({}, None, []),
        ({}, AMD64, []),
        ({"base": BOTH, "util": BOTH, "cmake": BOTH}, None, []),
        ({"base": BOTH, "util": BOTH, "cmake": (ARM64,)}, None, []),  # a subset
        # A platform one parent lacks.
        ({"base": BOTH, "util": (AMD64,), "cmake": BOTH}, None, [("cmake", "util", (ARM64,), (AMD64,))]),
        # Without an engine, a parent without an entry is built for a platform nobody can name.
        ({"base": BOTH, "cmake": BOTH}, None, [("cmake", "util", BOTH, ())]),
        ({"base": (AMD64,), "cmake": (AMD64,)}, None, [("cmake", "util", (AMD64,), ())]),
        # ... and the engine's, once it is known.
        ({"base": BOTH, "cmake": BOTH}, AMD64, [("cmake", "util", (ARM64,), (AMD64,))]),
        ({"base": (AMD64,), "cmake": (AMD64,)}, AMD64, []),
        # A child without an entry is built for the engine's platform: unknown to --check...
        ({"base": (ARM64,), "util": (ARM64,)}, None, []),
        # ... and a conflict when the engine's platform is not its parents'.
        ({"base": (ARM64,), "util": BOTH}, AMD64, [("cmake", "base", (AMD64,), (ARM64,))]),
        ({"base": (ARM64,), "util": (ARM64,)}, ARM64, []),
    ],
)
def test_a_child_is_built_only_for_platforms_each_parent_has(platforms, engine, conflicts):
    found = mi.platform_conflicts(list(SMALL), SMALL, platforms, engine)
    assert [tuple(conflict) for conflict in found] == conflicts


def test_a_conflict_names_both_images_and_the_platforms():
    lacks = mi.PlatformConflict("cmake", "util", (ARM64,), (AMD64,))
    assert mi.conflict_message(lacks, {"util": (AMD64,), "cmake": BOTH}) == (
        "cmake is built for linux/arm64 but its parent util is not (util: linux/amd64); add linux/arm64 to "
        "util in IMAGE_PLATFORMS, or drop it from cmake"
    )
    unknown = mi.PlatformConflict("cmake", "util", BOTH, ())
    assert mi.conflict_message(unknown, {"cmake": BOTH}) == (
        "cmake is built for linux/amd64, linux/arm64 but its parent util has no IMAGE_PLATFORMS entry, so it "
        "is built for the engine's platform alone; list linux/amd64, linux/arm64 for util too"
    )
    engine = mi.PlatformConflict("cmake", "util", (ARM64,), (AMD64,))
    assert "so it is built for the engine's platform, linux/amd64 alone" in mi.conflict_message(
        engine, {"cmake": BOTH}
    )
    # Once the engine is known, a child without an entry is built for the engine's platform.
    child = mi.PlatformConflict("cmake", "base", (AMD64,), (ARM64,))
    assert mi.conflict_message(child, {"base": (ARM64,)}) == (
        "cmake is built for the engine's platform, linux/amd64 (it has no IMAGE_PLATFORMS entry), but its parent "
        "base is not (base: linux/arm64); build it on an engine of one of base's platforms, or list the "
        "platforms of cmake in IMAGE_PLATFORMS"
    )


# --- What an engine can build --------------------------------------------------------

CLASSIC = mi.Engine("20.10.24", "20.10.24", "classic", "overlay2")
OLD_BUILDKIT = mi.Engine("20.10.24", "20.10.24", "buildkit", "overlay2")
OVERLAY = mi.Engine("26.1.5", "26.1.5", "buildkit", "overlay2", "0.13.1")
CONTAINERD = mi.Engine("26.1.5", "26.1.5", "buildkit", "containerd", "0.13.1")
# A --builder of another driver (kubernetes, docker-container): no image store, builds indexes.
ELSEWHERE = mi.Engine("", "v0.13.2", "buildkit", "none", "0.13.1", AMD64, "kubernetes")
ARM_HOST = CONTAINERD._replace(platform=ARM64)
NATIVE = (AMD64, "linux/amd64/v2", "linux/amd64/v3")
EMULATED = (*NATIVE, ARM64, "linux/riscv64")


@pytest.mark.parametrize(
    ("engine", "wanted", "offered", "run_line", "refusal"),
    [
        # The engine's own platform alone, or none asked: as always.
        (CLASSIC, (), (), 3, ""),
        (CLASSIC, (AMD64,), (), 3, ""),
        (ARM_HOST, (ARM64,), (ARM64,), 3, ""),
        # The classic builder: the engine's platform only, RUN or not.
        (CLASSIC, BOTH, NATIVE, 0, "several platforms (linux/amd64, linux/arm64), and the classic builder"),
        (
            CLASSIC,
            (ARM64,),
            EMULATED,
            0,
            "linux/arm64, not the engine's linux/amd64, and the classic builder",
        ),
        # BuildKit built into an old CLI: no buildx to build or ask with.
        (
            OLD_BUILDKIT,
            (ARM64,),
            EMULATED,
            0,
            "and BuildKit built into this docker CLI cannot: install docker-buildx",
        ),
        # The docker driver on a graph-driver store holds no index, whatever it emulates.
        (
            OVERLAY,
            BOTH,
            EMULATED,
            0,
            "BuildKit's docker driver on the overlay2 image store cannot build an index",
        ),
        # A builder of another driver keeps no image store and builds an index (#31 meets #32).
        (ELSEWHERE, BOTH, EMULATED, 4, ""),
        (ELSEWHERE, BOTH, NATIVE, 4, "is to be built for linux/arm64 and runs commands"),
        # One foreign platform: RUN needs emulation, COPY alone does not.
        (OVERLAY, (ARM64,), NATIVE, 4, "runs commands (RUN on line 4 of build_tools/docker/base/Dockerfile)"),
        (OVERLAY, (ARM64,), NATIVE, 0, ""),
        (OVERLAY, (ARM64,), EMULATED, 4, ""),
        # The containerd store holds an index; each platform a RUN runs on must be offered.
        (CONTAINERD, BOTH, NATIVE, 4, "is to be built for linux/arm64 and runs commands"),
        (CONTAINERD, BOTH, NATIVE, 0, ""),
        (CONTAINERD, BOTH, EMULATED, 4, ""),
        (CONTAINERD, (AMD64, S390X), EMULATED, 4, "the builder cannot run linux/s390x programs"),
        (ARM_HOST, BOTH, (ARM64,), 2, "is to be built for linux/amd64 and runs commands"),
    ],
)
def test_what_an_engine_cannot_build_is_one_line_naming_image_platform_and_remedy(
    engine, wanted, offered, run_line, refusal
):
    said = mi.build_refusal("base", wanted, engine, offered, run_line)
    assert (refusal in said) if refusal else said == ""
    if said:
        assert said.startswith("base is to be built for ") and "\n" not in said
        remedy = {
            "classic": "install docker-buildx",
            "built into": "install docker-buildx",
            "docker driver": "turn on the containerd image store",
            "runs commands": "install QEMU's binfmt handlers (apt-get install qemu-user-static binfmt-support",
        }
        assert any(remedy[key] in said for key in remedy if key in said)


def test_the_emulation_advice_names_the_architecture_to_install():
    said = mi.build_refusal("cmake", BOTH, CONTAINERD, NATIVE, 7)
    assert said == (
        "cmake is to be built for linux/arm64 and runs commands (RUN on line 7 of "
        "build_tools/docker/cmake/Dockerfile), but the builder cannot run linux/arm64 programs (it lists "
        "linux/amd64, linux/amd64/v2, linux/amd64/v3): install QEMU's binfmt handlers (apt-get install "
        "qemu-user-static binfmt-support, or docker run --privileged --rm tonistiigi/binfmt --install arm64), "
        "or build on a linux/arm64 machine"
    )


# What `docker buildx inspect` printed on this machine's containerd engine (buildx 0.13.1),
# before and after `apt-get install qemu-user-static binfmt-support`; and a two-node builder.
INSPECT_NATIVE = """Name:   default
Driver: docker

Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.0.0+unknown
Platforms:        linux/amd64, linux/amd64/v2, linux/amd64/v3, linux/amd64/v4
Labels:
 org.mobyproject.buildkit.worker.executor:             containerd
"""
INSPECT_QEMU = INSPECT_NATIVE.replace(
    "linux/amd64/v4\n",
    "linux/amd64/v4, linux/arm64, linux/riscv64, linux/ppc64, linux/ppc64le, linux/s390x, "
    "linux/mips64le, linux/mips64, linux/loong64\n",
)
INSPECT_NODES = """Name:          multi
Driver:        docker-container
Nodes:
Name:      multi0
Platforms: linux/amd64*, linux/386
Name:      multi1
Platforms: linux/arm64*, linux/arm/v7, linux/arm/v6, linux/amd64
"""


@pytest.mark.parametrize(
    ("output", "offered"),
    [
        (INSPECT_NATIVE, (AMD64, "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4")),
        (
            INSPECT_QEMU,
            (AMD64, "linux/amd64/v2", "linux/amd64/v3", "linux/amd64/v4", ARM64, "linux/riscv64")
            + ("linux/ppc64", "linux/ppc64le", S390X, "linux/mips64le", "linux/mips64", "linux/loong64"),
        ),
        (INSPECT_NODES, (AMD64, "linux/386", ARM64, "linux/arm/v7", "linux/arm/v6")),
        ("", ()),
    ],
)
def test_the_builders_platforms_are_read_from_buildx_inspect(output, offered):
    assert mi.builder_platforms(output) == offered


@pytest.mark.parametrize(
    ("dockerfile", "line"),
    [
        (b"FROM scratch\nCOPY a /a\nENV X=1\nLABEL a=b\n", 0),
        (b"FROM scratch\nCOPY a /a\nrun true\n", 3),
        (b"# RUN in a comment\nFROM x\nRUN \\\n  true\n", 3),
        (b'FROM x\nONBUILD RUN true\nCMD ["run"]\n', 0),  # ONBUILD runs in a child, CMD in a container
        (b"FROM x\nCOPY a /a\nRUN --mount=type=cache,target=/c true\n", 3),
    ],
)
def test_only_a_run_instruction_needs_emulation(dockerfile, line):
    assert mi.first_run_line(dockerfile) == line


# --- What a pin is: an index's platforms --------------------------------------------

DIGESTS = {name: "sha256:" + name * 64 for name in "abcd"}


def descriptor(
    digest: str, os_: str, architecture: str, attestation: bool = False, variant: str = ""
) -> dict:
    platform = {"os": os_, "architecture": architecture, **({"variant": variant} if variant else {})}
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform}
    if attestation:
        entry["annotations"] = {
            "vnd.docker.reference.digest": DIGESTS["a"],
            "vnd.docker.reference.type": "attestation-manifest",
        }
    return entry


def test_an_index_lists_its_platforms_leaving_attestations_out():
    index = {
        "manifests": [
            descriptor(DIGESTS["a"], "linux", "amd64"),
            descriptor(DIGESTS["b"], "linux", "arm64", variant="v8"),
            descriptor(DIGESTS["c"], "unknown", "unknown", attestation=True),
            descriptor(DIGESTS["d"], "unknown", "unknown"),  # not annotated: an image of no platform
        ]
    }
    assert mi.index_entries(index) == [
        (AMD64, DIGESTS["a"]),
        (ARM64, DIGESTS["b"]),
        ("unknown/unknown", DIGESTS["d"]),
    ]
    manifest = mi.Manifest(OCI_INDEX, json.dumps(index).encode(), DIGESTS["a"])
    assert mi.pin_kind(manifest) == {
        "kind": "index",
        "media_type": OCI_INDEX,
        "platforms": [AMD64, ARM64, "unknown/unknown"],
        "attestations": 1,
    }
    single = mi.Manifest(OCI_MANIFEST, b'{"schemaVersion": 2, "config": {}}', DIGESTS["a"])
    assert mi.pin_kind(single) == {
        "kind": "manifest",
        "media_type": OCI_MANIFEST,
        "platforms": None,
        "attestations": 0,
    }


@pytest.mark.parametrize(
    ("held", "gaps"),
    [
        ([AMD64, ARM64], ([], [], [])),
        ([ARM64, AMD64], ([], [], [])),
        ([AMD64], ([ARM64], [], [])),
        ([AMD64, ARM64, S390X], ([], [S390X], [])),
        ([AMD64, AMD64, ARM64], ([], [], [AMD64])),
        ([], (list(BOTH), [], [])),
    ],
)
def test_an_index_holds_exactly_the_platforms_wanted(held, gaps):
    assert mi.platform_gaps(BOTH, held) == gaps


# --- The flag ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--build", "--platform", "linux/amd46"], "--platform: 'linux/amd46': 'amd46' is no architecture"),
        (
            ["--build", "--platform", "linux/amd64,amd64"],
            "--platform: 'linux/amd64' and 'amd64' are both linux/amd64",
        ),
        (["--build", "--platform", ""], "--platform: '' is not a platform"),
        (["--check", "--platform", AMD64], "--platform goes with --build or --verify_pinned"),
        (["--push", "--platform", AMD64], "--platform goes with --build or --verify_pinned"),
        (["--promote", "--platform", AMD64], "--platform goes with --build or --verify_pinned"),
        (
            ["--build", "--update_references", "--platform", AMD64],
            "--platform does not go with --update_references",
        ),
    ],
)
def test_a_bad_platform_flag_is_a_usage_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        mi.main(["--image", "base", *args], graph=SMALL)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and f": error: {message}" in err
    assert list(tmp_path.iterdir()) == []


# --- --check: the subset rule on a tree --------------------------------------------


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """The fake world of the original graph, consistent, as the current directory."""
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, ORIGINAL_GRAPH)
    monkeypatch.chdir(root)
    return root


def check(capsys, platforms, *images: str) -> tuple[int, list[str]]:
    argv = ["--check", *[arg for image in images or ("all",) for arg in ("--images", image)]]
    code = mi.main(argv, graph=ORIGINAL_GRAPH, platforms=platforms)
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


def line_of(root, image: str, text: str) -> int:
    lines = (root / f"build_tools/docker/{image}/Dockerfile").read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def test_check_passes_when_every_child_has_its_platforms_from_each_parent(tree, capsys):
    platforms = {"base": BOTH, "util": BOTH, "cmake": BOTH, "cmake-python": (ARM64,)}
    assert check(capsys, platforms) == (
        0,
        [
            f"Checked {len(ORIGINAL_GRAPH)} images: the graph, the Dockerfiles, the references and "
            f"{PROD} agree."
        ],
    )


def test_check_names_a_child_whose_platform_a_parent_lacks_on_the_line_using_it(tree, capsys):
    platforms = {"base": BOTH, "util": (AMD64,), "cmake": BOTH}
    code, out = check(capsys, platforms)
    assert code == 1
    path = "build_tools/docker/cmake/Dockerfile"
    assert out == [
        f"{path}:{line_of(tree, 'cmake', '/util@')}: cmake is built for linux/arm64 but its parent util is "
        "not (util: linux/amd64); add linux/arm64 to util in IMAGE_PLATFORMS, or drop it from cmake",
        f"Checked {len(ORIGINAL_GRAPH)} images: 1 problem found.",
    ]


def test_check_names_a_child_with_platforms_whose_parent_has_no_entry(tree, capsys):
    # base has none: built for whatever engine builds it, which no platform list can promise.
    code, out = check(capsys, {"util": BOTH, "bazel": BOTH})
    assert code == 1
    assert out[:-1] == [
        f"build_tools/docker/bazel/Dockerfile:{line_of(tree, 'bazel', '/base@')}: bazel is built for "
        "linux/amd64, linux/arm64 but its parent base has no IMAGE_PLATFORMS entry, so it is built for the "
        "engine's platform alone; list linux/amd64, linux/arm64 for base too"
    ]


def test_check_says_nothing_of_a_child_without_an_entry(tree, capsys):
    # cmake is built for the engine's platform: --check cannot know it; the run that builds it checks it.
    assert check(capsys, {"base": (ARM64,), "util": (ARM64,)})[0] == 0


def test_check_looks_at_the_selected_images_and_their_dependents_only(tree, capsys):
    platforms = {"vulkan": BOTH, "rbe-toolchain": BOTH}  # vulkan's parent util has no entry
    code, out = check(capsys, platforms, "rbe-toolchain")
    assert code == 0, out
    code, out = check(capsys, platforms, "util")
    assert code == 1 and out[0].startswith("build_tools/docker/vulkan/Dockerfile:")


# --- --verify_pinned and --check --json against a real registry --------------------


def push_index(registry, image: str, platforms, label: str, attestations: bool = False) -> str:
    """An OCI index of one image manifest per platform (and, with `attestations`, an
    attestation manifest per image, as BuildKit adds them), tagged latest; its digest."""
    entries = []
    for platform in platforms:
        digest = registry.push_image(
            image, layers=[f"{platform} {label}".encode()], platform=platform, label=label
        )
        os_, architecture = platform.split("/")[:2]
        entries.append(entry_of(registry, image, digest, {"os": os_, "architecture": architecture}))
    for attested in list(entries) if attestations else []:
        digest = registry.push_image(
            image, layers=[f"provenance {attested['digest']}".encode()], platform="unknown/unknown"
        )
        entry = entry_of(registry, image, digest, {"os": "unknown", "architecture": "unknown"})
        entry["annotations"] = {
            "vnd.docker.reference.digest": attested["digest"],
            "vnd.docker.reference.type": "attestation-manifest",
        }
        entries.append(entry)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = registry.push_manifest(image, mi.body_digest(index), index, OCI_INDEX)
    registry.push_manifest(image, "latest", index, OCI_INDEX)
    return digest


def entry_of(registry, image: str, digest: str, platform: dict) -> dict:
    _, data = registry.manifest(image, digest)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data), "platform": platform}


def platform_image(registry, image: str, index: str, platform: str) -> str:
    """The digest of the index's image for `platform`, as the registry serves the index."""
    entries = json.loads(registry.manifest(image, index)[1])["manifests"]
    return next(
        e["digest"]
        for e in entries
        if "/".join((e["platform"]["os"], e["platform"]["architecture"])) == platform
    )


def retag(registry, image: str, digest: str) -> None:
    """Points :latest at `digest`, so the pin and the tag agree (no drift finding)."""
    media_type, data = registry.manifest(image, digest)
    registry.push_manifest(image, "latest", data, media_type)


@pytest.fixture
def world(plain_registry, docker_env, tmp_path, monkeypatch):
    """Makes SMALL's tree pinning the digests given (the other images: one amd64 manifest
    each, tagged latest) in the current directory; returns (registry, make)."""

    def make(**pins: str):
        digests = {
            image: pins.get(image)
            or plain_registry.push_image(image, "latest", layers=[f"{image} {tmp_path.name}".encode()])
            for image in SMALL
        }
        root = fake_tree.make_tree(tmp_path / "repo", plain_registry.url, SMALL, digests)
        monkeypatch.chdir(root)
        return root

    return plain_registry, make


def verify(registry, capsys, platforms, *args: str) -> tuple[int, list[str]]:
    """--verify_pinned of SMALL (or the images `args` name); its exit code and its lines."""
    images = [] if "--image" in args else ["--images", "all"]
    code = mi.main(
        ["--registry", registry.url, *images, "--verify_pinned", *args], graph=SMALL, platforms=platforms
    )
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


def rebuild(image: str) -> str:
    return f"rebuild and re-pin it: manage_images.py --image {image} --build --push --update_references"


def test_a_pinned_index_of_exactly_the_platforms_passes_attestations_and_all(world, tmp_path, capsys):
    registry, make = world
    index = push_index(registry, "base", BOTH, tmp_path.name, attestations=True)
    root = make(base=index)
    tracked = fake_tree.tracked_files(root)
    before = registry.log_size()
    assert verify(registry, capsys, {"base": BOTH}) == (
        0,
        [
            f"Verified {len(SMALL)} images: {registry.url} serves every pinned digest, and :latest as it; each "
            "pin holds the platforms its image is built for."
        ],
    )
    # The index read once, and a HEAD of each platform's image: nothing written.
    asked = [request[:2] for request in registry.requests(before, agent=mi.USER_AGENT)]
    images = [platform_image(registry, "base", index, platform) for platform in BOTH]
    assert ("GET", f"/v2/iree-oss/base/manifests/{index}") in asked
    assert all(("HEAD", f"/v2/iree-oss/base/manifests/{digest}") in asked for digest in images)
    assert {method for method, _ in asked} <= {"GET", "HEAD"}
    assert fake_tree.tracked_files(root) == tracked and registry.digest("base", "latest") == index
    # The same with --platform instead of an entry, for base and its dependent cmake (the run's images).
    retag(registry, "cmake", push_index(registry, "cmake", BOTH, tmp_path.name))
    prod = root / PROD
    prod.write_text(
        prod.read_text().replace(
            mi.pins_by_name(mi.parse_prod_digests(prod.read_bytes())[0], registry.url)["cmake"],
            registry.digest("cmake", "latest"),
        )
    )
    code, lines = verify(registry, capsys, {}, "--image", "base", "--platform", "linux/amd64,linux/arm64/v8")
    assert code == 0, lines


def test_a_pin_replaced_by_one_platforms_manifest_names_the_image_and_the_platform(world, tmp_path, capsys):
    registry, make = world
    index = push_index(registry, "base", BOTH, tmp_path.name)
    single = platform_image(registry, "base", index, AMD64)
    retag(registry, "base", single)
    make(base=single)
    code, lines = verify(registry, capsys, {"base": BOTH})
    assert code == 1
    assert lines == [
        f"{PROD}:1: base: the pin {registry.url}/base@{single[:19]} is one image manifest (linux/amd64), not "
        f"an index of linux/amd64, linux/arm64: it has no linux/arm64; {rebuild('base')}",
        f"Verified {len(SMALL)} images in {registry.url}: 1 problem found.",
    ]
    # One platform listed: an image manifest of that platform is what a one-platform build pushes.
    assert verify(registry, capsys, {"base": (AMD64,)})[0] == 0
    code, lines = verify(registry, capsys, {"base": (ARM64,)})
    assert code == 1 and lines[0].endswith(
        f"not an index of linux/arm64: it has no linux/arm64; {rebuild('base')}"
    )


@pytest.mark.parametrize(
    ("held", "problems"),
    [
        ((AMD64,), ["has no linux/arm64 image, which base is built for"]),
        (
            (ARM64, S390X),
            [
                "has no linux/amd64 image, which base is built for",
                "holds a linux/s390x image, which base is not built for",
            ],
        ),
        ((AMD64, ARM64, AMD64), ["holds linux/amd64 twice"]),
    ],
)
def test_an_index_with_a_missing_extra_or_doubled_platform_names_it(world, tmp_path, capsys, held, problems):
    registry, make = world
    index = push_index(registry, "base", held, tmp_path.name)
    make(base=index)
    code, lines = verify(registry, capsys, {"base": BOTH, "cmake": (AMD64,)})
    assert code == 1
    assert lines[:-1] == [
        f"{PROD}:1: base: the index {registry.url}/base@{index[:19]} {problem}; {rebuild('base')}"
        for problem in problems
    ]
    assert (
        lines[-1]
        == f"Verified {len(SMALL)} images in {registry.url}: {len(problems)} problem{'s' * (len(problems) > 1)} found."
    )


def test_an_index_whose_platform_image_is_gone_names_the_platform(world, tmp_path, capsys):
    registry, make = world
    index = push_index(registry, "base", BOTH, tmp_path.name)
    make(base=index)
    gone = platform_image(registry, "base", index, ARM64)
    status, _, body = registry.request("DELETE", f"/v2/iree-oss/base/manifests/{gone}")
    assert status == 202, body
    code, lines = verify(registry, capsys, {"base": BOTH})
    assert code == 1
    assert lines[0] == (
        f"{PROD}:1: base: the index {registry.url}/base@{index[:19]} lists a linux/arm64 image {gone[:19]} the "
        "registry does not serve; push it again (manage_images.py --image base --build --push --update_references)"
    )


def test_the_platform_flag_checks_the_runs_images_against_its_list(world, tmp_path, capsys):
    registry, make = world
    index = push_index(registry, "cmake", BOTH, tmp_path.name)
    make(cmake=index)
    code, lines = verify(registry, capsys, {"cmake": BOTH}, "--image", "cmake", "--platform", AMD64)
    assert code == 1
    assert lines == [
        f"{PROD}:3: cmake: the index {registry.url}/cmake@{index[:19]} holds a linux/arm64 image, which cmake "
        f"is not built for; {rebuild('cmake')}",
        f"Verified 1 image in {registry.url}: 1 problem found.",
    ]
    # Without a list (no entry, no flag), an index is a fine pin, as it always was.
    assert verify(registry, capsys, {}, "--image", "cmake")[0] == 0


def test_check_json_says_what_each_pin_is_with_one_get_each_and_plain_check_asks_nothing(
    world, tmp_path, capsys
):
    registry, make = world
    index = push_index(registry, "base", BOTH, tmp_path.name, attestations=True)
    missing = "sha256:" + "e" * 64
    root = make(base=index, cmake=missing)
    before = registry.log_size()
    code = mi.main(["--registry", registry.url, "--check", "--images", "all"], graph=SMALL)
    capsys.readouterr()
    assert registry.requests(before) == []  # offline, as it always was
    report = tmp_path / "check.json"
    assert (
        mi.main(
            ["--registry", registry.url, "--check", "--images", "all", "--json", str(report)], graph=SMALL
        )
        == code
    )
    assert capsys.readouterr().err == ""
    pins = {pin["name"]: pin for pin in json.loads(report.read_text())["pins"]}
    util = mi.pins_by_name(mi.parse_prod_digests((root / PROD).read_bytes())[0], registry.url)["util"]
    assert pins["base"] == {
        "name": "base",
        "digest": index,
        "kind": "index",
        "media_type": OCI_INDEX,
        "platforms": list(BOTH),
        "attestations": 2,
        "error": None,
    }
    assert pins["util"] == {
        "name": "util",
        "digest": util,
        "kind": "manifest",
        "media_type": OCI_MANIFEST,
        "platforms": None,
        "attestations": 0,
        "error": None,
    }
    assert set(pins["cmake"]) == set(pins["base"]) and pins["cmake"]["kind"] is None
    assert pins["cmake"]["error"] == (
        f"{registry.host} does not serve {registry.url}/cmake@{missing} (HTTP 404: MANIFEST_UNKNOWN: manifest "
        "unknown); check the pin, or push the image first"
    )
    assert list(pins) == list(mi.ordered_images_to_process(sorted(SMALL), SMALL))
    # The ping, then one GET of each pin, and nothing else.
    asked = sorted(request[:2] for request in registry.requests(before, agent=mi.USER_AGENT))
    assert asked == sorted(
        [("GET", "/v2/")]
        + [("GET", f"/v2/iree-oss/{image}/manifests/{pins[image]['digest']}") for image in SMALL]
    )
