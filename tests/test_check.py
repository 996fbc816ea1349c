"""--check, --graph and --only_references on temporary repositories (no Docker)."""

from __future__ import annotations

import os
import time

import pytest

import fake_tree
import manage_images as mi
from helpers import ORIGINAL_GRAPH, gone, unlisted_image, usage_error

GRAPH = mi.IMAGES_TO_DEPENDENCIES
REGISTRY = "gcr.io/iree-oss"
P = fake_tree.PLACEHOLDER
NEW = "sha256:" + "e" * 64
OTHER = "sha256:" + "d" * 64
DOCKERFILES = "build_tools/docker"
AGREE = "the graph, the Dockerfiles, the references and build_tools/docker/prod_digests.txt agree."


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A consistent tree: every reference and prod_digests.txt name PLACEHOLDER."""
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, GRAPH)
    monkeypatch.chdir(root)
    return root


def edit(root, relative, old, new):
    path = root / relative
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    fake_tree.git(root, "commit", "-q", "-am", f"edit {relative}")


def check(capsys, *images):
    code = mi.main(["--check", *[arg for image in images or ("all",) for arg in ("--images", image)]])
    return code, capsys.readouterr().out.splitlines()


def line_of(root, relative, text):
    """The number of the first line of `relative` holding `text`."""
    lines = (root / relative).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def test_a_clean_tree_passes_with_one_summary_line(tree, capsys):
    assert check(capsys) == (
        0,
        [
            f"Checked {len(GRAPH)} images: the graph, the Dockerfiles, the references and "
            "build_tools/docker/prod_digests.txt agree."
        ],
    )


def test_missing_dockerfile(tree, capsys):
    (tree / DOCKERFILES / "vulkan" / "Dockerfile").unlink()
    fake_tree.git(tree, "commit", "-q", "-am", "drop")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        "build_tools/docker/vulkan/Dockerfile:1: vulkan has no Dockerfile: add one or remove vulkan "
        "from IMAGES_TO_DEPENDENCIES"
    ]
    assert out[-1] == f"Checked {len(GRAPH)} images: 1 problem found."


def test_parent_outside_the_graph(tree, capsys):
    path = f"{DOCKERFILES}/cmake-python/Dockerfile"
    edit(tree, path, "COPY stamp", f"COPY --from={REGISTRY}/nope@{P} /x /x\nCOPY stamp")
    number = line_of(tree, path, "nope")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{path}:{number}: COPY --from {REGISTRY}/nope@{P}: nope is not an image of the graph",
        f"{path}:{number}: {REGISTRY}/nope is referenced but not listed in build_tools/docker/prod_digests.txt",
    ]


def test_undeclared_and_unused_parents(tree, capsys):
    path = f"{DOCKERFILES}/cmake/Dockerfile"
    edit(tree, path, f"COPY --from={REGISTRY}/util@{P}", f"COPY --from={REGISTRY}/vulkan@{P}")
    number = line_of(tree, path, "vulkan")
    code, out = check(capsys, "cmake")
    assert code == 1
    assert out[:-1] == [
        f"{path}:{number}: COPY --from vulkan: IMAGES_TO_DEPENDENCIES does not list vulkan as a "
        "dependency of cmake; add it there or stop using it",
        f"{path}:1: IMAGES_TO_DEPENDENCIES says cmake depends on util, but this Dockerfile never uses "
        f"{REGISTRY}/util; fix the graph or the Dockerfile",
    ]
    assert (
        out[-1] == f"Checked {len(mi.ordered_images_to_process(['cmake'], GRAPH))} images: 2 problems found."
    )


@pytest.mark.parametrize("unpinned", [f"{REGISTRY}/base", f"{REGISTRY}/base:latest"])
def test_parent_not_pinned_by_digest(tree, capsys, unpinned):
    path = f"{DOCKERFILES}/bazel/Dockerfile"
    edit(tree, path, f"FROM {REGISTRY}/base@{P} AS final", f"FROM {unpinned} AS final")
    code, out = check(capsys, "bazel")
    assert code == 1
    # One finding: the reference scan's own `is not pinned by digest` for the same reference is left out.
    assert out[:-1] == [
        f"{path}:{line_of(tree, path, 'FROM ')}: FROM {unpinned} is not pinned by digest, so --update_references cannot see it; "
        f"use {REGISTRY}/base@sha256:<digest>"
    ]


def test_run_mount_from_counts_as_a_parent(tree, capsys):
    path = f"{DOCKERFILES}/vulkan/Dockerfile"
    edit(
        tree, path, "COPY stamp", f"RUN --mount=type=bind,from={REGISTRY}/base@{P},target=/b true\nCOPY stamp"
    )
    code, out = check(capsys, "vulkan")
    assert code == 1
    assert "RUN --mount base: IMAGES_TO_DEPENDENCIES does not list base as a dependency of vulkan" in out[0]


def test_two_references_to_one_image_with_different_digests(tree, capsys):
    script = f"{fake_tree.KOKORO_DIR}/cmake/android/arm64-v8a/build_kokoro.sh"
    edit(tree, script, f"cmake-android@{P}", f"cmake-android@{OTHER}")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{script}:{line_of(tree, script, 'cmake-android@')}: {REGISTRY}/cmake-android is pinned to sha256:dddddddddddd, but "
        f"build_tools/docker/prod_digests.txt says {P[:19]}"
    ]


def test_stale_workspace_digest(tree, capsys):
    edit(tree, "WORKSPACE", f'    digest = "{P}"', f'    digest = "{OTHER}"')
    code, out = check(capsys, "rbe-toolchain")
    assert code == 1
    assert out[:-1] == [
        f"WORKSPACE:{line_of(tree, 'WORKSPACE', '    digest = ')}: rbe_autoconfig digest {OTHER[:19]} differs from build_tools/docker/prod_digests.txt "
        f"({P[:19]})"
    ]


def test_truncated_and_upper_case_digests_are_reported(tree, capsys):
    (tree / "notes.txt").write_text(f"{REGISTRY}/util@sha256:abc\n{REGISTRY}/util@sha256:{'A' * 64}\n")
    fake_tree.git(tree, "add", "notes.txt")
    code, out = check(capsys, "util")
    assert code == 1
    assert out[:-1] == [
        f"notes.txt:1: {REGISTRY}/util@sha256:abc is not a well-formed digest (sha256: and 64 lowercase hex digits)",
        f"notes.txt:2: {REGISTRY}/util@sha256:{'A' * 64} is not a well-formed digest (sha256: and 64 lowercase hex digits)",
    ]


def test_untracked_files_are_not_checked(tree, capsys):
    (tree / "scratch.txt").write_text(f"{REGISTRY}/util@{OTHER}\n")
    assert check(capsys)[0] == 0


def test_bad_prod_digests_lines(tree, capsys):
    path = tree / DOCKERFILES / "prod_digests.txt"
    first = len(path.read_text().splitlines()) + 1
    path.write_text(path.read_text() + f"{REGISTRY}/base@{OTHER}\n{REGISTRY}/nope@{P}\ngarbage\n")
    fake_tree.git(tree, "commit", "-q", "-am", "bad lines")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"build_tools/docker/prod_digests.txt:{first}: {REGISTRY}/base is listed again with another digest than on "
        f"build_tools/docker/prod_digests.txt:{line_of(tree, path, '/base@')}, so its pin is ambiguous; keep the right line only",
        f"build_tools/docker/prod_digests.txt:{first + 1}: {REGISTRY}/nope is not an image of the graph under {REGISTRY}",
        f"build_tools/docker/prod_digests.txt:{first + 2}: malformed line 'garbage': expected "
        f"{REGISTRY}/NAME@sha256:<64 lowercase hex>",
    ]


def test_check_needs_no_docker(tree, capsys, monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "git").symlink_to(__import__("shutil").which("git"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert check(capsys)[0] == 0


# --- --graph -------------------------------------------------------------------


def graph(capsys, fmt, *images):
    """--graph on the original graph (frozen in helpers), so the drawings below hold whatever images are added."""
    args = ["--graph", fmt] if fmt else ["--graph"]
    assert (
        mi.main([*args, *[arg for image in images for arg in ("--image", image)]], graph=ORIGINAL_GRAPH) == 0
    )
    return capsys.readouterr().out


def test_graph_text_is_an_indented_tree(capsys):
    assert graph(capsys, None, "vulkan") == (
        "vulkan\n"
        "  bazel-tensorflow-vulkan\n"
        "    bazel-tensorflow-nvidia\n"
        "    bazel-tensorflow-swiftshader\n"
        "  cmake-python-vulkan\n"
        "    cmake-python-nvidia\n"
        "    cmake-python-swiftshader\n"
        "  rbe-toolchain\n"
    )


def test_graph_text_marks_shared_children(capsys):
    assert graph(capsys, "text", "swiftshader", "cmake-python-vulkan") == (
        "cmake-python-vulkan\n"
        "  cmake-python-nvidia\n"
        "  cmake-python-swiftshader (from cmake-python-vulkan, swiftshader)\n"
        "swiftshader\n"
        "  bazel-tensorflow-swiftshader\n"
        "  cmake-python-swiftshader (from cmake-python-vulkan, swiftshader) (see above)\n"
    )


def test_graph_dot(capsys):
    assert graph(capsys, "dot", "cmake-python-vulkan") == (
        "digraph images {\n"
        '  "cmake-python-vulkan" -> "cmake-python-swiftshader";\n'
        '  "cmake-python-vulkan" -> "cmake-python-nvidia";\n'
        "}\n"
    )


def test_graph_mermaid_with_a_lone_image(capsys):
    assert graph(capsys, "mermaid", "rbe-toolchain", "cmake-android") == (
        "graph TD\n  cmake-android\n  rbe-toolchain\n"
    )


def test_graph_cannot_be_combined_with_steps(capsys):
    assert "--graph and --build cannot be combined" in usage_error(
        ["--graph", "--image", "util", "--build"], capsys
    )


# --- --only_references --------------------------------------------------------


def test_only_references_rewrites_from_prod_digests(tree, capsys):
    path = tree / DOCKERFILES / "prod_digests.txt"
    path.write_text(path.read_text().replace(f"/vulkan@{P}", f"/vulkan@{NEW}"))
    before = fake_tree.tracked_files(tree)

    assert mi.main(["--only_references", "--image", "vulkan"]) == 0

    after = fake_tree.tracked_files(tree)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == [
        f"{DOCKERFILES}/bazel-tensorflow-vulkan/Dockerfile",
        f"{DOCKERFILES}/cmake-python-vulkan/Dockerfile",
        f"{DOCKERFILES}/rbe-toolchain/Dockerfile",
    ]
    for name in changed:
        assert after[name] == before[name].replace(f"/vulkan@{P}".encode(), f"/vulkan@{NEW}".encode())
    capsys.readouterr()
    code, out = check(capsys)
    assert code == 0
    assert out[-1].endswith(
        ": the graph, the Dockerfiles, the references and build_tools/docker/prod_digests.txt agree."
    )


def test_only_references_updates_the_workspace_rule(tree):
    path = tree / DOCKERFILES / "prod_digests.txt"
    path.write_text(path.read_text().replace(f"/rbe-toolchain@{P}", f"/rbe-toolchain@{NEW}"))
    assert mi.main(["--only-references", "--image", "rbe-toolchain"]) == 0
    assert f'    digest = "{NEW}",' in (tree / "WORKSPACE").read_text()
    assert f'base_container_digest = "{fake_tree.OTHER_RULE_DIGEST}"' in (tree / "WORKSPACE").read_text()


def test_only_references_with_an_image_missing_from_prod_digests(tree, capsys):
    path = tree / DOCKERFILES / "prod_digests.txt"
    path.write_text(
        "".join(line + "\n" for line in path.read_text().splitlines() if "/swiftshader@" not in line)
    )
    before = fake_tree.tracked_files(tree)
    assert mi.main(["--only_references", "--image", "cmake"]) == 1
    assert capsys.readouterr().err == (
        "cannot update the references to swiftshader: build_tools/docker/prod_digests.txt has no line for "
        f"{REGISTRY}/swiftshader; push it with --update_references first or add the line\n"
    )
    assert fake_tree.tracked_files(tree) == before


# --- Every reference form, and the new-image checklist ---------------------------------

CI = f"{fake_tree.KOKORO_DIR}/cmake/android/arm64-v8a/build_kokoro.sh"


def add_line(root, relative, text):
    """Appends `text` as a line to a tracked file (created if need be), commits, returns its line number."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    path.write_text(old + text + "\n")
    fake_tree.git(root, "add", relative)
    fake_tree.git(root, "commit", "-q", "-m", f"edit {relative}")
    return len(old.splitlines()) + 1


def test_a_stale_tagged_pin_is_reported_and_rewritten(tree, capsys):
    number = add_line(tree, CI, f"docker run {REGISTRY}/cmake:prod@{OTHER} true")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{CI}:{number}: {REGISTRY}/cmake:prod is pinned to sha256:dddddddddddd, but "
        f"build_tools/docker/prod_digests.txt says {P[:19]}"
    ]
    assert mi.main(["--only_references", "--image", "cmake"]) == 0
    assert (tree / CI).read_text().splitlines()[number - 1] == f"docker run {REGISTRY}/cmake:prod@{P} true"
    capsys.readouterr()
    assert check(capsys)[0] == 0


@pytest.mark.parametrize(
    "unpinned", [f"{REGISTRY}/cmake:latest", f"{REGISTRY}/cmake", f"{REGISTRY}/cmake:prod"]
)
def test_an_unpinned_reference_in_a_ci_script_is_reported_and_never_rewritten(tree, capsys, unpinned):
    number = add_line(tree, CI, f'docker run "{unpinned}" true')
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{CI}:{number}: {unpinned} is not pinned by digest; pin it as {REGISTRY}/cmake@sha256:<digest> "
        "or mark the line with a comment `manage-images: allow-unpinned`"
    ]
    path = tree / DOCKERFILES / "prod_digests.txt"
    path.write_text(path.read_text().replace(f"/cmake@{P}", f"/cmake@{NEW}"))
    before = (tree / CI).read_bytes()
    assert mi.main(["--only_references", "--image", "cmake"]) == 0
    assert (tree / CI).read_bytes() == before


def test_unpinned_references_in_documentation_marked_lines_and_exempt_paths_are_allowed(tree, capsys):
    bare = f"{REGISTRY}/cmake:latest"
    for doc in ("README.md", "docs/images.rst", "docs/notes.txt"):
        add_line(tree, doc, f"Run `docker run {bare}` to try it.")
    add_line(tree, CI, f"docker run {bare} true  # manage-images: allow-unpinned")
    add_line(tree, "tools/examples.py", f'EXAMPLE = "{bare}"')
    add_line(tree, "tools/more.py", f'EXAMPLE = "{bare}"')
    add_line(tree, ".gitattributes", "tools/examples.py manage-images-allow-unpinned")
    code, out = check(capsys)
    assert out[:-1] == [
        f"tools/more.py:1: {bare} is not pinned by digest; pin it as {REGISTRY}/cmake@sha256:<digest> "
        "or mark the line with a comment `manage-images: allow-unpinned`"
    ]
    # prod_digests.txt is no documentation: an unpinned line there is malformed.
    prod = f"{DOCKERFILES}/prod_digests.txt"
    number = add_line(tree, prod, bare)
    assert f"{prod}:{number}: malformed line {bare!r}" in "\n".join(check(capsys)[1])


def unpinned_finding(path: str, bare: str) -> str:
    return (
        f"{path}:1: {bare} is not pinned by digest; pin it as {REGISTRY}/cmake@sha256:<digest> "
        "or mark the line with a comment `manage-images: allow-unpinned`"
    )


def test_the_attribute_is_asked_of_git_for_thousands_of_files_and_big_ones(tree, capsys):
    """git check-attr is asked as git grep names each file: 1,500 files under an exempt
    folder and 1,500 under another (the questions, and the answers, are each more than a
    pipe holds), and a file too big to be read whole in the scan, in each folder."""
    bare = f"{REGISTRY}/cmake:latest"
    padding = "p" * 40  # long paths: more than a pipe's 64 KiB of questions
    for folder in ("exempt", "other"):
        for number in range(1500):
            path = tree / folder / f"{padding}{number:04}.py"
            path.parent.mkdir(exist_ok=True)
            path.write_text(f'EXAMPLE = "{bare}"\n')
        # Bigger than the head the scan reads (BINARY_PEEK): its references are found after the scan.
        (tree / folder / "big.py").write_text(f'EXAMPLE = "{bare}"\n' + "# filler\n" * mi.BINARY_PEEK)
    (tree / ".gitattributes").write_text("exempt/** manage-images-allow-unpinned\n")
    fake_tree.git(tree, "add", ".")
    fake_tree.git(tree, "commit", "-q", "-m", "3,002 files with unpinned references")
    code, out = check(capsys)
    assert code == 1
    expected = [f"other/{padding}{number:04}.py" for number in range(1500)] + ["other/big.py"]
    assert out[:-1] == [unpinned_finding(path, bare) for path in sorted(expected)]


def test_a_check_that_fails_leaves_no_git_waiting_for_questions(tree, capsys, monkeypatch):
    """git check-attr, started while git grep runs, ends when the check fails after it."""
    add_line(tree, "tools/more.py", f'EXAMPLE = "{REGISTRY}/cmake:latest"')
    started = []
    real = mi.UnpinnedAllowed.ask

    def ask(self, paths):
        real(self, paths)
        started.append(self)

    def fail(*args):
        raise mi.ManageImagesError("stop here")

    monkeypatch.setattr(mi.UnpinnedAllowed, "ask", ask)
    monkeypatch.setattr(mi, "prod_digests_check", fail)
    assert check(capsys)[0] == 1
    assert started, "the scan asked git nothing"
    # Told there are no more questions, git answers the one it had and ends.
    assert all(gone(pid) for pid in children_named(b"check-attr"))
    assert started[0].allowed() == set()


def test_git_check_attr_has_its_time_from_the_last_question_not_from_the_first(tree, capsys, monkeypatch):
    """git's deadline (COMMAND_TIMEOUT) counts from when it was told there are no more
    questions: the check may take longer than that between the first question and the last."""
    add_line(tree, "tools/examples.py", f'EXAMPLE = "{REGISTRY}/cmake:latest"')
    add_line(tree, ".gitattributes", "tools/examples.py manage-images-allow-unpinned")
    real = mi.prod_digests_check  # run after the scan asked, before the last question

    def slow(*args):
        time.sleep(2)
        return real(*args)

    monkeypatch.setattr(mi, "COMMAND_TIMEOUT", 1)
    monkeypatch.setattr(mi, "prod_digests_check", slow)
    code = mi.main(["--check", "--images", "all"])
    out, err = capsys.readouterr()
    assert (code, out.splitlines()[-1:], err) == (0, [f"Checked {len(GRAPH)} images: {AGREE}"], "")


def test_nothing_is_asked_of_git_after_the_questions_ended(tree):
    """A question that comes after `close` (the check failed while the scan went on) starts
    no git that would then wait for more."""
    unpinned = mi.UnpinnedAllowed(tree)
    unpinned.close()
    unpinned.ask(["tools/more.py"])
    assert children_named(b"check-attr") == []
    assert unpinned.allowed() == set()


def children_named(word: bytes) -> list[int]:
    """The live child processes of this one whose command line holds `word`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as command:
                line = command.read()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and word in line:
            found.append(int(entry))
    return found


def test_a_graph_image_without_a_prod_digests_line_is_reported(tree, capsys):
    path = tree / DOCKERFILES / "prod_digests.txt"
    path.write_text(
        "".join(line + "\n" for line in path.read_text().splitlines() if "/swiftshader@" not in line)
    )
    fake_tree.git(tree, "commit", "-q", "-am", "drop swiftshader's line")
    code, out = check(capsys)
    assert code == 1
    assert sorted(out[:-1]) == sorted(
        [
            f"{DOCKERFILES}/swiftshader/Dockerfile:1: {REGISTRY}/swiftshader has no line in "
            f"build_tools/docker/prod_digests.txt; run manage_images.py --image swiftshader --build --push "
            "--update_references, which adds it",
            *[
                f"{DOCKERFILES}/{child}/Dockerfile:{line_of(tree, f'{DOCKERFILES}/{child}/Dockerfile', 'swiftshader@')}: "
                f"{REGISTRY}/swiftshader is referenced but not listed in build_tools/docker/prod_digests.txt"
                for child in sorted(image for image in GRAPH if "swiftshader" in GRAPH[image])
            ],
        ]
    )
    assert out[:-1][-1].startswith(f"{DOCKERFILES}/swiftshader/Dockerfile:1: ")


def test_an_image_nothing_refers_to_is_reported_unless_its_dockerfile_allows_it(tree, capsys):
    job = next(script for script, image in fake_tree.CI_SCRIPTS.items() if image == "cmake-android")
    (tree / fake_tree.KOKORO_DIR / job).unlink()
    fake_tree.git(tree, "commit", "-q", "-am", "drop the job")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{DOCKERFILES}/cmake-android/Dockerfile:1: nothing outside build_tools/docker/prod_digests.txt refers to "
        f"{REGISTRY}/cmake-android (no Dockerfile builds on it, no CI script or WORKSPACE rule runs it): refer to "
        "it by digest where it is used, or add a comment `# manage-images: allow-unreferenced` to this Dockerfile"
    ]
    add_line(
        tree,
        f"{DOCKERFILES}/cmake-android/Dockerfile",
        "# manage-images: allow-unreferenced (people run it by hand)",
    )
    assert check(capsys)[0] == 0


def test_a_mention_in_documentation_is_no_use_of_an_image(tree, capsys):
    job = next(script for script, image in fake_tree.CI_SCRIPTS.items() if image == "cmake-android")
    (tree / fake_tree.KOKORO_DIR / job).unlink()
    add_line(tree, "README.md", f"Run {REGISTRY}/cmake-android@{P} by hand.")
    code, out = check(capsys)
    assert [line.split(":")[0] for line in out[:-1]] == [f"{DOCKERFILES}/cmake-android/Dockerfile"]


def test_the_workspace_rule_is_the_use_of_rbe_toolchain(tree, capsys):
    workspace = (tree / "WORKSPACE").read_text()
    (tree / "WORKSPACE").write_text(
        workspace.replace('repository = "iree-oss/rbe-toolchain"', 'repository = "x/y"')
    )
    fake_tree.git(tree, "commit", "-q", "-am", "not ours")
    code, out = check(capsys)
    assert code == 1
    assert [line.split(": ", 1)[0] for line in out[:-1]] == [f"{DOCKERFILES}/rbe-toolchain/Dockerfile:1"]


def test_a_dockerfile_folder_outside_the_graph_is_reported(tree, capsys):
    name = unlisted_image(mi.IMAGES_TO_DEPENDENCIES)
    number = add_line(tree, f"{DOCKERFILES}/{name}/Dockerfile", f"FROM {REGISTRY}/cmake@{P}")
    code, out = check(capsys)
    assert code == 1
    assert out[:-1] == [
        f"{DOCKERFILES}/{name}/Dockerfile:{number}: {name} has a Dockerfile but is not in "
        "IMAGES_TO_DEPENDENCIES: add it there with the images it is built from, or remove the folder"
    ]
    assert check(capsys, "cmake")[0] == 0  # a tree-wide fact: checked with every image
