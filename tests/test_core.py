"""Tables for the pure core's edges: WORKSPACE as Starlark, prod_digests.txt,
line counting. Written against the survivors of mutation testing
(tests/MUTATION.md): each case pins a behaviour a mutant changed unseen."""

from __future__ import annotations

from pathlib import Path

import pytest

import manage_images as mi
from helpers import D1, D2, GRAPH, NEW, rewrite

URL = "gcr.io/iree-oss/rbe-toolchain"
OUR_RULE = b'rbe_autoconfig(name = "ours", digest = "%s", registry = "gcr.io", repository = "iree-oss/rbe-toolchain")\n'


def ours(digest: bytes = D1.encode()) -> bytes:
    return OUR_RULE % digest


# --- Line numbers ------------------------------------------------------------------


def test_line_counter_counts_on_and_back():
    data = b"\nab\ncd\n\nef"
    counter = mi.LineCounter(data)
    assert counter.line_at(1) == 2
    assert counter.line_at(4) == 3  # counted on from offset 1
    assert counter.line_at(4) == 3
    assert counter.line_at(1) == 2  # backwards: counted again from the start
    assert counter.line_at(8) == 5
    assert [mi.LineCounter(data).line_at(offset) for offset in range(len(data))] == [
        mi.line_at(data, offset) for offset in range(len(data))
    ]


# --- WORKSPACE -----------------------------------------------------------------------


def test_a_rule_on_the_first_line_is_found_exactly():
    assert mi.rewrite_workspace(ours(), URL, NEW) == (ours(NEW.encode()), 1)


def test_two_rules_with_short_placeholders_are_both_rewritten():
    data = ours(b"sha256:TODO") + b"\n" + ours(b"x")
    assert mi.rewrite_workspace(data, URL, NEW) == (ours(NEW.encode()) + b"\n" + ours(NEW.encode()), 2)


def test_parse_rbe_rules_fields():
    data = (
        b'x = 1\nrbe_autoconfig(\n    name = "a",\n    digest = "%s",\n    registry = "gcr.io",\n    repository = "r",\n)\n'
        % D1.encode()
    )
    (rule,) = mi.parse_rbe_rules(data)
    digest_begin = data.index(b'"sha256')
    assert rule == mi.RbeRule(
        line=2,
        url="gcr.io/r",
        digest=D1,
        digest_line=4,
        digest_span=(digest_begin, digest_begin + 73),
        problem="",
        problem_line=0,
    )


def test_a_rule_without_digest_names_its_call_line():
    (rule,) = mi.parse_rbe_rules(
        b'\n\nrbe_autoconfig(registry = "gcr.io", repository = "iree-oss/rbe-toolchain")\n'
    )
    assert (rule.digest_line, rule.problem_line, rule.url) == (3, 3, URL)
    assert rule.problem == 'rbe_autoconfig has no `digest = "sha256:..."`; add one so the tool can pin it'
    with pytest.raises(mi.WorkspaceError, match=r"^WORKSPACE:3: rbe_autoconfig has no `digest"):
        mi.rewrite_workspace(
            b'\n\nrbe_autoconfig(registry = "gcr.io", repository = "iree-oss/rbe-toolchain")\n', URL, NEW
        )


@pytest.mark.parametrize(
    "other",
    [
        b'rbe_autoconfig(name = "google")\n',  # Google's default image, no digest of ours
        b'rbe_autoconfig(name = "half", registry = "gcr.io")\n',
        b'rbe_autoconfig(name = "half", repository = "iree-oss/rbe-toolchain")\n',
    ],
)
def test_a_rule_that_names_no_registry_of_ours_is_never_an_error(other):
    data = other + ours()
    assert mi.rewrite_workspace(data, URL, NEW) == (other + ours(NEW.encode()), 1)
    assert mi.workspace_findings(data, URL, D1, "prod.txt") == []


def test_a_rule_with_kwargs_is_an_error():
    data = b"ARGS = {}\n" + OUR_RULE.replace(b'name = "ours"', b"**ARGS") % D1.encode()
    (rule,) = mi.parse_rbe_rules(data)
    assert (rule.problem, rule.problem_line) == (
        "rbe_autoconfig takes **kwargs, so its fields cannot be read exactly",
        2,
    )
    with pytest.raises(mi.WorkspaceError, match=r"^WORKSPACE:2: rbe_autoconfig takes \*\*kwargs"):
        mi.rewrite_workspace(data, URL, NEW)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x = 1\n# caf\xe9\n" + ours(), "WORKSPACE:2: is not UTF-8, so it cannot be parsed"),
        (
            ours() + b"x = (\n",
            "WORKSPACE:2: does not parse as Starlark ('(' was never closed); fix the syntax",
        ),
        (
            ours() + b"x = 1\x00\n",
            "WORKSPACE:1: does not parse as Starlark (source code string cannot contain null bytes); fix the syntax",
        ),
    ],
)
def test_a_workspace_that_cannot_be_read_exactly_is_an_error(data, message):
    with pytest.raises(mi.WorkspaceError) as error:
        mi.rewrite_workspace(data, URL, NEW)
    assert str(error.value) == message
    assert mi.workspace_findings(data, URL, D1, "prod.txt") == [
        mi.Finding("WORKSPACE", int(message.split(":")[1]), message.split(": ", 1)[1], "workspace")
    ]


def test_errors_name_the_path_they_were_given():
    with pytest.raises(mi.WorkspaceError, match=r"^sub/WORKSPACE:1: does not parse"):
        mi.rewrite_workspace(b"x = (\n", URL, NEW, path="sub/WORKSPACE")
    with pytest.raises(mi.WorkspaceError, match=r"^sub/WORKSPACE:1: rbe_autoconfig `digest` is not"):
        mi.rewrite_workspace(OUR_RULE.replace(b'"%s"', b"D"), URL, NEW, path="sub/WORKSPACE")


def test_rewrite_workspace_refuses_a_malformed_digest_naming_the_image():
    with pytest.raises(mi.ManageImagesError, match=f"refusing the digest 'sha256:abc' for {URL}:"):
        mi.rewrite_workspace(ours(), URL, "sha256:abc")


def test_workspace_findings_name_kind_line_and_message():
    data = b"\n" + ours(b"sha256:TODO")
    assert mi.workspace_findings(data, URL, D1, "prod.txt") == [
        mi.Finding(
            "WORKSPACE",
            2,
            "rbe_autoconfig digest 'sha256:TODO' is not a well-formed digest (sha256: and 64 lowercase hex digits)",
            "malformed",
        )
    ]
    assert mi.workspace_findings(ours(), URL, None, "prod.txt") == [
        mi.Finding("WORKSPACE", 1, f"rbe_autoconfig pins {URL}, which is not listed in prod.txt", "unlisted")
    ]
    assert mi.workspace_findings(ours(), URL, D2, "prod.txt") == [
        mi.Finding(
            "WORKSPACE", 1, f"rbe_autoconfig digest {D1[:19]} differs from prod.txt ({D2[:19]})", "stale"
        )
    ]
    assert mi.workspace_findings(ours(), URL, D1, "prod.txt") == []


# --- prod_digests.txt --------------------------------------------------------------


def line(name: str, digest: str = D1) -> bytes:
    return f"gcr.io/iree-oss/{name}@{digest}\n".encode()


def test_parse_prod_digests_entries_and_findings():
    data = (
        line("base")
        + b"\xff@garbage\n"
        + b"@"
        + D1.encode()
        + b"\n"
        + b"x@y@"
        + D1.encode()
        + b"\n"
        + line("util")
        + line("base")
        + line("base", D2)
    )
    entries, findings = mi.parse_prod_digests(data, "prod.txt")
    assert entries == [
        mi.ProdDigest(1, "gcr.io/iree-oss/base", D1),
        mi.ProdDigest(5, "gcr.io/iree-oss/util", D1),
    ]
    expected = "expected REGISTRY/NAME@sha256:<64 lowercase hex>"
    assert findings == [
        mi.Finding(
            "prod.txt",
            2,
            "the line is not UTF-8 (byte 1 is 0xff); save the file as plain UTF-8 text",
            "malformed",
        ),
        mi.Finding("prod.txt", 3, f"malformed line '@{D1}': {expected}", "malformed"),
        mi.Finding("prod.txt", 4, f"malformed line 'x@y@{D1}': {expected}", "malformed"),
        mi.Finding("prod.txt", 6, "duplicate line for gcr.io/iree-oss/base (first on line 1)", "duplicate"),
        mi.Finding(
            "prod.txt",
            7,
            "gcr.io/iree-oss/base is listed again with another digest than on prod.txt:1, so its pin is "
            "ambiguous; keep the right line only",
            "ambiguous",
        ),
    ]


def test_prod_digest_findings_keep_out_of_graph_digests_and_other_registries_apart():
    data = line("base") + line("gone", D2) + b"gcr.io/iree-osx/cmake@" + NEW.encode() + b"\n"
    digests, findings = mi.prod_digest_findings(data, "prod.txt", "gcr.io/iree-oss", GRAPH)
    assert digests == {"base": D1, "gone": D2}
    assert findings == [
        mi.Finding(
            "prod.txt",
            2,
            "gcr.io/iree-oss/gone is not an image of the graph under gcr.io/iree-oss",
            "unknown-image",
        ),
        mi.Finding(
            "prod.txt",
            3,
            "gcr.io/iree-osx/cmake is not an image of the graph under gcr.io/iree-oss",
            "unknown-image",
        ),
    ]


# --- More edges, from the second mutation run ----------------------------------------


def test_an_unknown_dependency_error_lists_every_unknown_one():
    with pytest.raises(
        mi.ManageImagesError, match="^IMAGES_TO_DEPENDENCIES: a depends on x, y, which is not"
    ):
        mi.validate_graph({"a": ("x", "y")})


def test_the_naming_index_lists_what_find_references_pins_and_nothing_else():
    # The registry is spelled in pieces so that this tree's own --check does not read it as a pin.
    registry = "gcr.io/" + "iree-oss"
    data = f"see {registry}/ for images; {registry}/cmake@sha256:x and x{registry}/util@sha256:{'1' * 64}".encode()
    assert [(ref.name, ref.hexdigits) for ref in mi.find_references(data, registry)] == [("cmake", b"x")]
    assert mi.pinned_names(mi.find_references(data, registry)) == {"cmake"}


def test_a_registry_like_a_digest_is_read_past_each_reference_it_ends():
    # `--registry sha256:5000` (host sha256, port 5000): a reference's digest
    # `sha256:5000` is also the start of the registry. The scan goes on after
    # the reference, so what follows inside it is not a second one.
    registry = "sha256:5000"
    data = f"{registry}/cmake@{registry}/util@sha256:{'1' * 64}".encode()
    assert [(ref.name, ref.hexdigits, ref.end) for ref in mi.find_references(data, registry)] == [
        ("cmake", b"5000", len(f"{registry}/cmake@{registry}"))
    ]
    scan = mi.TreeScan(("f",), (), (), frozenset(), {})
    files = mi.TrackedFiles(Path("/nonexistent"), scan, registry)
    files.written("f", data)
    assert (files.naming("cmake"), files.naming("util")) == (["f"], [])


def test_digest_errors_say_what_was_refused():
    message = (
        "refusing the digest 'sha256:abc' for gcr.io/iree-oss/cmake: expected sha256: and 64 lowercase hex "
        "digits; no file was changed"
    )
    with pytest.raises(mi.ManageImagesError) as error:
        rewrite(b"", "gcr.io/iree-oss", {"cmake": "sha256:abc"})
    assert str(error.value) == message


def test_references_to_several_images_are_rewritten_in_one_pass():
    data = (
        b"gcr.io/iree-oss/a@"
        + D1.encode()
        + b" gcr.io/iree-oss/b@"
        + D1.encode()
        + b" gcr.io/iree-oss/c@"
        + D1.encode()
    )
    assert rewrite(data, "gcr.io/iree-oss", {"a": NEW, "c": D2}) == data.replace(
        b"a@" + D1.encode(), b"a@" + NEW.encode()
    ).replace(b"c@" + D1.encode(), b"c@" + D2.encode())


def test_the_scheduler_reports_each_start_and_times_each_image_with_its_clock():
    ticks = iter(range(100))
    starts = []

    def work(image: str, builder: str) -> str:
        if image == "c":
            raise mi.ManageImagesError("c failed")
        return image

    results = mi.run_graph(
        ["a", "b", "c"],
        {"a": (), "b": ("a",), "c": ("b",)},
        1,
        False,
        work,
        lambda image, value: None,
        on_start=lambda image, number, placed: starts.append((image, number)),
        clock=lambda: float(next(ticks)),
    )
    assert starts == [("a", 1), ("b", 2), ("c", 3)]
    assert [results[image].seconds for image in "abc"] == [1.0, 1.0, 1.0]  # failed ones are timed too
    assert [results[image].finished for image in "abc"] == [0, 1, 2]


def test_failures_are_ranked_in_the_order_they_finished():
    def work(image: str, builder: str) -> None:
        raise mi.ManageImagesError(image)

    results = mi.run_graph(
        ["a", "b", "c"], {"a": (), "b": (), "c": ()}, 1, True, work, lambda image, value: None
    )
    assert [(results[image].result, results[image].finished) for image in "abc"] == [
        ("failed", 0),
        ("failed", 1),
        ("failed", 2),
    ]
    assert all(results[image].seconds >= 0 for image in "abc")


def test_an_image_starts_as_soon_as_its_parents_finish_not_when_the_whole_wave_does():
    import threading

    c_started = threading.Event()

    def work(image: str, builder: str) -> str:
        if image == "c":
            c_started.set()
        if image == "a" and not c_started.wait(timeout=10):  # a waits for c, which needs b only
            raise mi.ManageImagesError("c never started while a ran")
        return image

    results = mi.run_graph(
        ["a", "b", "c"], {"a": (), "b": (), "c": ("b",)}, 2, False, work, lambda image, value: value
    )
    assert [results[image].result for image in "abc"] == ["done", "done", "done"]


def test_layered_edits_read_through_merge_into_and_list_their_parent():
    class Files:
        scan = None

        def read(self, relative: str) -> bytes:
            return b"disk:" + relative.encode()

    files = Files()
    files.registry = "r"
    run = mi.Edits(files)  # type: ignore[arg-type]
    run.edit("x", lambda data: data + b"+run r/a@sha256:1")
    child = mi.Edits(files, parent=run)  # type: ignore[arg-type]
    assert child.read("x") == b"disk:x+run r/a@sha256:1"
    child.edit("x", lambda data: data.replace(b"+run", b"+run+child"))
    child.edit("y", lambda data: data + b"+child r/b:t@sha256:2 r/a:unpinned")
    assert (child.naming("a"), child.naming("b")) == (["x"], ["y"])
    run.edit("z", lambda data: b"z+run r/a:t@sha256:3")
    assert child.naming("a") == ["x", "z"]
    assert child.changes() == [
        mi.FileChange.whole("x", b"disk:x+run r/a@sha256:1", b"disk:x+run+child r/a@sha256:1"),
        mi.FileChange.whole("y", b"disk:y", b"disk:y+child r/b:t@sha256:2 r/a:unpinned"),
    ]
    child.merge()
    assert run.changes() == [
        mi.FileChange.whole("x", b"disk:x", b"disk:x+run+child r/a@sha256:1"),
        mi.FileChange.whole("z", b"disk:z", b"z+run r/a:t@sha256:3"),
        mi.FileChange.whole("y", b"disk:y", b"disk:y+child r/b:t@sha256:2 r/a:unpinned"),
    ]


def test_a_digest_split_over_lines_is_refused_even_when_its_columns_line_up():
    # The implicit concatenation's last column on line 2 equals the first
    # literal's last column on line 1: only the line check tells them apart.
    first = '    digest = ("sha256:11"'
    second = " " * (len(first) - 4) + '"22"),'
    data = (
        "rbe_autoconfig(\n" + first + "\n" + second + "\n" + '    registry = "gcr.io",\n'
        '    repository = "iree-oss/rbe-toolchain",\n)\n'
    ).encode()
    with pytest.raises(
        mi.WorkspaceError, match="^WORKSPACE:2: rbe_autoconfig `digest` is not a plain string literal"
    ):
        mi.rewrite_workspace(data, URL, NEW)


def test_new_blocks_join_to_the_new_content_whatever_the_block_boundaries():
    old = bytes(range(256)) * 4
    splices = ((0, 3, b"abc"), (62, 66, b"WXYZ"), (66, 66, b""), (500, 700, b"-" * 200), (1021, 1024, b"end"))
    change = mi.FileChange("f", old, splices)
    assert change.patchable()
    for size in (1, 7, 64, 100, 1024, 4096):
        blocks = list(mi.new_blocks(change, size))
        assert [offset for offset, _ in blocks] == list(range(0, len(old), size))
        assert b"".join(blocks_ for _, blocks_ in blocks) == change.new()
    assert change.new()[62:66] == b"WXYZ" and change.new()[-3:] == b"end" and len(change.new()) == len(old)


def test_a_file_change_is_changed_only_where_a_splice_holds_other_bytes():
    old = b"abcdef"
    assert not mi.FileChange("f", old, ((1, 3, b"bc"), (4, 6, b"ef"))).changed()
    assert mi.FileChange("f", old, ((1, 3, b"bc"), (4, 6, b"eX"))).changed()
    assert not mi.FileChange.whole("f", old, b"abcdef").changed()
    assert mi.FileChange.whole("f", old, b"abcdeX").changed()


def test_only_small_same_length_splices_are_patched_in_place():
    old = b"x" * (3 * mi.BLOCK)
    assert mi.FileChange("f", old, ((0, mi.BLOCK, b"y" * mi.BLOCK),)).patchable()
    assert not mi.FileChange("f", old, ((0, mi.BLOCK + 1, b"y" * (mi.BLOCK + 1)),)).patchable()
    assert not mi.FileChange("f", old, ((5, 6, b"yy"),)).patchable()
    assert not mi.FileChange.whole("f", old, b"y" * len(old)).patchable()


def test_applying_no_splice_or_one_of_the_whole_copies_nothing():
    data, new = b"old bytes" * 10, b"new bytes" * 10
    assert mi.apply_splices(data, ()) is data
    assert mi.apply_splices(data, ((0, len(data), new),)) is new
    assert mi.apply_splices(data, ((0, 3, b"NEW"), (4, 9, b"BYTES"))) == b"NEW BYTES" + data[9:]


def test_a_patch_on_top_of_a_pending_edit_applies_to_the_edited_bytes():
    class Files:
        scan = None

        def read(self, relative: str) -> bytes:
            return b"0123456789"

    edits = mi.Edits(Files())  # type: ignore[arg-type]
    edits.patch("f", [(0, 2, b"ab")])
    assert edits.read("f") == b"ab23456789"
    edits.edit("f", lambda data: data + b"+")
    edits.patch("f", [(4, 6, b"ef")])
    assert edits.changes() == [mi.FileChange.whole("f", b"0123456789", b"ab23ef6789+")]


def test_layered_edits_find_references_in_what_they_read():
    registry = "gcr.io/iree-oss"
    on_disk = f"{registry}/a@{D1}\n".encode()

    class Files:
        scan = None

        def __init__(self) -> None:
            self.registry = registry

        def read(self, relative: str) -> bytes:
            return on_disk

        def references(self, relative: str) -> list:
            return list(mi.find_references(on_disk, registry))

    run = mi.Edits(Files())  # type: ignore[arg-type]
    run.edit("f", lambda data: b"# moved\n" + data.replace(b"/a@", b"/b@"))
    child = mi.Edits(Files(), parent=run)  # type: ignore[arg-type]
    assert [(ref.name, ref.hex_start) for ref in child.references("f")] == [("b", 8 + len(registry) + 10)]
    assert [(ref.name, ref.hex_start) for ref in child.references("g")] == [("a", len(registry) + 10)]


# --- Survivors of the third mutation run that an input tells apart ---------------------


def test_two_rules_on_one_line_are_each_rewritten_in_place():
    # Valid Starlark: two calls joined by `;`. The first holds a short
    # placeholder, so its rewrite moves every byte after it: the rules must be
    # rewritten from the last span to the first, whatever else orders them
    # (here the placeholder sorts after the digest).
    line = ours(b"sha256:TODO").rstrip(b"\n") + b"; " + ours()
    assert mi.rewrite_workspace(line, URL, NEW) == (
        ours(NEW.encode()).rstrip(b"\n") + b"; " + ours(NEW.encode()),
        2,
    )


def test_an_empty_workspace_digest_is_reported_as_empty():
    data = ours(b"")
    (rule,) = mi.parse_rbe_rules(data)
    assert (
        rule.digest == "" and rule.digest_span is not None
    )  # a plain literal, so a rule rules_naming returns
    assert mi.workspace_findings(data, URL, D1, "prod.txt") == [
        mi.Finding(
            "WORKSPACE",
            1,
            "rbe_autoconfig digest '' is not a well-formed digest (sha256: and 64 lowercase hex digits)",
            "malformed",
        )
    ]


def test_slice_is_the_slice_and_the_whole_is_not_copied():
    data = b"abcdef"
    for start in range(len(data) + 1):
        for end in range(start, len(data) + 1):
            assert mi._slice(data, start, end) == data[start:end], (start, end)
    assert mi._slice(data, 0, len(data)) is data
