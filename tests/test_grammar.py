"""The one reference grammar: `REGISTRY/NAME`, `REGISTRY/NAME:TAG`,
`REGISTRY/NAME@sha256:X` and `REGISTRY/NAME:TAG@sha256:X`, its boundaries, and
every reader of references agreeing on it (the scanner, the naming index, the
rewrite, --check, the pending-edit lookup, Dockerfile parents)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import NEW, rewrite

GRAPH = mi.IMAGES_TO_DEPENDENCIES
# Spelled in pieces so this tree's own --check does not read the test data as references.
REGISTRY = "gcr.io/" + "iree-oss"
P = fake_tree.PLACEHOLDER
OLD = "sha256:" + "d" * 64
HEX = "d" * 64

# (text after REGISTRY/, name, tag, X or None when unpinned)
FORMS = [
    ("cmake", "cmake", None, None),
    ("cmake:latest", "cmake", b"latest", None),
    (f"cmake@sha256:{HEX}", "cmake", None, HEX.encode()),
    (f"cmake:prod@sha256:{HEX}", "cmake", b"prod", HEX.encode()),
    (f"cmake-python:Prod_1.2-x@sha256:{HEX}", "cmake-python", b"Prod_1.2-x", HEX.encode()),
    ("cmake:prod@sha256:abc", "cmake", b"prod", b"abc"),  # pinned, malformed
]
REGISTRIES = [REGISTRY, "127.0.0.1:5000/iree-oss", "Registry.Example.COM:443/iree-oss", "sha256:5000"]


@pytest.mark.parametrize("registry", REGISTRIES)
@pytest.mark.parametrize(("text", "name", "tag", "hexdigits"), FORMS)
@pytest.mark.parametrize(
    ("before", "after"), [(b"", b""), (b"FROM ", b" AS final\n"), (b'"', b'"'), (b"docker://", b"\r\n")]
)
def test_each_form_is_one_reference_with_its_parts(registry, text, name, tag, hexdigits, before, after):
    whole = f"{registry}/{text}".encode()
    data = before + whole + after
    (reference,) = mi.find_references(data, registry)
    assert (reference.name, reference.tag, reference.pinned()) == (name, tag, hexdigits is not None)
    assert data[reference.start : reference.end] == whole
    if hexdigits is not None:
        assert reference.hexdigits == hexdigits
        assert data[reference.hex_start : reference.end] == hexdigits
    else:
        assert (reference.hex_start, reference.hexdigits) == (-1, b"")  # as Reference documents
    assert mi.parse_reference(whole.decode(), registry) == reference._replace(
        start=0, end=len(whole), hex_start=reference.hex_start - len(before) if reference.pinned() else -1
    )


NOT_REFERENCES = [
    "mirror.gcr.io/iree-oss/cmake",  # a longer host
    "x/gcr.io/iree-oss/cmake:latest",  # a longer path on the left
    "Xgcr.io/iree-oss/cmake",  # an upper-case host letter is part of the host
    "gcr.io/iree-oss-staging/cmake",
    "gcr.io/iree-oss/cmake/sub",  # a longer path on the right
    "gcr.io/iree-oss/cmake/sub@sha256:" + HEX,
    "gcr.io/iree-oss/cmake:$TAG",  # not a tag
    "gcr.io/iree-oss/cmake:${TAG}",
    "gcr.io/iree-oss/cmake@sha512:" + HEX,  # another digest
    "gcr.io/iree-oss/cmake@sha256:",  # a placeholder in prose
    "gcr.io/iree-oss/cmake@sha256:...",
    "gcr.io/iree-oss/cmake:prod@sha256:<digest>",
    "gcr.io/iree-oss/cmake-",  # not a name
    "gcr.io/iree-oss/CMake",  # upper case is no repository name
    "gcr.io/iree-oss/cmakeX:latest",
    "gcr.io/iree-oss/cmake:" + "t" * 129,  # a tag has at most 128 characters
    "GCR.IO/iree-oss/cmake",  # the host is matched as written, as Docker keeps it
    "gcr.io:443/iree-oss/cmake",
]


@pytest.mark.parametrize("text", NOT_REFERENCES)
def test_what_is_not_a_reference(text):
    registry = REGISTRY
    text = text.replace("gcr.io/iree-oss/", f"{registry}/").replace("GCR.IO/iree-oss/", "GCR.IO/iree-oss/")
    data = f"run {text} now\n".encode()
    assert list(mi.find_references(data, registry)) == []
    assert rewrite(data, registry, {"cmake": NEW}) == data


def test_a_host_with_upper_case_letters_or_a_port_is_a_registry_of_its_own():
    for registry, other in [
        ("Registry.Example.COM/iree-oss", "registry.example.com/iree-oss"),
        ("127.0.0.1:5000/iree-oss", "127.0.0.1:50001/iree-oss"),
        ("127.0.0.1:5000/iree-oss", "127.0.0.1/iree-oss"),
    ]:
        data = f"{registry}/cmake:prod@{OLD} {other}/cmake:prod@{OLD}".encode()
        assert [ref.name for ref in mi.find_references(data, registry)] == ["cmake"]
        assert rewrite(data, registry, {"cmake": NEW}) == data.replace(OLD.encode(), NEW.encode(), 1)


def test_a_tagged_pin_keeps_its_tag_byte_for_byte_and_an_unpinned_one_is_never_touched():
    data = (
        f"a {REGISTRY}/cmake:Prod-1.x@{OLD} b {REGISTRY}/cmake@{OLD}\n"
        f"c {REGISTRY}/cmake:latest d {REGISTRY}/cmake\n"
    ).encode()
    assert rewrite(data, REGISTRY, {"cmake": NEW}) == data.replace(OLD.encode(), NEW.encode())


# --- Every reader of references agrees ------------------------------------------------

FORMS_FILE = "ci/forms.sh"


def forms_script(digest: str) -> str:
    """A CI script holding every form of a reference to cmake, and near misses."""
    return (
        "#!/bin/bash\n"
        f"docker run {REGISTRY}/cmake@{digest} true\n"
        f"docker run {REGISTRY}/cmake:prod@{digest} true\n"
        f'IMAGE="{REGISTRY}/cmake-python:prod@{digest}"\n'
        f"docker run {REGISTRY}/cmake:latest true\n"
        f"docker run {REGISTRY}/cmake true\n"
        f"docker run {REGISTRY}/cmake:prod@sha256:TODO true\n"
        f"docker run {REGISTRY}/cmake@sha256:<digest> true\n"
        f"docker run mirror.gcr.io/iree-oss/cmake:prod@{digest} true\n"
        f"docker run {REGISTRY}/cmake:latest true  # manage-images: allow-unpinned\n"
    )


@pytest.fixture
def world(tmp_path, monkeypatch):
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, GRAPH)
    (root / "ci").mkdir()
    (root / FORMS_FILE).write_text(forms_script(OLD))
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", "forms")
    monkeypatch.chdir(root)
    return root


def expected_references(data: bytes, image: str) -> tuple[list[int], list[int], list[int]]:
    """Lines of the well-formed pins, the malformed pins and the unpinned references to `image`,
    read here with a parser of its own (each line holds one `docker run` or assignment)."""
    pins, malformed, unpinned = [], [], []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        for word in line.replace('"', " ").replace("=", " ").split():
            if not word.startswith(f"{REGISTRY}/{image}") or word.startswith(f"{REGISTRY}/{image}-"):
                continue
            rest = word[len(f"{REGISTRY}/{image}") :]
            name_tag, at, digest = rest.partition("@")
            if at and digest in ("sha256:<digest>", "sha256:"):
                continue  # placeholder
            if at:
                (pins if mi.DIGEST_RE.match(digest) else malformed).append(number)
            elif "allow-unpinned" not in line:
                unpinned.append(number)
    return pins, malformed, unpinned


def test_every_reader_of_references_sees_the_same_ones(world, capsys):
    data = (world / FORMS_FILE).read_bytes()
    pins, malformed, unpinned = expected_references(data, "cmake")
    assert (pins, malformed, unpinned) == ([2, 3], [7], [5, 6])  # the file is what this test means

    # The scanner.
    found = list(mi.find_references(data, REGISTRY))
    lines = [mi.line_at(data, ref.start) for ref in found if ref.name == "cmake"]
    assert sorted({*pins, *malformed, *unpinned, 10}) == sorted(set(lines))

    # The naming index and the pending-edit lookup.
    scan = mi.scan_tree(world, REGISTRY)
    files = mi.TrackedFiles(world, scan, REGISTRY)
    assert FORMS_FILE in files.naming("cmake") and FORMS_FILE in files.naming("cmake-python")
    edits = mi.Edits(files)
    edits.edit(
        "build_tools/docker/base/Dockerfile", lambda old: old + f"# {REGISTRY}/cmake:prod@{OLD}\n".encode()
    )
    edits.edit("build_tools/docker/util/Dockerfile", lambda old: old + f"# {REGISTRY}/cmake:prod\n".encode())
    assert edits.naming("cmake") == ["build_tools/docker/base/Dockerfile"]

    # --check: each stale pin, each malformed one and each unpinned reference, on its line.
    assert mi.main(["--check", "--images", "all", "--json", "report.json"]) == 1
    capsys.readouterr()
    report = json.loads(Path("report.json").read_text())
    ours = [(f["line"], f["kind"]) for f in report["findings"] if f["path"] == FORMS_FILE]
    stale = [(line, "stale") for line in pins] + [(4, "stale")]  # cmake-python's tagged pin
    assert sorted(ours) == sorted(
        stale + [(line, "malformed") for line in malformed] + [(line, "unpinned") for line in unpinned]
    )

    # The rewrite: --only_references changes the digest of exactly the well-formed pins.
    assert mi.main(["--only_references", "--image", "cmake-python"]) == 0
    assert mi.main(["--only_references", "--image", "cmake", "--json", "only.json"]) == 0
    after = (world / FORMS_FILE).read_bytes()
    expected = data.decode().splitlines(keepends=True)
    for number in [*pins, 4]:
        expected[number - 1] = expected[number - 1].replace(OLD, P)
    assert after.decode() == "".join(expected)
    images = {image["name"]: image for image in json.loads(Path("only.json").read_text())["images"]}
    assert FORMS_FILE in images["cmake"]["files"]
    capsys.readouterr()
    assert mi.main(["--check", "--images", "all"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1] for line in out if line.startswith(FORMS_FILE)] == ["5", "6", "7"]


@pytest.mark.parametrize(("text", "name", "tag", "hexdigits"), FORMS)
def test_dockerfile_parents_are_read_with_the_grammar(text, name, tag, hexdigits):
    source = f"{REGISTRY}/{text}"
    data = f"FROM {source} AS a\nCOPY --from={source} /a /a\nRUN --mount=type=bind,from={source},target=/b true\n"
    parents = mi.registry_parents(data.encode(), REGISTRY)
    digest = f"sha256:{hexdigits.decode()}" if hexdigits is not None else ""
    assert parents == [
        mi.ParentRef(1, "FROM", source, name, digest),
        mi.ParentRef(2, "COPY --from", source, name, digest),
        mi.ParentRef(3, "RUN --mount", source, name, digest),
    ]
    assert {(parent.ref, parent.image) for parent in parents} == {
        (source, ref.name) for ref in mi.find_references(data.encode(), REGISTRY)
    }


def test_changed_since_and_the_json_report_count_a_tagged_pin(world, standin, capsys):
    job = next(script for script, image in fake_tree.CI_SCRIPTS.items() if image == "cmake-python-nvidia")
    relative = f"{fake_tree.KOKORO_DIR}/{job}"
    path = world / relative
    path.write_text(path.read_text().replace(f"/cmake-python-nvidia@{P}", f"/cmake-python-nvidia:prod@{P}"))
    fake_tree.git(world, "commit", "-q", "-am", "a tagged pin")
    (world / "build_tools/docker/cmake-python-nvidia/stamp").write_text("edited\n")
    fake_tree.git(world, "commit", "-q", "-am", "edit the image")
    standin.set(repo_digests={f"{REGISTRY}/{image}:latest": [f"{REGISTRY}/{image}@{NEW}"] for image in GRAPH})
    argv = ["--changed_since", "HEAD~1", "--push", "--update_references", "--json", "report.json"]
    assert mi.main(argv) == 0
    assert f"{REGISTRY}/cmake-python-nvidia:prod@{NEW} " in path.read_text()
    (image,) = json.loads(Path("report.json").read_text())["images"]
    assert (image["name"], image["digest"]["new"]) == ("cmake-python-nvidia", NEW)
    assert relative in image["files"]


@pytest.mark.parametrize(
    "text",
    [
        f"{REGISTRY}/cmake:$TAG",  # no reference at all
        f"x {REGISTRY}/cmake",  # one, but not the whole text
        f"{REGISTRY}/cmake {REGISTRY}/util",  # two
        f"{REGISTRY}/cmake:latest,target=/b",
    ],
)
def test_parse_reference_takes_exactly_one_whole_reference(text):
    assert mi.parse_reference(text, REGISTRY) is None


def test_a_parent_the_grammar_cannot_read_is_an_unpinned_parent_named_as_far_as_it_reads():
    data = f"FROM {REGISTRY}/base:$TAG AS final\nCOPY --from={REGISTRY}/$UTIL /a /a\n".encode()
    assert mi.registry_parents(data, REGISTRY) == [
        mi.ParentRef(1, "FROM", f"{REGISTRY}/base:$TAG", "base", ""),
        mi.ParentRef(2, "COPY --from", f"{REGISTRY}/$UTIL", f"{REGISTRY}/$UTIL", ""),
    ]


# --- A big file is read in pieces ---------------------------------------------------


def big_file(lines: int) -> bytes:
    """Every form of a reference and its near misses, on lines of every length: a
    line longer than a piece, CRLF line ends, lines with no reference between
    those with one, and no newline at the end."""
    block = (
        forms_script(OLD).encode()
        + (
            f"x{REGISTRY}/cmake@{OLD}\n"  # part of a longer host: no reference
            f"see https://{REGISTRY}/cmake@{OLD}\r\n"
            + "filler without a reference\n" * 3
            + "long " * 40
            + f"{REGISTRY}/base:prod@{OLD} "
            + "long " * 40
            + f"{REGISTRY}/util:x\n"
        ).encode()
    )
    return block * lines + f"{REGISTRY}/cmake@{OLD}".encode()


def test_check_finds_in_pieces_what_one_read_of_the_file_finds(world, monkeypatch, capsys):
    data = big_file(60)
    assert len(data) > mi.BINARY_PEEK  # not one the scan already read whole
    (world / "big.conf").write_bytes(data)
    fake_tree.git(world, "add", "big.conf")
    fake_tree.git(world, "commit", "-q", "-m", "a big file")
    prod = mi.pins_by_name(mi.usable_prod_digests((world / mi.PROD_DIGESTS_PATH).read_bytes()), REGISTRY)
    expected = [
        (finding.line, finding.kind, finding.message)
        for finding in mi.reference_findings(
            {"big.conf": data}, REGISTRY, GRAPH, prod, mi.PROD_DIGESTS_PATH, GRAPH
        )
    ]
    assert {kind for _, kind, _ in expected} == {"stale", "malformed", "unpinned"}
    assert expected[-1][0] == data.count(b"\n") + 1  # the last line, with no newline
    for piece in (mi.BIG_FILE, 37, 300):  # one piece; a piece per line or less; several lines a piece
        monkeypatch.setattr(mi, "BIG_FILE", piece)
        assert mi.main(["--check", "--images", "all", "--json", "report.json"]) == 1
        capsys.readouterr()
        report = json.loads(Path("report.json").read_text())
        found = [(f["line"], f["kind"], f["message"]) for f in report["findings"] if f["path"] == "big.conf"]
        assert found == expected, piece
