"""An 18th image, added as a user would (README, "Deploy a new image"), to a copy
of the graph in a scratch tree: --check walks the checklist, the rewrite modes
and the graph views take it in, and no other test needs an edit for it. The
facts below are computed from the graph, never restated."""

from __future__ import annotations

import pytest

import fake_tree
import manage_images as mi
from helpers import NEW, unlisted_image

GRAPH = mi.IMAGES_TO_DEPENDENCIES
REGISTRY = "gcr.io/" + "iree-oss"  # in pieces: this tree's own --check must not read test data
IMAGE = unlisted_image(GRAPH)
PARENTS = ("cmake", "util")
GRAPH18 = {**GRAPH, IMAGE: PARENTS}
JOB = "cmake/linux/riscv/build_kokoro.sh"
P = fake_tree.PLACEHOLDER
DOCKERFILE = f"build_tools/docker/{IMAGE}/Dockerfile"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """The fake world with the new image's folder and prod_digests.txt line, not yet used anywhere."""
    root = fake_tree.make_tree(tmp_path / "repo", REGISTRY, GRAPH18)
    monkeypatch.chdir(root)
    return root


def check(capsys, graph=GRAPH18, *images: str) -> tuple[int, list[str]]:
    argv = ["--check", *[arg for image in images or ("all",) for arg in ("--images", image)]]
    code = mi.main(argv, graph=graph)
    return code, capsys.readouterr().out.splitlines()


def add_job(root) -> None:
    """Step 4: a CI job that runs the image by digest."""
    path = root / fake_tree.KOKORO_DIR / JOB
    path.parent.mkdir(parents=True)
    path.write_text(fake_tree.ci_script(REGISTRY, IMAGE, P, gpus=False))
    fake_tree.git(root, "add", "-A")
    fake_tree.git(root, "commit", "-q", "-m", f"Run {IMAGE} in CI")


def test_check_walks_the_new_image_checklist(tree, capsys):
    assert len(GRAPH18) == len(GRAPH) + 1 and IMAGE in mi.ordered_images_to_process(["base"], GRAPH18)
    # Everything but a use: --check says so, naming the Dockerfile.
    code, out = check(capsys)
    assert code == 1
    assert [line.split(": ", 1)[0] for line in out[:-1]] == [f"{DOCKERFILE}:1"]
    assert f"nothing outside build_tools/docker/prod_digests.txt refers to {REGISTRY}/{IMAGE}" in out[0]
    add_job(tree)
    assert check(capsys) == (
        0,
        [
            f"Checked {len(GRAPH18)} images: the graph, the Dockerfiles, the references and "
            "build_tools/docker/prod_digests.txt agree."
        ],
    )
    # Without its line in prod_digests.txt.
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_text(
        "".join(line + "\n" for line in prod.read_text().splitlines() if f"/{IMAGE}@" not in line)
    )
    code, out = check(capsys, GRAPH18, IMAGE)
    assert code == 1
    assert (
        f"{DOCKERFILE}:1: {REGISTRY}/{IMAGE} has no line in build_tools/docker/prod_digests.txt"
        in "\n".join(out)
    )


def test_a_folder_the_graph_does_not_list_is_a_finding(tree, capsys):
    add_job(tree)
    code, out = check(capsys, GRAPH)
    assert code == 1
    assert f"{DOCKERFILE}:1: {IMAGE} has a Dockerfile but is not in IMAGES_TO_DEPENDENCIES" in "\n".join(out)


def test_graph_views_show_the_new_image_under_its_parents(capsys):
    for fmt, edge in (
        ("mermaid", [f"  {parent} --> {IMAGE}" for parent in PARENTS]),
        ("dot", [f'  "{parent}" -> "{IMAGE}";' for parent in PARENTS]),
    ):
        assert mi.main(["--graph", fmt, "--images", "all"], graph=GRAPH18) == 0
        lines = capsys.readouterr().out.splitlines()
        assert set(edge) <= set(lines)
        assert len([line for line in lines if "->" in line]) == sum(
            len(parents) for parents in GRAPH18.values()
        )
    assert mi.main(["--graph", "--image", "cmake"], graph=GRAPH18) == 0
    shown = capsys.readouterr().out.splitlines()
    assert f"  {IMAGE}" in shown  # util is not selected: cmake is its only parent shown
    assert len(shown) == len(mi.ordered_images_to_process(["cmake"], GRAPH18)) + sum(
        1 for line in shown if line.endswith("(see above)")
    )


def test_only_references_and_update_references_pin_the_new_image(tree, standin, capsys):
    add_job(tree)
    prod = tree / "build_tools/docker/prod_digests.txt"
    # --only_references: a new digest for its parent reaches its FROM line.
    prod.write_text(prod.read_text().replace(f"/cmake@{P}", f"/cmake@{NEW}"))
    assert mi.main(["--only_references", "--image", "cmake"], graph=GRAPH18) == 0
    assert f"FROM {REGISTRY}/cmake@{NEW} AS final" in (tree / DOCKERFILE).read_text()
    assert check(capsys)[0] == 0
    # --update_references: built, pushed and pinned in the run's order, its CI job re-pinned.
    standin.set(
        repo_digests={f"{REGISTRY}/{image}:latest": [f"{REGISTRY}/{image}@{NEW}"] for image in GRAPH18}
    )
    assert mi.main(["--image", "cmake", "--build", "--push", "--update_references"], graph=GRAPH18) == 0
    order = mi.ordered_images_to_process(["cmake"], GRAPH18)
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("Processing image ")] == order
    assert f"Processing image {IMAGE} [{order.index(IMAGE) + 1}/{len(order)}]" in out
    assert f"{REGISTRY}/{IMAGE}@{NEW}" in (tree / fake_tree.KOKORO_DIR / JOB).read_text()
    assert f"{REGISTRY}/{IMAGE}@{NEW}\n" in prod.read_text()
    assert check(capsys)[0] == 0
