"""The documents, each with one job (README.md, "More"): the front page stays
a front page; every flag of the parser is on it and in the manual; every
`manage_images.py` command they show parses; every link between them leads
to a file and a heading that exist. No engine needed: tests/test_newcomer.py
runs the commands."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import manage_images as mi
from helpers import TESTS

ROOT = TESTS.parent
README = ROOT / "README.md"
MANUAL = ROOT / "build_tools" / "docker" / "README.md"
DOCUMENTS = (README, MANUAL, ROOT / "tests" / "README.md", ROOT / "benchmarks" / "README.md")
# A front page a newcomer reads in minutes (#29 split it out of a README of 1,689 lines): 300
# lines with the graph of late 2020. The graph block and the tables' rows grow with each image
# added; the rest, the prose, may not.
PROSE_LINES = 225
MANUAL_SECTIONS = ("Workflows", "Engines", "Registry access", "Guarantees", "Output", "JSON report", "Flags")


def flags() -> list[str]:
    """Every option string of the parser but --help: one definition, read from the parser."""
    return [
        flag
        for action in mi.build_parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    ]


@pytest.mark.parametrize("document", [README, MANUAL], ids=lambda path: str(path.relative_to(ROOT)))
def test_every_flag_is_in_the_front_page_and_the_manual(document):
    text = document.read_text()
    assert "--update_references" in flags() and "-j" in flags()
    missing = [flag for flag in flags() if f"`{flag}" not in text and f" {flag} " not in text]
    assert missing == [], f"{document.relative_to(ROOT)} does not name {missing}"


def test_the_front_page_is_short_and_the_manual_has_its_sections():
    text = README.read_text()
    graph = re.search(r"<!-- graph:begin -->.*?<!-- graph:end -->\n", text, re.S).group(0)
    prose = [line for line in text.replace(graph, "").splitlines() if not line.lstrip().startswith("|")]
    assert len(prose) <= PROSE_LINES
    headings = re.findall(r"^## (.+)$", MANUAL.read_text(), re.M)
    assert [heading for heading in headings if heading in MANUAL_SECTIONS] == list(MANUAL_SECTIONS)


def commands(path: Path) -> list[str]:
    """The manage_images.py commands a document shows (inline code and shell blocks)."""
    text = path.read_text()
    found = re.findall(r"`python3 build_tools/docker/manage_images\.py ([^`]*)`", text)
    for block in re.findall(r"```shell\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            if "manage_images.py " in line:
                found.append(line.split("manage_images.py ", 1)[1])
    return list(dict.fromkeys(found))


@pytest.mark.parametrize(
    "command", list(dict.fromkeys(command for document in DOCUMENTS for command in commands(document)))
)
def test_every_documented_command_parses(command):
    words = ["cmake" if word == "NAME" else word for word in shlex.split(command)]
    if words == ["--help"]:
        return
    args = mi.parse_arguments(mi.build_parser(), words, mi.IMAGES_TO_DEPENDENCIES)
    assert args.images or args.changed_since, command


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


def test_the_slug_is_githubs():
    assert (
        slug("The `prod` tag: promote by digest, then verify") == "the-prod-tag-promote-by-digest-then-verify"
    )
    assert (
        slug("Where the output departs from the original's") == "where-the-output-departs-from-the-originals"
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_between_the_documents_leads_somewhere(document):
    assert document.is_file()
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.relative_to(ROOT)}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{document.relative_to(ROOT)}: {target}"


def load_results():
    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_has_its_results_block():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        assert f"<!-- results:{script.stem}" in text, script.name
        assert f'results.recorded("{script.stem}", main)' in script.read_text(), script.name


def test_a_recorded_run_replaces_its_block_with_what_it_printed(tmp_path, monkeypatch, capsys):
    results = load_results()
    readme = tmp_path / "README.md"
    readme.write_text(
        "before\n<!-- results:bench_x:big -->\nold\n<!-- /results:bench_x:big -->\n"
        "<!-- results:bench_x -->\nkept\n<!-- /results:bench_x -->\nafter\n"
    )
    monkeypatch.setattr(results, "README", readme)
    argv = ["benchmarks/bench_x.py", "--size", "2 MB", "--record=big"]

    def main() -> int:
        assert argv == ["benchmarks/bench_x.py", "--size", "2 MB"]  # the flag is the recorder's
        print("Machine: 2 cores\n| scenario | time |\n|---|---:|\n| a | 1.0 s |")
        return 1  # a goal missed is a result too

    assert results.recorded("bench_x", main, argv) == 1
    text = readme.read_text()
    assert text.startswith("before\n<!-- results:bench_x:big -->\nMeasured ")
    assert (
        " with `python3 benchmarks/bench_x.py --size '2 MB'`:\n\n```\nMachine: 2 cores\n| scenario |" in text
    )
    assert "old" not in text and "<!-- results:bench_x -->\nkept\n" in text and text.endswith("after\n")
    assert "| a | 1.0 s |" in capsys.readouterr().out  # printed as ever
