"""What a build reads, without an engine: the .dockerignore read as docker reads it
(moby's ignorefile and patternmatcher), the context walked as each builder walks
it, the Dockerfile's sources, and the one digest of an image's inputs.

tests/test_e2e_context.py holds the same reading against what real engines send.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import manage_images as mi
from helpers import D1, D2, REGISTRY

URL = f"{REGISTRY}/cmake"


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        (".", "."),
        ("a/", "a"),
        ("./a//b/.", "a/b"),
        ("a/../b", "b"),
        ("a/../..", ".."),
        ("../a", "../a"),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("/", "/"),
    ],
)
def test_patterns_are_cleaned_as_go_cleans_paths(path, cleaned):
    assert mi.go_clean(path) == cleaned


def patterns(text: str) -> list[tuple[str, bool]]:
    return [(rule.pattern, rule.exception) for rule in mi.dockerignore_rules(text.encode())]


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("a\nb\n", [("a", False), ("b", False)]),
        ("# comment\n#b\n", []),
        # Only a `#` in the first column starts a comment.
        ("  # not a comment\n", [("# not a comment", False)]),
        ("\ufeffa\n\ufeffb\n", [("a", False), ("\ufeffb", False)]),
        ("  a  \r\n\t\n", [("a", False)]),
        # Go's white space is not Python's: \x1c is a name's character to Go.
        ("\x1ca\n", [("\x1ca", False)]),
        ("/a/b\n./c\nd/\n", [("a/b", False), ("c", False), ("d", False)]),
        ("!a\n! /b\n!./c/../d\n", [("a", True), ("b", True), ("d", True)]),
        ("/\n", [("/", False)]),
        ("a/ /\n", [("a", False)]),
        ("!!a\n", [("!a", True)]),
    ],
)
def test_a_dockerignore_is_read_as_docker_reads_it(text, read):
    assert patterns(text) == read


@pytest.mark.parametrize(
    "text",
    [
        "!\n",
        "! \n",
        "!/\n",
        "[\n",
        "a[\n",
        "[]a]\n",
        "[a-\n",
        "[^]\n",
        "a\\\n",
        "[z-a]\n",  # Go's Match takes it; its regexp does not compile, so the build fails
        "a\\d\n",  # Go's regexp reads \d as a digit: refused rather than guessed
        "[[:alpha:]]\n",
        "x" * mi.SCAN_LINE_MAX + "\n",
    ],
)
def test_what_docker_refuses_or_reads_otherwise_is_refused(text):
    with pytest.raises(ValueError):
        mi.dockerignore_rules(text.encode())


def excluded(text: str, path: str) -> bool:
    """`path` as a walk reaches it: each folder above it matched first."""
    rules = mi.dockerignore_rules(text.encode())
    parts = path.split("/")
    matched: tuple[bool, ...] = ()
    for depth in range(1, len(parts)):
        _, matched = mi.ignored(rules, "/".join(parts[:depth]), matched)
    walked, _ = mi.ignored(rules, path, matched)
    alone, _ = mi.ignored(rules, path)  # no walk: the folders above are tried by the rule itself
    assert walked == alone, (text, path)
    return walked


@pytest.mark.parametrize(
    ("text", "path", "out"),
    [
        ("*", "x.go", True),
        ("*", "d/x.go", True),  # its folder d matches
        ("*.go", "d/x.go", False),
        ("d/*.go", "d/x.go", True),
        ("d/*.go", "d/e/x.go", False),
        ("**/*.go", "x.go", True),
        ("**/*.go", "d/e/x.go", True),
        ("**", "anything/at/all", True),
        ("d/**", "d", False),
        ("d/**", "d/e/f", True),
        ("d**", "dx/y", True),  # a trailing ** is a prefix
        ("**x", "d/ax", True),  # a leading ** is a suffix
        ("**/x", "x", True),
        ("**/x", "ax", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/c/d/b", True),
        ("?.md", "a.md", True),
        ("?.md", "ab.md", False),
        ("a?b", "a/b", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("[!a]x", "!x", True),  # `!` in a class is a member; `^` negates
        ("a.b", "axb", False),
        ("a+(b)|{c}$", "a+(b)|{c}$", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a\\\\", "a\\", True),
        ("docs\n!docs/README.md", "docs/README.md", False),
        ("docs\n!docs/README.md", "docs/other.md", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
        ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
        ("!a.md\n*.md", "a.md", True),  # an exception before the pattern changes nothing
        ("**\n!d/e", "d/e/f", False),
        ("**\n!d/e\nd/e/f", "d/e/f", True),
        ("/a/b", "a/b", True),
        ("a/b/", "a/b/c", True),
    ],
)
def test_a_path_is_excluded_as_patternmatcher_decides(text, path, out):
    assert excluded(text, path) == out


def test_a_walk_decides_with_the_rules_each_folder_matched():
    # A file excluded, then its folder as an exception: the exception is not tried on the
    # folder (nothing excluded it), so the file inside stays excluded in a walk, which both
    # builders do (MatchesUsingParentResults); patternmatcher's MatchesOrParentMatches,
    # which tries the folder with each rule, says otherwise.
    rules = mi.dockerignore_rules(b"docs/README.md\n!docs\n")
    folder_excluded, matched = mi.ignored(rules, "docs")
    assert folder_excluded is False and matched == (False, False)
    assert mi.ignored(rules, "docs/README.md", matched)[0] is True
    assert mi.ignored(rules, "docs/README.md")[0] is False


@pytest.mark.parametrize(
    ("text", "folder", "classic", "buildkit"),
    [
        ("d\n", "d", False, False),
        ("d\n!d/keep", "d", True, True),
        ("d\n!other/keep", "d", False, False),
        ("d\n!d/keep/**", "d", True, True),
        ("d\n!d/*", "d", True, True),
        # A wildcard in an exception: BuildKit looks in every excluded folder; the CLI does not.
        ("*\n!**/keep", "d", False, True),
        ("*\n!d/*/keep", "d", True, True),
        ("*\n!e/*/keep", "d", False, True),
    ],
)
def test_whether_each_builder_looks_inside_an_excluded_folder(text, folder, classic, buildkit):
    rules = mi.dockerignore_rules(text.encode())
    assert mi.walks_into(rules, folder, "classic") == classic
    assert mi.walks_into(rules, folder, "buildkit") == buildkit


def write(root: Path, files: dict[str, str]) -> Path:
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


def test_the_context_is_every_file_on_disk_tracked_or_not_but_what_dockerignore_excludes(tmp_path):
    context = write(
        tmp_path,
        {
            "Dockerfile": "FROM scratch\n",
            ".dockerignore": "*.log\nbuild\n!build/keep\n",
            "src/a.c": "a",
            "untracked.txt": "u",
            "x.log": "l",
            "build/out": "o",
            "build/keep": "k",
        },
    )
    (context / "link").symlink_to("src/a.c")
    entries = {entry.path: entry for entry in mi.context_entries(context)}
    assert set(entries) == {
        "Dockerfile",
        ".dockerignore",
        "src",
        "src/a.c",
        "untracked.txt",
        "link",
        "build",
        "build/keep",
    }
    # The folder build is excluded: BuildKit sends it only to hold build/keep.
    assert entries["build"].kind == "parent"
    assert entries["link"] == mi.ContextEntry("link", "link", 0o777, "src/a.c")
    assert entries["src/a.c"].payload == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"


def test_what_cannot_be_read_whole_makes_the_context_unknown(tmp_path):
    context = write(tmp_path / "c", {"Dockerfile": "FROM scratch\n", "secret": "s", "ignored/secret": "s"})
    (context / ".dockerignore").write_text("ignored\n")
    (context / "ignored" / "secret").chmod(0)
    (context / "ignored").chmod(0)  # excluded: docker never reads it, nor does the tool
    try:
        assert {entry.path for entry in mi.context_entries(context)} == {
            "Dockerfile",
            ".dockerignore",
            "secret",
        }
        if os.geteuid() != 0:  # root reads it anyway
            (context / "secret").chmod(0)
            with pytest.raises(ValueError, match="cannot read secret"):
                mi.context_entries(context)
    finally:
        (context / "ignored").chmod(0o755)
    os.mkfifo(context / "fifo")
    with pytest.raises(ValueError, match="fifo is a FIFO"):
        mi.context_entries(context)
    os.unlink(context / "fifo")
    (context / "Dockerfile.dockerignore").write_text("")
    with pytest.raises(ValueError, match="Dockerfile.dockerignore"):
        mi.context_entries(context)
    (context / "Dockerfile.dockerignore").unlink()
    (context / ".dockerignore").write_text("!\n")
    with pytest.raises(ValueError, match="illegal exclusion"):
        mi.context_entries(context)


FILE = mi.ContextEntry("a", "file", 0o644, "0" * 64)
OPTIONS = (("platform", "linux/amd64"), ("attestations", "false"))


def test_the_inputs_digest_is_one_versioned_sha256_of_every_input():
    digest = mi.inputs_digest(b"FROM scratch\n", [FILE], OPTIONS)
    assert digest.startswith(f"v{mi.INPUTS_VERSION}:sha256:") and len(digest) == len("v1:sha256:") + 64
    # The order entries and options come in does not matter; each of their values does.
    other = mi.ContextEntry("b", "dir", 0o755, "")
    assert mi.inputs_digest(b"FROM scratch\n", [other, FILE], OPTIONS[::-1]) == mi.inputs_digest(
        b"FROM scratch\n", [FILE, other], OPTIONS
    )
    changed = [
        mi.inputs_digest(b"FROM scratch \n", [FILE], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [FILE._replace(payload="1" * 64)], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [FILE._replace(mode=0o755)], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [FILE._replace(path="b")], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [FILE._replace(kind="link")], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [], OPTIONS),
        mi.inputs_digest(b"FROM scratch\n", [FILE], (*OPTIONS, ("build-arg", "A=1"))),
        mi.inputs_digest(b"FROM scratch\n", [FILE], (("platform", "linux/arm64"), OPTIONS[1])),
    ]
    assert len({digest, *changed}) == len(changed) + 1
    # Fields cannot run into each other: a path ending in what would be the next field's text.
    one = mi.inputs_digest(b"", [mi.ContextEntry("a", "link", 0o777, "b")], ())
    assert one != mi.inputs_digest(b"", [mi.ContextEntry("ab", "link", 0o777, "")], ())


@pytest.mark.parametrize(
    ("dockerfile", "why"),
    [
        (f"FROM {URL}@{D1}\nRUN true\n", ""),
        (f"FROM scratch AS base\nFROM base\nCOPY --from=0 / /\nCOPY --from={URL}@{D2} /a /a\n", ""),
        ("FROM debian@sha256:" + "a" * 64 + " AS x\nFROM x\n", ""),
        ("# syntax=docker/dockerfile:1@sha256:" + "b" * 64 + "\nFROM scratch\n", ""),
        ("FROM debian:bookworm\n", "FROM debian:bookworm: an external image not pinned by digest"),
        (f"FROM {URL}:latest\n", f"FROM {URL}:latest: an image of the graph not pinned by digest"),
        ("ARG BASE\nFROM $BASE\n", "FROM $BASE names its image through a variable"),
        (
            "FROM scratch\nCOPY --from=alpine /x /x\n",
            "COPY --from alpine: an external image not pinned by digest",
        ),
        (
            "FROM scratch\nRUN --mount=type=bind,from=busybox,target=/b true\n",
            "RUN --mount busybox: an external image",
        ),
        (
            "# syntax=docker/dockerfile:1\nFROM scratch\n",
            "its frontend `# syntax=docker/dockerfile:1` is not pinned",
        ),
        ("FROM scratch\nADD https://example.com/a.tgz /a\n", "ADD https://example.com/a.tgz fetches a URL"),
        ("FROM scratch\nADD --checksum=sha256:" + "c" * 64 + " https://example.com/a /a\n", ""),
        ('FROM scratch\nADD ["git@github.com:x/y.git", "/y"]\n', "ADD git@github.com:x/y.git fetches a URL"),
        ("FROM scratch\nADD local.tgz /a\n", ""),
    ],
)
def test_an_image_whose_sources_a_digest_does_not_fix_is_never_unchanged(dockerfile, why):
    found = mi.unknown_sources(dockerfile.encode(), REGISTRY)
    assert found.startswith(why) and bool(found) == bool(why), found


def test_a_dockerfile_is_rebased_on_the_parents_a_run_built():
    data = (
        f"FROM {URL}@{D1} AS final\n# {URL}:prod@{D1}\nCOPY --from={REGISTRY}/util@{D1} / /\n"
        f"COPY --from={REGISTRY}/cmake-python@{D1} / /\n"
    ).encode()
    rebased = mi.rebased_dockerfile(
        data, REGISTRY, {"cmake": f"{URL}@{D2}", "util": f"{REGISTRY}/util:latest"}
    )
    assert (
        rebased
        == (
            f"FROM {URL}@{D2} AS final\n# {URL}:prod@{D2}\nCOPY --from={REGISTRY}/util:latest / /\n"
            f"COPY --from={REGISTRY}/cmake-python@{D1} / /\n"
        ).encode()
    )
    assert mi.rebased_dockerfile(data, REGISTRY, {}) == data


def test_modes_are_the_permission_bits(tmp_path):
    context = write(tmp_path, {"Dockerfile": "FROM scratch\n", "run.sh": "#!/bin/sh\n"})
    (context / "run.sh").chmod(0o4755)
    entries = {entry.path: entry for entry in mi.context_entries(context)}
    assert entries["run.sh"].mode == stat.S_IMODE(os.lstat(context / "run.sh").st_mode) == 0o4755
