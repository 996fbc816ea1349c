"""Helpers the test modules share: constants, small trees, the tool as a
subprocess (in the foreground or the background), and what the registry and
the files hold. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Mapping, NoReturn

import pytest

import fake_tree
import manage_images
from registry import Registry
from standin import script_argv

GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
# The original tool's graph (IREE, late 2020), frozen: the tests that pin its exact
# orders and drawings use it, so adding an image to GRAPH changes none of them.
ORIGINAL_GRAPH: dict[str, tuple[str, ...]] = {
    "base": (),
    "util": (),
    "cmake": ("base", "util"),
    "cmake-android": ("cmake", "util"),
    "cmake-python": ("cmake",),
    "cmake-python-vulkan": ("cmake-python", "vulkan"),
    "cmake-python-swiftshader": ("cmake-python-vulkan", "swiftshader"),
    "cmake-python-nvidia": ("cmake-python-vulkan",),
    "bazel": ("base", "util"),
    "bazel-python": ("bazel",),
    "bazel-tensorflow": ("bazel-python",),
    "bazel-tensorflow-vulkan": ("bazel-tensorflow", "vulkan"),
    "bazel-tensorflow-swiftshader": ("bazel-tensorflow-vulkan", "swiftshader"),
    "bazel-tensorflow-nvidia": ("bazel-tensorflow-vulkan",),
    "rbe-toolchain": ("vulkan",),
    "swiftshader": ("cmake",),
    "vulkan": ("util",),
}
ALL = sorted(GRAPH)


def unlisted_image(graph: Mapping[str, object], stem: str = "cmake-riscv") -> str:
    """A name for an image `graph` does not list: `stem`, or `stem-2`, `stem-3`...
    (a user who adds an image by that very name breaks no test)."""
    return next(name for name in (stem, *(f"{stem}-{n}" for n in range(2, 100))) if name not in graph)


STEPS = ("--build", "--push", "--update_references")
TESTS = Path(__file__).resolve().parent
# tests/mutation.sh runs the tests on a scratch copy of the module.
SCRIPT = Path(
    os.environ.get("MANAGE_IMAGES_SCRIPT", TESTS.parent / "build_tools" / "docker" / "manage_images.py")
)
# The system's own commands, for what runs outside the stand-in's PATH.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# When set (CI always sets CI), a missing engine or registry fails the
# end-to-end tests instead of skipping them.
E2E_REQUIRED = bool(os.environ.get("CI") or os.environ.get("MANAGE_IMAGES_E2E"))


def after_engine_questions(commands: list[list[str]]) -> list[list[str]]:
    """The commands a run gave after its first two, which must be the engine questions
    every run that needs the engine begins with (`docker version` and `docker info`, asked
    at once, so in either order)."""
    questions = sorted([list(manage_images.ENGINE_VERSION_ARGV), list(manage_images.ENGINE_INFO_ARGV)])
    assert sorted(commands[:2]) == questions, commands
    return commands[2:]


def unavailable(message: str) -> NoReturn:
    """What a test does when the machine lacks something it needs: fail where the
    whole suite is required (CI, MANAGE_IMAGES_E2E), skip with `message` elsewhere."""
    if E2E_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


# --- The engine the tests run on ----------------------------------------------
# tests/provision-engines.sh provisions the three engines of the matrix and
# describes each in ENGINES_DIR/NAME/engine.env; MANAGE_IMAGES_ENGINE=NAME
# runs the tests on one of them (conftest.py applies it to this process's
# environment, so every docker the tests and the tool run talk to it).

ENGINES = ("classic", "buildkit", "containerd")
ENGINES_DIR = Path(os.environ.get("MANAGE_IMAGES_ENGINES_DIR", "/var/lib/manage-images-engines"))
CONTAINERD_STORE = "io.containerd.snapshotter.v1"


def engine_file(name: str) -> Path:
    return ENGINES_DIR / name / "engine.env"


def engine_variables(name: str) -> dict[str, str]:
    """The variables of NAME's engine file: KEY=VALUE lines, `$PATH` in a value
    standing for the caller's PATH (the file is also sourced by shell scripts)."""
    variables = {}
    for line in engine_file(name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            variables[key] = value
    return variables


def engine_environ(
    name: str | None, docker_config: Path, base: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """`base` pointed at engine NAME (None: the engine `base` already points
    at), with DOCKER_CONFIG isolated in `docker_config` and holding the buildx
    plugin the engine's client should see (none for the classic engine)."""
    env = dict(base)
    if name is None:
        # No engine file: the plugin of the caller's own docker config, if any.
        own = Path(base.get("DOCKER_CONFIG") or Path(base.get("HOME", "/root")) / ".docker")
        buildx = own / "cli-plugins" / "docker-buildx"
        plugin = str(buildx) if buildx.exists() else ""
    else:
        variables = engine_variables(name)
        path = variables.pop("PATH", "$PATH").replace("$PATH", base.get("PATH", os.defpath))
        env.update(variables, PATH=path)
        plugin = variables.get("MANAGE_IMAGES_ENGINE_BUILDX", "")
    plugins = docker_config / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    if plugin and not (plugins / "docker-buildx").exists():
        (plugins / "docker-buildx").symlink_to(plugin)
    env["DOCKER_CONFIG"] = str(docker_config)
    return env


def engine_kind(env: Mapping[str, str] | None = None) -> tuple[str, str, str, str]:
    """(server version, storage driver, image store, builder) of the engine `env` points at."""
    info = subprocess.run(
        ("docker", "info", "--format", "{{json .}}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if info.returncode != 0:
        return ("no engine", info.stderr.strip(), "", "")
    data = json.loads(info.stdout)
    store = (
        "containerd"
        if ["driver-type", CONTAINERD_STORE] in (data.get("DriverStatus") or [])
        else "graph driver"
    )
    plugins = (data.get("ClientInfo") or {}).get("Plugins") or []
    buildx = next((plugin.get("Version", "") for plugin in plugins if plugin.get("Name") == "buildx"), None)
    buildkit = (env if env is not None else os.environ).get("DOCKER_BUILDKIT")
    builder = "BuildKit (buildx " + str(buildx) + ")" if buildx and buildkit != "0" else "classic"
    return (data.get("ServerVersion", "?"), data.get("Driver", "?"), store, builder)


def buildkit(env: Mapping[str, str] | None = None) -> bool:
    """Whether `docker build` on the engine `env` points at is BuildKit."""
    return engine_kind(env)[3].startswith("BuildKit")


def push_command(url: str, tag: str = "latest") -> str:
    """How the command that pushes URL:TAG starts: `docker push` on the classic builder; on
    BuildKit through buildx the build pushes (`docker build --tag URL:TAG ... --push`)."""
    return f"docker build --tag {url}:{tag} " if buildkit() else f"docker push {url}:{tag}"


def failed_run_exit_code(code: int) -> int:
    """What `docker build` exits with when a RUN step exits with `code`: the classic
    builder passes the step's code on, BuildKit's CLI exits 1."""
    return 1 if buildkit() else code


def run_tool(repo: Path, *args: str, registry: Registry | None = None, env=None, timeout=900):
    """Runs manage_images.py as a subprocess from `repo`."""
    argv = [sys.executable, str(SCRIPT)]
    if registry is not None:
        argv += ["--registry", registry.url]
    return subprocess.run(
        argv + list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder every user may enter, for what a second user needs: pytest's
    tmp_path is root's alone, and the checkout may be too."""
    folder = Path(tempfile.mkdtemp(prefix="mi-shared-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_as(user: pwd.struct_passwd, shared: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """manage_images.py ARGS run in `repo` by the system's python3 as `user`,
    with only the user's own group. The user may be unable to read the
    checkout (a clone in /root or in a `mktemp -d` folder, both 0700) or this
    session's interpreter (a venv there), so what it runs is put first in
    `shared` (a shared_folder), readable by all: a copy of the module, and a
    home of the user's own."""
    tool = shared / "tool"
    tool.mkdir(exist_ok=True)
    tool.chmod(0o755)  # whatever the umask
    script = tool / SCRIPT.name
    if not script.exists():
        script.write_bytes(SCRIPT.read_bytes())
        script.chmod(0o644)
    home = shared / f"home-{user.pw_name}"
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, user.pw_uid, user.pw_gid)
    python = shutil.which("python3", path=SYSTEM_PATH)
    assert python is not None, "the system has no python3"
    return subprocess.run(
        [python, str(script), *args],
        cwd=repo,
        env={"PATH": SYSTEM_PATH, "HOME": str(home), "LC_ALL": "C.UTF-8"},
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def fresh_engine(environ: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Another dockerd of the same kind as the one `environ` (default: this
    process's environment) points at, with its own data, exec root, pid file
    and socket, and nothing in it; yields the environment that points docker
    at it.

    Same kind: the same dockerd binary and daemon configuration (so the same
    image store), the same client and DOCKER_CONFIG (so the same buildx), as
    the engine file of MANAGE_IMAGES_ENGINE says; checked against `docker
    info` of both. It shares docker0 and leaves iptables alone: `--bridge=none`
    would make it delete docker0 and break the first engine's RUN steps.
    """
    base = dict(os.environ if environ is None else environ)
    folder = Path(tempfile.mkdtemp(prefix="mi-engine-", dir="/tmp"))
    socket = folder / "docker.sock"
    log = open(folder / "dockerd.log", "wb")
    config = base.get("MANAGE_IMAGES_ENGINE_DAEMON_JSON")
    process = subprocess.Popen(
        (
            base.get("MANAGE_IMAGES_ENGINE_DOCKERD") or "dockerd",
            *(("--config-file", config) if config else ()),
            "--data-root",
            str(folder / "data"),
            "--exec-root",
            str(folder / "exec"),
            "--pidfile",
            str(folder / "docker.pid"),
            "--host",
            f"unix://{socket}",
            "--iptables=false",
            "--ip-masq=false",
        ),
        stdout=log,
        stderr=log,
        env=base,
    )
    env = {**base, "DOCKER_HOST": f"unix://{socket}"}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(("docker", "info"), env=env, capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start; see {folder / 'dockerd.log'}")
            time.sleep(0.5)
        if engine_kind(env) != engine_kind(base):
            raise RuntimeError(f"the second dockerd is {engine_kind(env)}, not {engine_kind(base)}")
        yield env
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


class Tool:
    """manage_images.py running in the background; threads read its output, so
    waiting for a line has a deadline that holds even when the tool is silent.
    With the stand-in docker (the `standin` fixture), the stand-in registry
    answers the tool's registry questions too, as in `run_script`."""

    def __init__(self, repo: Path, *args: str) -> None:
        argv = script_argv(*args) if "STANDIN_CONFIG" in os.environ else [sys.executable, str(SCRIPT), *args]
        self.process = subprocess.Popen(
            argv,
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str], forward: bool) -> None:
        for line in stream:
            lines.append(line)
            if forward:
                self._lines.put(line)
        if forward:
            self._lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 300) -> None:
        """Returns once the tool printed a line holding `needle`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} within {timeout} s:\n{''.join(self.stdout)}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"the tool ended without a line with {needle!r}:\n{''.join(self.stdout)}"
                )
            if needle in line:
                return

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Waits for the tool to end; its exit code, stdout and stderr."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code, "".join(self.stdout), "".join(self.stderr)


# --- Unit-test trees and bytes -------------------------------------------------

REGISTRY = "gcr.io/iree-oss"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "a" * 64
NEW = "sha256:" + "f" * 64


# The inputs label every build gets (#30), for tests about everything else in a command.
LABEL_RE = re.compile(rf" --label {re.escape(manage_images.INPUTS_LABEL)}=v\d+:sha256:[0-9a-f]{{64}}")


def unlabelled(text: str) -> str:
    """`text` (commands and their output) without the inputs label of each `docker build`."""
    return LABEL_RE.sub("", text)


def without_label(argv: list[str]) -> list[str]:
    """A `docker build` argv without its inputs label."""
    return unlabelled(" ".join(argv)).split(" ") if "--label" in argv else argv


def usage_error(argv: list[str], capsys) -> str:
    """What `main(argv)` prints on stderr, having stopped it as a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        manage_images.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def rewrite(data: bytes, registry: str, digests: dict[str, str]) -> bytes:
    """`data` as the tool rewrites it to point each image of `digests` at its digest: as one
    tracked file whose references the tool's naming index finds (TrackedFiles.naming), patched
    by Edits as --only_references patches it."""
    scan = manage_images.TreeScan(("f",), (), (), frozenset(), {})
    files = manage_images.TrackedFiles(Path("/nonexistent"), scan, registry)
    files.written("f", data)  # what the run holds for the file: never read from disk
    hexes = manage_images.digest_hexes(registry, digests)
    edits = manage_images.Edits(files)
    for path in dict.fromkeys(path for image in digests for path in files.naming(image)):
        edits.patch(path, manage_images.reference_splices(edits.references(path), hexes))
    changes = edits.changes()
    return changes[0].new() if changes else data


def ref(name: str, digest: str = D1, registry: str = REGISTRY) -> bytes:
    return f"{registry}/{name}@{digest}".encode()


WORKSPACE = (
    b'load("@bazel_toolchains//rules:rbe_repo.bzl", "rbe_autoconfig")\n\n'
    b"rbe_autoconfig(\n"
    b'    name = "rbe_default",\n'
    b'    base_container_digest = "' + D2.encode() + b'",\n'
    b'    digest = "' + D1.encode() + b'",  # the toolchain image (not ")")\n'
    b'    registry = "gcr.io",\n'
    b'    repository = "iree-oss/rbe-toolchain",\n'
    b'    env = {"A": "(b"},\n'
    b")\n\n"
    b"container_pull(\n"
    b'    name = "other",\n'
    b'    digest = "' + D3.encode() + b'",\n'
    b")\n"
)


def write(root: Path, relative: str, data: bytes, mode: int | None = None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def small_tree(git_repo: Path) -> Path:
    """A small tracked tree referring to cmake and cmake-python by digest (and an untracked file)."""
    for image in GRAPH:
        write(git_repo, f"build_tools/docker/{image}/Dockerfile", b"FROM scratch\n")
    write(
        git_repo,
        "build_tools/docker/cmake-python/Dockerfile",
        b"FROM " + ref("cmake") + b" AS final\r\nRUN true",
    )
    write(git_repo, "build_tools/docker/prod_digests.txt", ref("cmake") + b"\n" + ref("cmake-python") + b"\n")
    write(
        git_repo,
        "ci/build.sh",
        b"docker run \\\n  " + ref("cmake-python") + b" \\\n  " + ref("cmake") + b"\n",
        0o755,
    )
    write(git_repo, "WORKSPACE", WORKSPACE)
    fake_tree.git(git_repo, "add", "-A")
    fake_tree.git(git_repo, "commit", "-q", "-m", "tree")
    write(git_repo, "untracked.txt", ref("cmake") + b"\n")
    return git_repo


def all_digests(digest: str = NEW, registry: str = REGISTRY) -> dict[str, list[str]]:
    """The stand-in docker's RepoDigests: every image's :latest pushed as `digest`."""
    return {f"{registry}/{image}:latest": [f"{registry}/{image}@{digest}"] for image in GRAPH}


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


# --- What the registry, the engine and the files hold (end-to-end) ------------


def gone(pid: int, timeout: float = 10) -> bool:
    """True once process `pid` no longer runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as status:
                if status.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def pins(repo: Path, registry: Registry) -> dict[str, str]:
    """image -> the digest prod_digests.txt pins it to."""
    prefix = f"{registry.url}/"
    lines = (repo / "build_tools" / "docker" / "prod_digests.txt").read_text().splitlines()
    return {url[len(prefix) :]: digest for url, _, digest in (line.partition("@") for line in lines)}


def image_id(ref: str, env: dict[str, str] | None = None) -> str | None:
    """The ID of a local image on the engine `env` points at, or None."""
    result = subprocess.run(
        ("docker", "image", "inspect", "--format", "{{.Id}}", ref), env=env, capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def pull(ref: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(("docker", "pull", "-q", ref), env=env, capture_output=True, check=True)


def references(repo: Path, registry) -> dict[str, set[str]]:
    """image -> the digests the tracked files pin it to (WORKSPACE rule included)."""
    return references_in(fake_tree.tracked_files(repo), registry)


def references_in(files: dict[str, bytes], registry) -> dict[str, set[str]]:
    """image -> the digests `files` (path -> bytes) pin it to (WORKSPACE rule included)."""
    found: dict[str, set[str]] = {}
    pattern = re.compile(re.escape(registry.url) + r"/([a-z0-9-]+)@(sha256:[0-9a-f]{64})")
    for name, data in files.items():
        text = data.decode("utf-8", "replace")
        for image, digest in pattern.findall(text):
            found.setdefault(image, set()).add(digest)
        if name == "WORKSPACE":
            rule = re.search(r'rbe_autoconfig\((?:.|\n)*?\n    digest = "(sha256:[0-9a-f]{64})"', text)
            found.setdefault("rbe-toolchain", set()).add(rule.group(1))
    return found


def docker(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(("docker", *args), capture_output=True, text=True, check=check, timeout=timeout)


def inspect(ref: str) -> dict | None:
    result = docker("image", "inspect", ref, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def stamp(registry, image: str, digest: str, name: str) -> str:
    """`/stamp/NAME` inside the image the registry serves under `digest`."""
    return file_in(f"{registry.url}/{image}@{digest}", f"/stamp/{name}")


def file_in(ref: str, path: str) -> str:
    """The text of the file PATH in the image REF (pulled if the engine lacks it), read from a
    created container with `docker cp`: `docker run` under load can miss a short-lived
    container's output, and an empty string would pass for an empty file."""
    import io
    import tarfile

    created = docker("create", ref, "true").stdout.strip()
    try:
        archive = subprocess.run(("docker", "cp", f"{created}:{path}", "-"), capture_output=True, check=True)
    finally:
        docker("rm", created, check=False)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        assert member is not None, (ref, path)
        return member.read().decode()


def change_stamp(repo: Path, image: str, text: str) -> str:
    """Commits a new stamp for IMAGE and returns it. A nonce makes the change new
    to the engine, whose build cache outlives test sessions."""
    text = f"{text.rstrip()} {uuid.uuid4().hex}\n"
    (repo / "build_tools" / "docker" / image / "stamp").write_text(text)
    fake_tree.git(repo, "commit", "-q", "-am", f"Change {image}")
    return text


def local_image(ref: str, env=None) -> dict:
    result = subprocess.run(
        ("docker", "image", "inspect", "--format", "{{json .}}", ref), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def holds_the_pins_content(registry, image: str, pinned: str, ref: str, env=None) -> bool:
    """Whether the local image `ref` (on the engine `env` points at) has the layers, runtime config
    and creation time of the config the registry serves for the pin; False if there is none."""
    if image_id(ref, env) is None:
        return False
    try:
        assert_holds_the_pins_content(registry, image, pinned, ref, env)
    except AssertionError:
        return False
    return True


def assert_holds_the_pins_content(registry, image: str, pinned: str, ref: str, env=None) -> None:
    """The local image `ref` has the layers, runtime config and creation time of the config
    the registry serves for the pin."""
    built, config = local_image(ref, env), registry.image_config(image, pinned)
    assert built["RootFS"]["Layers"] == config["rootfs"]["diff_ids"], image
    assert built["Created"] == config["created"], image
    # The runtime config (newer CLIs show only the OCI spec's fields of it).
    keys = manage_images.RUNTIME_CONFIG_KEYS
    runtime = {key: built["Config"][key] for key in keys if built["Config"].get(key)}
    assert runtime == {key: config["config"][key] for key in keys if config["config"].get(key)}, image


def assert_pinned_to_registry(repo: Path, registry, images, tag: str = "latest") -> None:
    found = references(repo, registry)
    for image in images:
        served = registry.digest(image, tag)
        assert served is not None, image
        assert found[image] == {served}, image
