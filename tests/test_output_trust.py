"""What the tool shows of what others say, and what it does with bad local state (#28).

A registry, a token server, a credential helper and a build's output are data:
they reach standard output, standard error, the per-image logs, the --json
report and an error's text with every credential in use removed (the
password, its base64 form, the tokens, the identity token), no control
character, and cut to a sane length. The servers here are real ones on
127.0.0.1 that put what they were sent, and escape sequences, into their
error bodies; the credential helper is a real program on PATH.

Then: a corrupt or hostile durations.json, a full log folder and an
unexpected error are each one clear line; the terminal view survives a
shrinking terminal (tmux); the report's `files` are the files written.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.parse
import uuid
from pathlib import Path

import pytest

import fake_tree
import manage_images as mi
from helpers import (
    D1,
    GRAPH,
    NEW,
    SCRIPT,
    all_digests,
    files,
    run_tool,
    small_tree,
    unavailable,
    without_label,
)
from standin import StandIn

USER = "alice"
PASSWORD = f"hunter2-{uuid.uuid4().hex}"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = f"bearer-{uuid.uuid4().hex}"
REFRESH = f"refresh+/={uuid.uuid4().hex}"  # characters a form encodes
SECRETS = (PASSWORD, BASIC, TOKEN, REFRESH, urllib.parse.quote_plus(REFRESH))
# What a hostile server writes to a terminal: a window title (OSC, in 7-bit and C1
# forms), a cleared screen and erased lines (CSI, also as C1), backspaces and a
# right-to-left override (its messages add a fake verdict and a carriage return).
ESCAPES = "\x1b]0;pwned-title\x07\x1b[2J\x1b[1A\x1b[2K\x9b2J\x9d0;c1-title\x9c\x08\x08\u202e"
CONTROLS = ("\x1b", "\x07", "\x08", "\x9b", "\x9c", "\x9d", "\u202e")
LEAF = "cmake-python-nvidia"  # nothing depends on it: promoting it promotes it alone


def manifest_of(repository: str) -> bytes:
    """The manifest the hostile registry serves for every tag of `repository`."""
    return json.dumps({"schemaVersion": 2, "repository": repository}).encode()


class HostileRegistry:
    """A registry on 127.0.0.1 (plain HTTP, as a loopback registry may be) that is its own
    token server, and answers one kind of request with an error body quoting what it was
    sent, escape sequences around it: `echo` is "manifest" (the registry's manifest
    requests), "token" (the token server's GET, Basic credentials in hand) or "refresh"
    (the refresh-token POST), or "" for none. `auth` is "basic" or "bearer". Each
    repository serves `manifest_of(repository)` under any tag and its digest."""

    def __init__(self, auth: str, echo: str) -> None:
        self.auth, self.echo = auth, echo
        self.tags: dict[tuple[str, str], str] = {}  # (repository, tag) -> the digest put there
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.answer(self, "GET")

            def do_HEAD(self) -> None:
                server.answer(self, "HEAD")

            def do_POST(self) -> None:
                server.answer(self, "POST")

            def do_PUT(self) -> None:
                server.answer(self, "PUT")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.host}/iree-oss"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, handler, method: str) -> None:
        path, _, query = handler.path.partition("?")
        authorization = handler.headers.get("Authorization") or ""
        if path == "/token":
            self.token(handler, method, authorization)
        elif not self.authorized(authorization):
            challenge = (
                'Basic realm="hostile"'
                if self.auth == "basic"
                else f'Bearer realm="http://{self.host}/token",service="hostile"'
            )
            self.send(handler, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "log in"}]}, challenge)
        elif self.echo == "manifest":
            self.send(handler, 404, self.complaint(authorization))
        elif method == "PUT":
            self.put(handler, path)
        else:
            self.manifest(handler, method, path)

    def put(self, handler, path: str) -> None:
        repository, _, tag = path.removeprefix("/v2/").partition("/manifests/")
        data = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.tags[(repository, tag)] = digest
        handler.send_response(201)
        handler.send_header("Docker-Content-Digest", digest)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def authorized(self, authorization: str) -> bool:
        return authorization in (f"Basic {BASIC}", f"Bearer {TOKEN}")

    def token(self, handler, method: str, authorization: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        form = handler.rfile.read(length).decode() if method == "POST" else ""
        if method == "POST" and self.echo == "refresh":
            said = f"{form} (your refresh token {urllib.parse.parse_qs(form)['refresh_token'][0]})"
            self.send(handler, 400, self.complaint(said))
        elif method == "GET" and self.echo == "token":
            self.send(handler, 400, self.complaint(authorization))
        else:
            self.send(handler, 200, {"token": TOKEN, "refresh_token": f"new-{REFRESH}"})

    def complaint(self, quoted: str) -> dict:
        """An error body that quotes `quoted` (and the password it holds, if any), among escapes."""
        if quoted.startswith("Basic "):
            quoted += f" = {base64.b64decode(quoted[6:]).decode()}"
        # Also cut, as a server that shortens what it quotes would: its start, and its end.
        quoted += f" (that is {quoted[:32]}... ...{quoted[-28:]})"
        message = f"{ESCAPES}Verified 17 images. You sent {quoted}{ESCAPES}\r"
        return {"errors": [{"code": "DENIED", "message": message}]}

    def manifest(self, handler, method: str, path: str) -> None:
        repository, _, reference = path.removeprefix("/v2/").partition("/manifests/")
        data = manifest_of(repository)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if reference.startswith("sha256:") and reference != digest:
            self.send(handler, 404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        handler.send_header("Docker-Content-Digest", digest)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method == "GET":
            handler.wfile.write(data)

    def send(self, handler, status: int, document: dict, challenge: str = "") -> None:
        body = json.dumps(document).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        if challenge:
            handler.send_header("WWW-Authenticate", challenge)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


@pytest.fixture
def hostile(request):
    auth, echo = request.param
    server = HostileRegistry(auth, echo)
    yield server
    server.stop()


def strings(value) -> list[str]:
    """Every string in a JSON document (JSON escapes control characters; its readers do not)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def outputs(result, report: Path, logs: Path) -> dict[str, str]:
    """What a run left for people and CI to read: its standard output and error, the
    report (the file and its strings as a reader gets them) and every log file."""
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    texts["report"] = report.read_text()
    texts["report strings"] = "\n".join(strings(json.loads(texts["report"])))
    for log in sorted(logs.rglob("*.log")):
        texts[str(log.relative_to(logs))] = log.read_text()
    return texts


def assert_nothing_leaked(texts: dict[str, str]) -> None:
    for name, text in texts.items():
        for secret in SECRETS:
            for start in range(len(secret) - mi.SECRET_PART + 1):  # nor any part of one
                assert secret[start : start + mi.SECRET_PART] not in text, f"a credential in {name}:\n{text}"
        for control in CONTROLS:
            assert control not in text, f"{control!r} in {name}:\n{text}"
        assert "pwned-title" not in text and "c1-title" not in text, f"an escape's payload in {name}"


def isolated_env(tmp_path: Path, config: dict) -> dict[str, str]:
    """The environment of a run: docker's config.json holding `config`, no engine."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (tmp_path / "certs.d").mkdir()
    return {
        **os.environ,
        "DOCKER_CONFIG": str(folder),
        "HOME": str(tmp_path),
        mi.CERTS_D_ENV: str(tmp_path / "certs.d"),
        "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}",
    }


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def leaf_tree(registry: HostileRegistry, tmp_path: Path) -> Path:
    data = manifest_of(f"iree-oss/{LEAF}")
    pin = f"sha256:{hashlib.sha256(data).hexdigest()}"
    return fake_tree.make_tree(tmp_path / "repo", registry.url, GRAPH, {LEAF: pin})


def promote(registry, root: Path, tmp_path: Path, env: dict[str, str]):
    report, logs = tmp_path / "report.json", tmp_path / "logs"
    argv = ["--registry", registry.url, "--image", LEAF, "--promote", "--tag", "prod"]
    argv += ["--json", str(report), "--log_dir", str(logs)]
    result = run_tool(root, *argv, env=env, timeout=120)
    return result, outputs(result, report, logs)


# --- 2. Nothing a registry says is trusted as text ---------------------------------------


@pytest.mark.parametrize(
    "hostile, config, said",
    [
        (("basic", "manifest"), {"auths": "basic"}, "(HTTP 404: "),
        (("bearer", "manifest"), {"auths": "basic"}, "(HTTP 404: "),
        (("bearer", "token"), {"auths": "basic"}, "token request to http://"),
        (("bearer", "refresh"), {"auths": "refresh"}, "token request to http://"),
    ],
    indirect=["hostile"],
    ids=["registry-echoes-basic", "registry-echoes-bearer", "token-server-echoes-basic", "echoes-refresh"],
)
def test_a_server_s_echo_of_the_credentials_and_escapes_reaches_no_output(hostile, config, said, tmp_path):
    entry = auth_entry(USER, PASSWORD) if config["auths"] == "basic" else {"identitytoken": REFRESH}
    env = isolated_env(tmp_path, {"auths": {hostile.host: entry}})
    root = leaf_tree(hostile, tmp_path)
    result, texts = promote(hostile, root, tmp_path, env)
    assert result.returncode == 1, texts
    assert_nothing_leaked(texts)
    # Still one line that says what failed, with the server's own words (made safe).
    (line,) = result.stderr.splitlines()
    assert said in line and "DENIED: Verified 17 images. You sent" in line, line
    document = json.loads(texts["report"])
    assert document["error"] == line
    assert line in Path(document["images"][0]["log"]).read_text()
    assert line in result.stdout  # the failed image's last log lines, under the summary


@pytest.mark.parametrize("hostile", [("bearer", "manifest")], indirect=True)
def test_an_error_s_text_holds_no_credential_and_no_escape(hostile, tmp_path):
    env = isolated_env(tmp_path, {"auths": {hostile.host: auth_entry(USER, PASSWORD)}})
    client = mi.RegistryClient(env)
    with pytest.raises(mi.RegistryError) as error:
        client.get_manifest(f"{hostile.url}/{LEAF}", "latest")
    assert_nothing_leaked({"the error": str(error.value)})
    assert str(error.value).startswith(f"{hostile.host} does not serve {hostile.url}/{LEAF}:latest (HTTP 404")


HELPER = """#!{python}
import json, sys
sys.stdin.read()
print(json.dumps({{"Username": "alice", "Secret": {password!r}}}))
sys.stderr.write({complaint!r})
sys.exit(1)
"""


@pytest.mark.parametrize("hostile", [("basic", "")], indirect=True)
def test_a_credential_helper_s_complaint_is_shown_without_its_secret_or_escapes(hostile, tmp_path):
    helper = tmp_path / "bin" / "docker-credential-hostile"
    helper.parent.mkdir()
    complaint = f"{ESCAPES}keychain locked for alice:{PASSWORD}{ESCAPES}\n"
    helper.write_text(HELPER.format(python=sys.executable, password=PASSWORD, complaint=complaint))
    helper.chmod(0o755)
    env = isolated_env(tmp_path, {"credHelpers": {hostile.host: "hostile"}})
    env["PATH"] = f"{helper.parent}{os.pathsep}{env['PATH']}"
    root = leaf_tree(hostile, tmp_path)
    result, texts = promote(hostile, root, tmp_path, env)
    assert result.returncode == 1, texts
    assert_nothing_leaked(texts)
    assert result.stderr.startswith(
        "`docker-credential-hostile get` failed with exit code 1 for "
        f"{hostile.host}: keychain locked for alice:***"
    ), result.stderr


@pytest.mark.parametrize("hostile", [("basic", "")], indirect=True)
@pytest.mark.parametrize("progress", ["plain", "tty"])
def test_a_build_s_output_reaches_the_screen_and_logs_without_escapes_or_credentials(
    hostile, progress, tmp_path
):
    env = isolated_env(tmp_path, {"auths": {hostile.host: auth_entry(USER, PASSWORD)}})
    fake = StandIn(tmp_path / "standin")
    env.update(fake.environ())
    env.pop("DOCKER_BUILDKIT", None)
    # The second image's build prints the password the run's first push used, among escapes,
    # and a line far longer than any terminal's; each stays shown long enough for the view.
    images = mi.ordered_images_to_process(["cmake-python-vulkan"], GRAPH)
    hostile_line = f"{ESCAPES}npm ERR! Authorization: Basic {BASIC} ({PASSWORD}){ESCAPES}\r"
    fake.set(say={"build": [[f"/{images[1]}:", hostile_line, 1.2], [f"/{images[1]}:", "x" * 100_000, 0]]})
    root = fake_tree.make_tree(tmp_path / "repo", hostile.url, GRAPH)
    report, logs = tmp_path / "report.json", tmp_path / "logs"
    argv = [sys.executable, str(SCRIPT), "--registry", hostile.url, "--images", images[0]]
    argv += ["--build", "--push", "--update_references", "--progress", progress]
    argv += ["--json", str(report), "--log_dir", str(logs)]
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    texts = outputs(result, report, logs)
    # The view's own sequences (hide the cursor, erase its lines) are the tool's.
    texts["stdout"] = re.sub(r"\x1b\[(?:\?25[lh]|\d*A|2?K|J)", "", texts["stdout"])
    assert_nothing_leaked(texts)
    (log,) = logs.glob(f"*/{images[1]}.log")
    text = log.read_text()
    assert "npm ERR! Authorization: Basic *** (***)\n" in text
    assert f"{'x' * (mi.OUTPUT_LINE_MAX - 3)}...\n" in text  # cut, and the rest of the line dropped
    if progress == "tty":  # the view drew the line (cut to the width) while it was the last one
        assert re.search(rf"  {images[1]} +build +\S+  npm ERR! Auth", result.stdout), result.stdout
    # The digests the tool pinned are the registry's, whatever the build printed.
    pins = (root / "build_tools/docker/prod_digests.txt").read_text()
    for image in images:
        digest = hashlib.sha256(manifest_of(f"iree-oss/{image}")).hexdigest()
        assert f"{hostile.url}/{image}@sha256:{digest}" in pins


def test_an_error_quoting_a_manifest_stays_one_line():
    # An index's platforms are the registry's text: a line break in one must not start a line of ours.
    entry = {"platform": {"os": f"linux\nVerified 17 images{ESCAPES}", "architecture": "arm64"}}
    with pytest.raises(mi.RegistryError) as error:
        mi.pick_platform({"manifests": [entry]}, "linux/amd64", "r/x@sha256:...")
    text = str(error.value)
    assert text.startswith("r/x@sha256:... is an index without a linux/amd64 image (it has: linux\\nVerified")
    assert "\n" not in text and not any(control in text for control in CONTROLS), text


def test_outside_text_is_one_safe_line():
    text = f"{ESCAPES}a\nb\tc\x00d\x7fe{ESCAPES} {PASSWORD}\nprogress 10%\rprogress 100%\r"
    assert mi.outside_text(text, mi.secret_forms(PASSWORD), 300) == "a b\tcde *** progress 100%"
    assert mi.outside_text("y" * 500, (), 10) == "yyyyyyy..."
    # A secret is replaced before the cut, so no part of it is left at the end.
    assert mi.outside_text(f"{'z' * 5}{PASSWORD}", mi.secret_forms(PASSWORD), 10) == "zzzzz***"


def test_printable_shows_controls_as_escapes_and_removes_every_form_of_a_secret():
    secret = 'p@ss "w/+rd"'
    forms = mi.secret_forms(secret)
    text = f"a\x1b[2Jb\x9bc\u202ed\r\n{secret} {json.dumps(secret)} {urllib.parse.quote(secret, safe='')}\r"
    assert (
        mi.printable(text, sorted(forms, key=len, reverse=True))
        == 'a\\x1b[2Jb\\x9bc\\u202ed\r\n*** "***" ***\r'
    )
    assert mi.secret_forms("abc") == set()  # too short to tell from ordinary words


# --- 8. The live view survives a shrinking terminal ----------------------------------------

HEADER = re.compile(r"\[\d+/\d+\] \d+ done, \d+ running, \d+ failed")
NAMES = "|".join(sorted(map(re.escape, GRAPH), key=len, reverse=True))
RUNNING = re.compile(rf"^  (?:{NAMES}) +build\b", re.M)


class Pane:
    """A command in a tmux window of its own server, `columns` by `rows`; the window stays
    once the command ends, saying `[exit N]`."""

    def __init__(self, tmux: str, folder: Path, cwd: Path, argv: list[str], env: dict[str, str]) -> None:
        self.tmux, self.env = tmux, env
        self.socket = f"mi-trust-{uuid.uuid4().hex[:12]}"
        script = folder / f"{self.socket}.sh"
        sleep = shutil.which("sleep")
        script.write_text(
            f'#!/bin/sh\ncd {shlex.quote(str(cwd))}\n{shlex.join(argv)}\necho "[exit $?]"\nexec {sleep} 600\n'
        )
        script.chmod(0o755)
        self.command("new-session", "-d", "-s", "run", "-x", "100", "-y", "30", str(script))

    def command(self, *args: str) -> str:
        argv = (self.tmux, "-L", self.socket, "-f", "/dev/null", *args)
        return subprocess.run(argv, env=self.env, check=True, capture_output=True, text=True).stdout

    def screen(self, history: bool = False) -> str:
        """What the window shows (with `history`, every line since the start), wrapped lines joined."""
        return self.command("capture-pane", "-p", "-J", *(["-S", "-"] if history else []), "-t", "run")

    def wait_for(self, found, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if found(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"not seen within {timeout} s:\n{self.screen(history=True)}")

    def close(self) -> None:
        subprocess.run((self.tmux, "-L", self.socket, "kill-server"), capture_output=True)


@pytest.fixture
def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        unavailable("tmux is not installed; run tests/provision-terminal.sh")
    return path


def test_the_view_leaves_no_old_frame_when_the_terminal_shrinks(tmux, git_repo, tmp_path):
    """The view is redrawn below the lines printed; once the terminal is as short as the
    view, the view starts at the top-left corner, where erasing "to the end of the screen"
    clears the screen, which tmux (as other terminals) scrolls into its history first:
    every redraw would leave a frame there, stacked above the summary. (The width shrinks
    first: a terminal that rewraps a frame taller than itself scrolls part of it away
    before any program can erase it.)"""
    root = small_tree(git_repo)
    fake = StandIn(tmp_path / "standin")
    go = tmp_path / "go"
    fake.set(hang={"build": {"tick": 0.1, "until": str(go)}})
    env = {**os.environ, **fake.environ(), "TERM": "xterm-256color"}
    for name in ("TMUX", "NO_COLOR", "DOCKER_BUILDKIT"):
        env.pop(name, None)
    argv = [sys.executable, str(SCRIPT), "--images", "all", "--build", "-j", "4"]
    pane = Pane(tmux, tmp_path, root, [*argv, "--log_dir", str(tmp_path / "logs")], env)
    try:
        pane.wait_for(lambda screen: HEADER.search(screen) and len(RUNNING.findall(screen)) == 2)
        pane.command("resize-window", "-t", "run", "-x", "60")
        time.sleep(1.5)
        pane.command("resize-window", "-t", "run", "-y", "4")
        time.sleep(2.5)  # two redraws at least (one a second)
        shrunk = pane.screen()
        go.write_text("")
        pane.wait_for(lambda screen: "[exit " in screen)
        pane.command("resize-window", "-t", "run", "-x", "100", "-y", "30")
        time.sleep(0.3)
        final = pane.screen(history=True)
    finally:
        pane.close()
    assert len(HEADER.findall(shrunk)) == 1 and len(RUNNING.findall(shrunk)) == 2, shrunk
    assert "[exit 0]" in final and "Summary:" in final, final
    assert not HEADER.search(final), f"an old frame was left on screen:\n{final}"
    assert not RUNNING.search(final), final


def test_a_line_of_wide_characters_is_cut_to_the_terminal_s_columns():
    # A build's output in CJK or with emoji: two columns a character on a terminal.
    line = mi.fit("日本語のテキスト 🐳 build step", 9)
    assert sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in line) <= 9
    assert line == "日本語..."
    assert mi.fit("e\u0301" * 5, 5) == "e\u0301" * 5  # a combining accent takes no column


# --- 7. Bad local state is one clear line, never "unexpected" ------------------------------

HOSTILE_DURATIONS = {
    "a huge number": b'{"schema": 1, "images": {"%s": {"promote": 1e999}}}',
    "a 100,000-digit number": b'{"schema": 1, "images": {"%s": {"promote": ' + b"9" * 100_000 + b"}}}",
    "NaN": b'{"schema": 1, "images": {"%s": {"promote": NaN}}}',
    "a negative duration": b'{"schema": 1, "images": {"%s": {"promote": -5}}}',
    "a string": b'{"schema": 1, "images": {"%s": {"promote": "12"}}}',
    "a list of images": b'{"schema": 1, "images": ["%s"]}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "bytes that are not UTF-8": b"\xff\xfe%s",
    "more than a record could be": b'{"images": {}, "padding": "' + b"x" * (2 << 20) + b'"}',
    "a FIFO": None,  # a read would wait for a writer forever
}


@pytest.mark.parametrize("hostile", [("basic", "")], indirect=True)
@pytest.mark.parametrize("what", list(HOSTILE_DURATIONS))
def test_a_hostile_durations_json_is_one_warning_and_the_promote_goes_on(hostile, what, tmp_path):
    env = isolated_env(tmp_path, {"auths": {hostile.host: auth_entry(USER, PASSWORD)}})
    root = leaf_tree(hostile, tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    durations = logs / mi.DURATIONS_NAME
    if HOSTILE_DURATIONS[what] is None:
        os.mkfifo(durations)
    else:
        durations.write_bytes(HOSTILE_DURATIONS[what].replace(b"%s", LEAF.encode()))
    argv = ["--registry", hostile.url, "--image", LEAF, "--promote", "--tag", "prod", "--log_dir", str(logs)]
    result = run_tool(root, *argv, env=env, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"warning: ignoring {durations}: "), line
    assert line.endswith("it only feeds the time-left estimate, and this run's durations replace it"), line
    assert hostile.tags[(f"iree-oss/{LEAF}", "prod")] == fake_tree_pin(root, hostile)
    # This run's record replaced it.
    assert set(mi.parse_durations(durations.read_bytes())) == {LEAF}


def fake_tree_pin(root: Path, registry: HostileRegistry) -> str:
    pins = (root / "build_tools/docker/prod_digests.txt").read_text()
    return re.search(rf"^{re.escape(registry.url)}/{LEAF}@(sha256:[0-9a-f]{{64}})$", pins, re.M).group(1)


SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def tmpfs(mount: Path, size: str, room: int):
    """A tmpfs of `size` at `mount`, filled but for `room` bytes once the caller's `yield` resumes."""
    mount.mkdir()
    tool = shutil.which("mount", path=SYSTEM_PATH) or "mount"
    result = subprocess.run(
        [tool, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")

    def fill() -> None:
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as file:
            with contextlib.suppress(OSError):
                while True:
                    file.write(b"x" * 4096)
        os.truncate(filler, max(filler.stat().st_size - room, 0))

    try:
        yield fill
    finally:
        subprocess.run([shutil.which("umount", path=SYSTEM_PATH) or "umount", "-l", str(mount)])


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, nearly full: the first two files written on it fit, the third does not."""
    with tmpfs(tmp_path / "disk", "64k", 8192) as fill:
        fill()
        yield tmp_path / "disk"


def test_a_log_folder_that_fills_up_mid_run_is_one_warning_and_the_run_s_work_goes_on(
    tree, standin, small_disk, capsys
):
    code = mi.main(["--images", "all", "--build", "--log_dir", str(small_disk), "--progress", "plain"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (line,) = err.splitlines()
    (run,) = small_disk.glob("2*")
    assert line == (
        f"warning: cannot write the logs in {run}: No space left on device; the run goes on, its logs "
        "stop here (pass --log_dir DIR with room to keep them)"
    )
    # Each image built (its tag and context; a child gets the parent this run built: --file).
    built = sorted(
        (argv[argv.index("--tag") + 1], argv[-1]) for argv in standin.commands() if argv[1] == "build"
    )
    assert built == sorted(
        (f"gcr.io/iree-oss/{image}:latest", f"build_tools/docker/{image}") for image in GRAPH
    )
    assert "Total wall time: " in out and f"({len(GRAPH)} done)" in out


def test_a_full_disk_under_the_git_directory_is_one_line_and_the_work_that_needs_no_write_goes_on(
    tmp_path, standin, capsys, monkeypatch
):
    # The lock and, by default, the logs live in the git directory: here on a disk that fills up.
    with tmpfs(tmp_path / "disk", "4m", 0) as fill:
        root = tmp_path / "repo"
        fake_tree.git(
            tmp_path, "init", "-q", "-b", "main", f"--separate-git-dir={tmp_path / 'disk' / 'git'}", str(root)
        )
        fake_tree.git(root, "config", "user.email", "test@example.com")
        fake_tree.git(root, "config", "user.name", "Test")
        monkeypatch.chdir(small_tree(root))
        standin.set(repo_digests=all_digests())
        fill()
        before = files(root)
        assert mi.main(["--image", "cmake", "--update_references"]) == 1
        lock = tmp_path / "disk" / "git" / mi.LOCK_NAME
        assert capsys.readouterr().err == (
            f"cannot write the repository lock {lock}: No space left on device; make room there (or fix its "
            "permissions) and run again; the files it was to change are as they were\n"
        )
        assert files(root) == before and not lock.exists()
        # A build changes no file and needs no lock: its logs are lost, its work is done.
        assert mi.main(["--image", LEAF, "--build"]) == 0
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(
            f"warning: cannot write the logs in {tmp_path / 'disk' / 'git' / mi.LOGS_NAME}/"
        )
        assert [
            "docker",
            "build",
            "--tag",
            f"gcr.io/iree-oss/{LEAF}:latest",
            f"build_tools/docker/{LEAF}",
        ] in [without_label(argv) for argv in standin.commands()]


BUG_LINE = (
    r"unexpected KeyError: 'injected'\. This is a bug: please report it with (\S+), which holds its traceback"
)


def assert_bug_report(path: Path, argv: list[str], function: str) -> None:
    text = path.read_text()
    assert text.startswith(f"manage_images.py {mi.__version__}: unexpected KeyError\n"), text
    assert f"command: manage_images.py {' '.join(argv)}\n" in text
    assert f"python: {platform.python_version()} ({sys.executable}) on " in text
    assert "Traceback (most recent call last):" in text and f"in {function}\n" in text
    assert text.rstrip("\n").endswith("KeyError: 'injected'")


def injected(*args, **kwargs):
    raise KeyError("injected")


def test_a_bug_in_an_image_s_work_leaves_its_traceback_in_the_run_s_log_folder(
    tree, standin, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(mi, "build_argv", injected)
    argv = [
        "--image",
        LEAF,
        "--build",
        "--log_dir",
        str(tmp_path / "logs"),
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert mi.main(argv) == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    match = re.fullmatch(rf"{LEAF}: {BUG_LINE}", line)
    assert match, line
    (run,) = (tmp_path / "logs").glob("2*")
    assert Path(match.group(1)).parent == run
    assert_bug_report(Path(match.group(1)), argv, "injected")
    assert "docker client: 20.10.24\n" in Path(match.group(1)).read_text()  # the stand-in's
    assert line in (run / f"{LEAF}.log").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["error"] == line
    assert "Traceback" not in out + err


def test_a_bug_outside_any_image_leaves_its_traceback_in_a_temporary_file(
    tree, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no run folder in --check: the temporary one
    monkeypatch.setattr(mi, "check", injected)
    argv = ["--check", "--image", "cmake"]
    assert mi.main(argv) == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    match = re.fullmatch(BUG_LINE, line)
    assert match, line
    assert Path(match.group(1)).parent == tmp_path
    assert_bug_report(Path(match.group(1)), argv, "injected")
    assert "docker client: not asked\n" in Path(match.group(1)).read_text()


def test_a_bug_in_a_run_as_a_process_of_its_own_is_one_line_naming_its_report(git_repo, tmp_path):
    root = small_tree(git_repo)
    fake = StandIn(tmp_path / "standin")
    env = {**os.environ, **fake.environ()}
    env.pop("DOCKER_BUILDKIT", None)
    # The bug comes once every image is built: in the summary.
    program = (
        "import manage_images as mi\n"
        "def injected(*args, **kwargs):\n"
        "    raise KeyError('injected')\n"
        "mi.format_summary = injected\n"
        "raise SystemExit(mi.main())\n"
    )
    argv = ["--image", LEAF, "--build", "--log_dir", str(tmp_path / "logs")]
    result = subprocess.run(
        [sys.executable, "-c", program, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    match = re.fullmatch(BUG_LINE, line)
    assert match, line
    (run,) = (tmp_path / "logs").glob("2*")
    assert Path(match.group(1)).parent == run
    assert_bug_report(Path(match.group(1)), argv, "injected")
    assert "in process_images\n" in Path(match.group(1)).read_text()
    assert "Traceback" not in result.stdout + result.stderr


# --- 9. Reports are exact ------------------------------------------------------------------


def test_a_failed_image_s_files_are_the_files_written_and_none_when_its_write_was_refused(
    tree, standin, tmp_path
):
    # --only_references writes once for every image: refused (a read-only file), nothing is written.
    images = mi.ordered_images_to_process(["cmake"], GRAPH)
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_text(
        "".join(f"gcr.io/iree-oss/{image}@{NEW if image == 'cmake' else D1}\n" for image in images)
    )
    (tree / "ci/build.sh").chmod(0o444)
    before = files(tree)
    report = tmp_path / "report.json"
    assert mi.main(["--image", "cmake", "--only_references", "--json", str(report)]) == 1
    assert files(tree) == before
    cmake = next(image for image in json.loads(report.read_text())["images"] if image["name"] == "cmake")
    assert cmake["result"] == "failed"
    assert cmake["files"] == []
    assert cmake["planned_files"] == ["build_tools/docker/cmake-python/Dockerfile", "ci/build.sh"]
    # Writable again: the same run writes them, and says so.
    (tree / "ci/build.sh").chmod(0o755)
    assert mi.main(["--image", "cmake", "--only_references", "--json", str(report)]) == 0
    cmake = next(image for image in json.loads(report.read_text())["images"] if image["name"] == "cmake")
    assert (
        cmake["files"]
        == cmake["planned_files"]
        == ["build_tools/docker/cmake-python/Dockerfile", "ci/build.sh"]
    )
    assert NEW.encode() in (tree / "ci/build.sh").read_bytes()


def test_a_server_that_answers_no_http_is_named_in_a_short_line_without_its_escapes(tmp_path):
    # Its "status line" is what http.client's error quotes: the server's own bytes.
    junk = f"HTTP/1.1 {ESCAPES}{'x' * 10_000} {PASSWORD}\r\n\r\n".encode()
    listener = socket.create_server(("127.0.0.1", 0))
    host = f"127.0.0.1:{listener.getsockname()[1]}"

    def serve() -> None:
        for _ in range(20):  # bounded: the TLS probe, the plain-HTTP requests and their retries
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(junk)

    threading.Thread(target=serve, daemon=True).start()
    env = isolated_env(tmp_path, {"auths": {host: auth_entry(USER, PASSWORD)}})
    try:
        with pytest.raises(mi.RegistryError) as error:
            mi.RegistryClient(env).served_digest(f"{host}/iree-oss/{LEAF}", "latest")
    finally:
        listener.close()
    text = str(error.value)
    assert text.startswith(f"cannot reach the registry {host}: "), text
    assert len(text) < 2 * mi.OUTSIDE_TEXT_MAX
    assert_nothing_leaked({"the error": text})


# --- A second hostile pass (trust-attack): local state and the report ------------------------


def pin_cmake_anew(tree: Path) -> list[str]:
    """Pins cmake anew in `tree`: the argv of an --only_references run, which takes the
    repository lock and writes the files that refer to it."""
    images = mi.ordered_images_to_process(["cmake"], GRAPH)
    prod = tree / "build_tools/docker/prod_digests.txt"
    prod.write_text(
        "".join(f"gcr.io/iree-oss/{image}@{NEW if image == 'cmake' else D1}\n" for image in images)
    )
    return ["--image", "cmake", "--only_references"]


@pytest.mark.parametrize("kind", ["symbolic link", "FIFO", "hard link"])
def test_a_lock_file_that_is_no_lock_is_refused_and_what_it_names_is_not_written(
    tree, standin, tmp_path, capsys, kind
):
    # A lock that was a symbolic link had its target overwritten with the holder's line; a FIFO
    # was "unexpected OSError: Illegal seek".
    lock = tree / ".git" / mi.LOCK_NAME
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    if kind == "symbolic link":
        lock.symlink_to(victim)
    elif kind == "hard link":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)
    argv = pin_cmake_anew(tree)
    before = files(tree)
    assert mi.main(argv) == 1
    assert capsys.readouterr().err == (
        f"the repository lock {lock} is no lock this tool made (a symbolic link, a FIFO, a device or a file "
        "with other names), and writing it would write there; remove it and run again\n"
    )
    assert victim.read_text() == "precious\n" and files(tree) == before
    assert os.path.lexists(lock)  # left for the user to look at


def test_a_huge_lock_file_left_behind_is_read_only_as_far_as_a_lock_goes(tree, standin, capsys):
    # A 128 MiB lock (sparse: it takes no room) was read whole, 64 KiB at a time, each read
    # copying all before it: minutes to take the lock (hours for a GiB).
    lock = tree / ".git" / mi.LOCK_NAME
    with open(lock, "wb") as file:
        file.write(b"pid 1: manage_images.py --image cmake\n")
        file.truncate(128 << 20)
    started = time.monotonic()
    assert mi.main(pin_cmake_anew(tree)) == 0
    assert time.monotonic() - started < 10
    assert "A run that was killed left" in capsys.readouterr().out
    assert not lock.exists() and NEW.encode() in (tree / "ci/build.sh").read_bytes()


@pytest.mark.parametrize("kind", ["link to /dev/null", "link to a file", "FIFO read", "FIFO unread"])
def test_a_report_path_that_is_a_link_or_a_fifo_is_written_through_never_replaced(
    tree, standin, tmp_path, capsys, kind
):
    # The report was written by rename: `--json /dev/stdout` run as root put a file in place of
    # /dev/stdout (as a link to /dev/null shows here), a link to a file lost its link.
    path, target = tmp_path / "report.json", tmp_path / "target.json"
    read: list[bytes] = []
    if kind == "link to /dev/null":
        path.symlink_to(os.devnull)
    elif kind == "link to a file":
        target.write_text("old and longer than nothing\n" * 1000)
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    if kind == "FIFO read":
        reader = threading.Thread(target=lambda: read.append(path.read_bytes()), daemon=True)
        reader.start()
    code = mi.main([*pin_cmake_anew(tree), "--json", str(path)])
    if kind == "FIFO unread":
        assert code == 1 and path.is_fifo()
        assert capsys.readouterr().err == f"cannot write the JSON report {path}: No such device or address\n"
        return
    assert code == 0, capsys.readouterr().err
    if kind == "FIFO read":
        reader.join(10)
        assert path.is_fifo() and json.loads(read[0])["mode"] == "only_references"
    else:
        assert path.is_symlink() and os.readlink(path) == (
            os.devnull if kind == "link to /dev/null" else str(target)
        )
    if kind == "link to a file":
        assert json.loads(target.read_text())["mode"] == "only_references"
