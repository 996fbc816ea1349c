"""End-to-end: what the tool says docker sends of a build context is what docker
sends, on the engine this session runs on (.ci/run runs all three).

For each .dockerignore of the table, a context of files, folders and a link is
built with `COPY . /ctx` onto scratch; the image's /ctx, as `docker export`
lists it, is what `context_sent` says this builder sends: the same files,
links (and targets) and modes, and the same folders (those sent, and those the
copy makes to hold what is sent). Where the classic builder and BuildKit send
other files, `context_entries` refuses to give one answer, and each engine
sends what `context_sent` says it does.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

import manage_images as mi
from helpers import buildkit

pytestmark = pytest.mark.e2e

# The context: path -> content (None: a folder; "->T": a link to T).
FILES = {
    "Dockerfile": "FROM scratch\nCOPY . /ctx\n",
    "a.txt": "a\n",
    "b.md": "b\n",
    "README.md": "readme\n",
    "README-secret.md": "secret\n",
    "docs/README.md": "docs readme\n",
    "docs/guide.md": "guide\n",
    "docs/sub/deep.md": "deep\n",
    "dir/keep.txt": "keep\n",
    "dir/drop.txt": "drop\n",
    "dir/sub/keep.txt": "sub keep\n",
    "temp": "temp\n",
    "tempa": "tempa\n",
    "somedir/temporary.txt": "t\n",
    "somedir/subdir/temporary.txt": "t\n",
    "node_modules/x/y.js": "y\n",
    "spaced name.txt": "spaced\n",
    "run.sh": "#!/bin/sh\n",
    "link": "->a.txt",
    "emptydir": None,
}
MODES = {"run.sh": 0o755, "b.md": 0o600, "docs/sub": 0o700}

# .dockerignore -> whether the classic builder and BuildKit send the same files.
CASES = {
    "none": (None, True),
    "empty": ("", True),
    "exception after": ("*.md\n!README.md\n", True),
    "last line decides": ("*.md\n!README*.md\nREADME-secret.md\n", True),
    "exception last": ("*.md\nREADME-secret.md\n!README*.md\n", True),
    "one level down": ("*/temp*\n*/*/temp*\ntemp?\n", True),
    "any depth": ("**/*.md\n", True),
    "folder, then a file in it": ("docs\n!docs/README.md\n", True),
    "everything but one": ("*\n!dir/keep.txt\n", True),
    "a wildcard exception": ("*\n!**/keep.txt\n", False),
    "folder contents but a folder": ("dir/*\n!dir/sub\n", True),
    "a file, then its folder as an exception": ("docs/README.md\n!docs\n", True),
    "trailing globs": ("dir/**\n!dir/sub/**\n", True),
    "leading slash, dot and trailing slash": ("/a.txt\n./b.md\nnode_modules/\n", True),
    "comments and white space": ("# a.txt\n  # b.md\n\n  README.md  \r\n", True),
    "a byte order mark": ("\ufeffa.txt\n", True),
    "the build files": ("Dockerfile\n.dockerignore\n", True),
    "all but the build files": ("**\n!Dockerfile\n!a.txt\n", True),
    "a link and an empty folder": ("link\nemptydir\n", True),
    "cleaned parents": ("docs/../dir/./drop.txt\n", True),
    "a class and a question mark": ("[a-b].*\nREADME-?ecret.md\n", True),
    "an escape": ("spaced\\ name.txt\n", True),
}


def make_context(folder: Path, ignore: str | None) -> None:
    for path, content in FILES.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            target.mkdir()
        elif content.startswith("->"):
            target.symlink_to(content[2:])
        else:
            target.write_text(content)
    for path, mode in MODES.items():
        (folder / path).chmod(mode)
    if ignore is not None:
        (folder / ".dockerignore").write_text(ignore)


def docker(*args: str, data: bytes | None = None) -> bytes:
    result = subprocess.run(("docker", *args), capture_output=True, input=data, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def copied(folder: Path, through_buildkit: bool) -> dict[str, tuple[str, int, str]]:
    """What `COPY . /ctx` put in the image: path -> (kind, permission bits, link target).
    BuildKit hands the build's file system over as a tar itself (`--output type=tar`: the
    context is sent as for any build; no image is stored, no container made); the classic
    builder's image is read with `docker export` of a container made from it."""
    if through_buildkit:
        exported = docker("build", "-q", "--output", "type=tar,dest=-", str(folder))
    else:
        tag = f"mi-context-test:{uuid.uuid4().hex[:12]}"
        docker("build", "-q", "--tag", tag, str(folder))
        container = docker("create", tag, "/nothing").decode().strip()
        try:
            exported = docker("export", container)
        finally:
            docker("rm", container)
            docker("image", "rm", tag)
    found = {}
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            if name.startswith("ctx/"):
                kind = "dir" if member.isdir() else "link" if member.issym() else "file"
                found[name[len("ctx/") :]] = (kind, member.mode & 0o7777, member.linkname)
    return found


def expected(sent: dict[str, mi.ContextEntry]) -> dict[str, tuple[str, int, str]]:
    """What the copy of `sent` holds: each file and link with its mode and target, each
    folder sent, and each folder above what is sent (made to hold it; its mode is the
    builder's, so only files' and links' modes are compared)."""
    holds = {}
    for path, entry in sent.items():
        if entry.kind in ("file", "link"):
            holds[path] = (entry.kind, entry.mode, entry.payload if entry.kind == "link" else "")
        parts = path.split("/")
        for depth in range(1, len(parts) + (entry.kind == "dir")):
            holds.setdefault("/".join(parts[:depth]), ("dir", 0, ""))
    return holds


def without_folder_modes(found: dict[str, tuple[str, int, str]]) -> dict[str, tuple[str, int, str]]:
    return {
        path: (kind, 0, "") if kind == "dir" else (kind, mode, link)
        for path, (kind, mode, link) in found.items()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_the_context_the_tool_reads_is_the_one_docker_sends(engine, tmp_path, case):
    ignore, agree = CASES[case]
    folder = tmp_path / "context"
    folder.mkdir()
    make_context(folder, ignore)
    builder = "buildkit" if buildkit() else "classic"
    sent = mi.context_sent(folder)

    assert without_folder_modes(copied(folder, builder == "buildkit")) == expected(sent[builder])
    if agree:
        assert {entry.path: entry for entry in mi.context_entries(folder) if entry.kind != "parent"} == sent[
            "classic"
        ]
    else:
        with pytest.raises(ValueError, match="the classic builder and BuildKit would send other files"):
            mi.context_entries(folder)
