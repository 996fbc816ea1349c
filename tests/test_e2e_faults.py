"""End-to-end: parallel runs, a remote engine, and injected faults.

After each fault: the documented exit code, no half-written file (every
tracked file holds either its old content or the content an uninterrupted run
gives it), nothing pushed after the failure, and a rerun that completes the
job with the same result as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import fake_tree
import manage_images
from helpers import (
    ALL,
    GRAPH,
    SCRIPT,
    STEPS,
    Tool,
    assert_pinned_to_registry,
    change_stamp,
    engine_kind,
    failed_run_exit_code,
    inspect,
    push_command,
    references,
    run_tool,
)
from helpers import stamp as stamp_in

pytestmark = pytest.mark.e2e


def dependents(*images: str) -> set[str]:
    return set(manage_images.ordered_images_to_process(list(images), GRAPH))


def prepare(world: Path, folder: Path, name: str, edits) -> Path:
    """A clone of the world with `edits(repo)` applied and committed."""
    repo = fake_tree.clone(world, folder / name)
    edits(repo)
    fake_tree.git(repo, "commit", "-q", "-am", "Change for this test")
    return repo


def set_stamp(text: str):
    def edits(repo: Path) -> None:
        (repo / "build_tools" / "docker" / "base" / "stamp").write_text(text)

    return edits


def nonce() -> str:
    """Makes a change new to the engine: its build cache outlives test sessions."""
    return uuid.uuid4().hex


def slow(image: str, seconds: int, stamp: str):
    """Edits: base gets a new stamp, and IMAGE's build sleeps for a while."""

    def edits(repo: Path) -> None:
        set_stamp(stamp)(repo)
        dockerfile = repo / "build_tools" / "docker" / image / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + f"RUN sleep {seconds}\n")

    return edits


def assert_each_file_old_or_new(repo: Path, old: dict[str, bytes], new: dict[str, bytes]) -> None:
    """No half-written file: each file is its old or its new content, or, where
    it pins several images (prod_digests.txt), each of its lines is."""
    for name, data in fake_tree.tracked_files(repo).items():
        if data in (old[name], new[name]):
            continue
        lines, old_lines, new_lines = (
            text.splitlines(keepends=True) for text in (data, old[name], new[name])
        )
        assert len(lines) == len(old_lines) == len(new_lines), name
        for line, old_line, new_line in zip(lines, old_lines, new_lines):
            assert line in (old_line, new_line), (name, line)
    status = fake_tree.git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert all(line.startswith(" M ") for line in status), status


def start_tool(repo: Path, registry, *args: str) -> Tool:
    return Tool(repo, "--registry", registry.url, *args)


# --- Parallel runs -----------------------------------------------------------


def test_parallel_run_ends_like_a_sequential_one(world, registry, tmp_path):
    stamp = f"base parallel {nonce()}\n"
    parallel = prepare(world, tmp_path, "parallel", set_stamp(stamp))
    sequential = prepare(world, tmp_path, "sequential", set_stamp(stamp))

    result = run_tool(parallel, "--images", "all", *STEPS, "-j", "4", registry=registry)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_pinned_to_registry(parallel, registry, ALL)
    for image in dependents("base"):
        assert stamp_in(registry, image, registry.digest(image, "latest"), "base") == stamp, image
    created = {image: inspect(f"{registry.url}/{image}:latest")["Created"] for image in ALL}
    for image in ALL:
        for parent in GRAPH[image]:
            assert created[parent] < created[image], (parent, image)
    served = registry.snapshot(ALL, ("latest",))

    again = run_tool(sequential, "--images", "all", *STEPS, "-j", "1", registry=registry)

    assert again.returncode == 0, again.stdout + again.stderr
    assert fake_tree.tracked_files(sequential) == fake_tree.tracked_files(parallel)
    assert registry.snapshot(ALL, ("latest",)) == served


def break_cmake_python(repo: Path) -> None:
    set_stamp(f"base keep going {nonce()}\n")(repo)
    dockerfile = repo / "build_tools" / "docker" / "cmake-python" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN exit 3\n")


def test_keep_going_lets_independent_branches_finish(world, registry, tmp_path):
    repo = prepare(world, tmp_path, "repo", break_cmake_python)
    before = references(repo, registry)
    served = registry.snapshot(ALL, ("latest",))

    result = run_tool(repo, "--images", "all", *STEPS, "-j", "2", "--keep_going", registry=registry)

    assert result.returncode == failed_run_exit_code(3), result.stdout + result.stderr
    blocked = dependents("cmake-python")
    after = registry.snapshot(ALL, ("latest",))
    found = references(repo, registry)
    for image in ALL:
        if image in blocked:
            assert after[(image, "latest")] == served[(image, "latest")], image
            assert found[image] == before[image], image
        else:
            assert found[image] == {after[(image, "latest")]}, image
    for image in dependents("base") - blocked:
        assert after[(image, "latest")] != served[(image, "latest")], image


def test_docker_host_sends_the_work_to_another_engine(repo, registry, second_engine):
    image = "bazel-tensorflow-nvidia"
    change_stamp(repo, image, "built remotely\n")

    result = run_tool(repo, "--image", image, *STEPS, registry=registry, env=second_engine)

    assert result.returncode == 0, result.stdout + result.stderr
    served = registry.digest(image, "latest")
    assert references(repo, registry)[image] == {served}
    remote = subprocess.run(
        ("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", f"{registry.url}/{image}:latest"),
        env=second_engine,
        capture_output=True,
        text=True,
    )
    assert f"{registry.url}/{image}@{served}" in remote.stdout
    local = inspect(f"{registry.url}/{image}:latest")
    assert local is None or f"{registry.url}/{image}@{served}" not in local["RepoDigests"]


# --- Faults ------------------------------------------------------------------


def uninterrupted(world: Path, tmp_path: Path, edits, registry, *args: str) -> dict[str, bytes]:
    """The tracked files after the same change, run without a fault.

    Run with -j 4 to save time: the result does not depend on -j
    (test_parallel_run_ends_like_a_sequential_one).
    """
    reference = prepare(world, tmp_path, "uninterrupted", edits)
    result = run_tool(reference, *args, "-j", "4", registry=registry)
    assert result.returncode == 0, result.stdout + result.stderr
    return fake_tree.tracked_files(reference)


def test_registry_stopped_in_the_middle_of_a_push(world, registry, tmp_path):
    # The registry stops while cmake's build sleeps, so it is down for cmake's push.
    edits = slow("cmake", 10, f"base registry down {nonce()}\n")
    repo = prepare(world, tmp_path, "repo", edits)
    old = fake_tree.tracked_files(repo)
    served = registry.snapshot(ALL, ("latest",))

    tool = start_tool(repo, registry, "--images", "all", *STEPS)
    try:
        tool.wait_for_line("Processing image cmake ")
        tool.wait_for_line("RUN sleep 10")
        registry.stop()
        code, stdout, stderr = tool.finish(timeout=600)
    finally:
        if registry.process is None:
            registry.start()

    assert code == 1, stdout + stderr
    assert push_command(f"{registry.url}/cmake") in stderr
    assert f"the registry {registry.host} is unreachable" in stderr
    after = registry.snapshot(ALL, ("latest",))
    order = manage_images.ordered_images_to_process(ALL, GRAPH)
    for image in order[order.index("cmake") :]:
        assert after[(image, "latest")] == served[(image, "latest")], image
    assert after[("base", "latest")] != served[("base", "latest")]
    assert references(repo, registry)["base"] == {after[("base", "latest")]}

    new = uninterrupted(world, tmp_path, edits, registry, "--images", "all", *STEPS)
    assert_each_file_old_or_new(repo, old, new)
    rerun = run_tool(repo, "--images", "all", *STEPS, registry=registry)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert fake_tree.tracked_files(repo) == new


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_build(world, registry, tmp_path, signum):
    slow_cmake = slow("cmake", 20, f"base slow {nonce()}\n")
    repo = prepare(world, tmp_path, "repo", slow_cmake)
    old = fake_tree.tracked_files(repo)
    served = registry.snapshot(ALL, ("latest",))

    tool = start_tool(repo, registry, "--images", "all", *STEPS, "-j", "2")
    tool.wait_for_line(f"Running: `docker build --tag {registry.url}/cmake:latest")
    # The 20 s step is under way: BuildKit prints its line as it starts it
    # (`#9 [3/3] RUN sleep 20`), the classic builder once its container runs.
    tool.wait_for_line("RUN sleep 20")
    if engine_kind()[3] == "classic":
        tool.wait_for_line("[cmake]  ---> Running in ")
    tool.send_signal(signum)
    code, stdout, stderr = tool.finish(timeout=120)

    assert code == 128 + signum, stdout + stderr
    # The build was stopped, not waited for: it never finished.
    assert f"Successfully tagged {registry.url}/cmake:latest" not in stdout
    assert f"naming to {registry.url}/cmake:latest" not in stdout  # BuildKit's
    assert "Summary:" in stdout
    after = registry.snapshot(ALL, ("latest",))
    for image in dependents("cmake"):
        assert after[(image, "latest")] == served[(image, "latest")], image
    new = uninterrupted(world, tmp_path, slow_cmake, registry, "--images", "all", *STEPS, "-j", "2")
    assert_each_file_old_or_new(repo, old, new)
    rerun = run_tool(repo, "--images", "all", *STEPS, "-j", "2", registry=registry)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert fake_tree.tracked_files(repo) == new


def many_references(stamp: str):
    """Edits: a thousand tracked files pinning base, so rewriting takes a while."""
    return lambda repo: add_notes(repo, stamp)


def add_notes(repo: Path, stamp: str) -> None:
    set_stamp(stamp)(repo)
    notes = repo / "notes"
    notes.mkdir()
    line = (repo / "build_tools" / "docker" / "prod_digests.txt").read_text().splitlines()[0] + "\n"
    for number in range(1000):
        (notes / f"{number:04}.txt").write_text(f"note {number}\r\n{line}" + "x" * 2000)
    fake_tree.git(repo, "add", "notes")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_reference_rewriting(world, registry, tmp_path, signum):
    edits = many_references(f"base many {nonce()}\n")
    repo = prepare(world, tmp_path, "repo", edits)
    old = fake_tree.tracked_files(repo)

    tool = start_tool(repo, registry, "--images", "all", *STEPS, "-j", "2")
    tool.wait_for_line("[base] Updating references in 1003 files")
    # The signal arrives while base's new files are being staged: a temporary
    # file beside them is the proof.
    deadline = time.monotonic() + 120
    while not any(name.startswith(".manage_images.") for name in os.listdir(repo / "notes")):
        assert time.monotonic() < deadline and tool.process.poll() is None, "never saw the rewrite under way"
    tool.send_signal(signum)
    code, stdout, stderr = tool.finish(timeout=300)

    assert code == 128 + signum, stdout + stderr
    assert f"Interrupted by {signal.Signals(signum).name}" in stdout
    assert not [name for name in os.listdir(repo / "notes") if name.startswith(".manage_images.")]
    new = uninterrupted(world, tmp_path, edits, registry, "--images", "all", *STEPS)
    assert_each_file_old_or_new(repo, old, new)
    rerun = run_tool(repo, "--images", "all", *STEPS, "-j", "2", registry=registry)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert fake_tree.tracked_files(repo) == new


@pytest.mark.parametrize(
    "relative",
    [
        f"{fake_tree.KOKORO_DIR}/cmake/android/arm64-v8a/build_kokoro.sh",
        "build_tools/docker/prod_digests.txt",
    ],
)
def test_unwritable_file_changes_nothing_for_the_image(repo, registry, relative):
    change_stamp(repo, "cmake-android", f"android {relative}\n")
    path = repo / relative
    mode = path.stat().st_mode
    path.chmod(0o444)
    before = fake_tree.tracked_files(repo)
    served = registry.snapshot(ALL, ("latest",))
    try:
        result = run_tool(repo, "--image", "cmake-android", *STEPS, registry=registry)
    finally:
        path.chmod(mode)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"cannot write {relative}: it is read-only; make it writable and run again "
        "(no file was changed for this image)"
    )
    assert fake_tree.tracked_files(repo) == before
    assert registry.snapshot(ALL, ("latest",)) == {
        **served,
        ("cmake-android", "latest"): registry.digest("cmake-android", "latest"),
    }

    rerun = run_tool(repo, "--image", "cmake-android", *STEPS, registry=registry)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_pinned_to_registry(repo, registry, ["cmake-android"])


class RefusingRegistry(BaseHTTPRequestHandler):
    """A registry endpoint that refuses every request for want of credentials."""

    def refuse(self) -> None:
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = refuse

    def log_message(self, *args) -> None:
        pass


def test_a_registry_refusing_the_push_changes_nothing(repo, registry):
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    image = "bazel-tensorflow-nvidia"
    subprocess.run(
        ("docker", "tag", f"{registry.url}/{image}:latest", f"{host}/iree-oss/{image}:latest"), check=True
    )
    before = fake_tree.tracked_files(repo)
    try:
        result = subprocess.run(
            (
                sys.executable,
                str(SCRIPT),
                "--registry",
                f"{host}/iree-oss",
                "--image",
                image,
                "--push",
                "--update_references",
            ),
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()

    assert result.returncode == 1, result.stdout + result.stderr
    failed = f"Command failed with exit code 1: `docker push {host}/iree-oss/{image}:latest`"
    if engine_kind()[2] == "containerd":
        # The containerd store's pusher retries the refused plain-HTTP registry over TLS and
        # reports only that (`tls: first record does not look like a TLS handshake`): no hint.
        assert result.stderr.splitlines()[-1].startswith(failed), result.stderr
    else:
        assert result.stderr.splitlines()[-1] == (
            f"{failed} (the registry {host} refused the request (authentication): "
            f"run `docker login {host}` and try again)"
        )
    assert fake_tree.tracked_files(repo) == before
