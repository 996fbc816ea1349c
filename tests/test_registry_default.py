"""The tree is the source of truth for its registry: without --registry the
tool works on the registry the tree's prod_digests.txt names when all its
lines agree (gcr.io/iree-oss for a tree naming it, or naming none); a
--registry the tree does not name is used as asked, after one warning line;
gcloud runs only for Google registries. On a frozen graph, with the stand-in
docker: no engine needed."""

from __future__ import annotations

import json

import pytest

import fake_tree
import manage_images as mi
from helpers import NEW, ORIGINAL_GRAPH, unlabelled

LOCAL = "127.0.0.1:5000/iree-oss"
GOOGLE = "gcr.io/" + "iree-oss"  # in pieces: this tree's own --check must not read test data
P = fake_tree.PLACEHOLDER
WARNING_START = "warning: --registry "


@pytest.mark.parametrize(
    ("given", "named", "registry", "warns"),
    [
        (None, [], mi.DEFAULT_REGISTRY, ""),
        (None, [LOCAL], LOCAL, ""),
        (None, [GOOGLE], GOOGLE, ""),
        (None, [LOCAL, "ghcr.io/iree-org"], mi.DEFAULT_REGISTRY, "names 2 registries"),
        (LOCAL, [LOCAL], LOCAL, ""),
        (LOCAL, [], LOCAL, ""),
        (LOCAL, [LOCAL, GOOGLE], LOCAL, ""),
        (LOCAL, [GOOGLE], LOCAL, f"{WARNING_START}{LOCAL} is not the registry"),
    ],
)
def test_the_registry_a_run_uses(given, named, registry, warns):
    used, warning = mi.registry_to_use(given, named)
    assert used == registry
    assert (warns in warning) if warns else warning == ""
    assert "\n" not in warning


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", []),
        (f"{LOCAL}/base@{P}\n{LOCAL}/util@{P}\n".encode(), [LOCAL]),
        # A byte-order mark, CRLF line ends, and a malformed line (left to --check) change nothing.
        (b"\xef\xbb\xbf" + f"{LOCAL}/base@{P}\r\nnot a line\r\n{LOCAL}/util@{P}\r\n".encode(), [LOCAL]),
        (f"{GOOGLE}/base@{P}\n{LOCAL}/util@{P}\n".encode(), [GOOGLE, LOCAL]),
        (f"{LOCAL}/base@sha256:abc\n".encode(), []),
    ],
)
def test_the_registries_prod_digests_names(data, named):
    assert mi.registries_named(data) == named


def tree_at(tmp_path, monkeypatch, registry: str):
    root = fake_tree.make_tree(tmp_path / "repo", registry, ORIGINAL_GRAPH)
    monkeypatch.chdir(root)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = mi.main(list(argv), graph=ORIGINAL_GRAPH)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_tree_naming_a_local_registry_is_checked_and_built_there_without_gcloud(
    tmp_path, monkeypatch, standin, capsys
):
    tree_at(tmp_path, monkeypatch, LOCAL)
    code, out, err = run(capsys, "--check", "--images", "all")
    assert (code, err) == (0, "")
    assert out == (
        f"Checked {len(ORIGINAL_GRAPH)} images: the graph, the Dockerfiles, the references and "
        f"{mi.PROD_DIGESTS_PATH} agree.\n"
    )
    code, out, err = run(capsys, "--image", "cmake", "--build", "--push", "--update_references", "--dry-run")
    assert (code, err) == (0, "")
    assert f"Running: `docker build --tag {LOCAL}/cmake:latest build_tools/docker/cmake`" in unlabelled(out)
    assert "gcloud" not in out and GOOGLE not in out
    # A real push: no gcloud, and the commands name the tree's registry.
    code, out, err = run(capsys, "--image", "cmake-android", "--push")
    assert (code, err) == (0, "")
    assert [argv for argv in standin.commands() if argv[0] == "gcloud"] == []
    assert ["docker", "push", f"{LOCAL}/cmake-android:latest"] in standin.commands()


def test_update_references_pins_the_trees_own_registry(tmp_path, monkeypatch, standin, capsys):
    root = tree_at(tmp_path, monkeypatch, LOCAL)
    standin.set(repo_digests={f"{LOCAL}/cmake-android:latest": [f"{LOCAL}/cmake-android@{NEW}"]})
    code, out, err = run(capsys, "--image", "cmake-android", "--update_references", "--json", "report.json")
    assert (code, err) == (0, "")
    assert f"{LOCAL}/cmake-android@{NEW}\n" in (root / mi.PROD_DIGESTS_PATH).read_text()
    assert json.loads((root / "report.json").read_text())["registry"] == LOCAL


@pytest.mark.parametrize("registry", [GOOGLE, None])
def test_a_tree_naming_gcr_or_nothing_keeps_gcr_and_gcloud(registry, tmp_path, monkeypatch, standin, capsys):
    root = tree_at(tmp_path, monkeypatch, registry or GOOGLE)
    if registry is None:
        fake_tree.git(root, "rm", "-q", mi.PROD_DIGESTS_PATH)
    code, out, err = run(capsys, "--image", "util", "--push", "--dry-run")
    assert (code, err) == (0, "")
    assert "Running: `gcloud auth configure-docker`" in out
    assert f"Running: `docker push {mi.DEFAULT_REGISTRY}/util:latest`" in out


def test_another_registry_than_the_trees_is_one_warning_line_before_any_work(
    tmp_path, monkeypatch, standin, capsys
):
    tree_at(tmp_path, monkeypatch, GOOGLE)
    standin.set(fail={"build": 7})
    code, out, err = run(capsys, "--registry", LOCAL, "--image", "util", "--build")
    assert code == 7
    first, *rest = err.splitlines()
    assert first == (
        f"warning: --registry {LOCAL} is not the registry {mi.PROD_DIGESTS_PATH} names ({GOOGLE}): "
        f"the tree's references to {GOOGLE} are left alone; leave --registry out to work on them"
    )
    assert [unlabelled(line) for line in rest] == [
        f"Command failed with exit code 7: `docker build --tag {LOCAL}/util:latest build_tools/docker/util`"
    ]
    # --check too says it first, then what it finds with the registry it was given.
    code, out, err = run(capsys, "--registry", LOCAL, "--check", "--image", "util")
    assert err.startswith(WARNING_START) and err.count("\n") == 1


def test_a_tree_naming_two_registries_uses_the_default_and_says_so(tmp_path, monkeypatch, standin, capsys):
    root = tree_at(tmp_path, monkeypatch, LOCAL)
    prod = root / mi.PROD_DIGESTS_PATH
    prod.write_text(prod.read_text() + f"ghcr.io/iree-org/base@{P}\n")
    code, out, err = run(capsys, "--image", "util", "--pull", "--dry-run")
    assert code == 0
    assert err == (
        f"warning: {mi.PROD_DIGESTS_PATH} names 2 registries ({LOCAL}, ghcr.io/iree-org); "
        f"using {mi.DEFAULT_REGISTRY}: pass --registry to choose\n"
    )
    assert f"Running: `docker pull {mi.DEFAULT_REGISTRY}/util:latest`" in out


def test_a_prod_digests_through_a_symbolic_link_names_no_registry(tmp_path, monkeypatch, standin, capsys):
    root = tree_at(tmp_path, monkeypatch, LOCAL)
    outside = tmp_path / "outside.txt"
    (root / mi.PROD_DIGESTS_PATH).rename(outside)
    (root / mi.PROD_DIGESTS_PATH).symlink_to(outside)
    code, out, err = run(capsys, "--image", "util", "--pull", "--dry-run")
    assert (code, err) == (0, "")
    assert f"Running: `docker pull {mi.DEFAULT_REGISTRY}/util:latest`" in out
