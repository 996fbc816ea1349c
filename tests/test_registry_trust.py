"""The registry client held to its promises whatever the registry does (issue #28, its
network half): credentials go only where they belong, a signal stops every request,
retry and credential helper, every wait and read has a bound, verification checks the
digest it asked for, proxies are used as docker uses them, and odd answers end in one
clear line.

The servers are scripted here and run on this machine: on 127.0.0.1, and, where "off
loopback" matters, on an address of the machine that is not loopback (`far`). HTTPS is
real TLS with a CA made for the module; a server can speak TLS and plain HTTP on one port,
as a registry that redirects `https://h:p` to `http://h:p` would look. Each test asserts on
what the servers received (an Authorization header over plain HTTP, a request after the
signal), not only on what the tool printed. No engine: DOCKER_HOST points at nothing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import math
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

import fake_tree
import manage_images as mi
from auth_servers import Authority, Proxy
from helpers import GRAPH, Tool, run_tool, unavailable
from registry import OCI_MANIFEST, basic, free_port

USER = "alice"
PASSWORD = f"trust-{uuid.uuid4().hex}"
REFRESH = f"refresh-{uuid.uuid4().hex}"
# Images nothing depends on: promoting one promotes it alone.
LEAVES = sorted(image for image in GRAPH if not any(image in parents for parents in GRAPH.values()))
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def manifest_bytes(label: str) -> bytes:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2}
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "label": label}
    ).encode()


# --- Servers that record what they receive --------------------------------------------


class Seen(NamedTuple):
    """One request as a server received it."""

    at: float  # time.time() once its headers were read
    scheme: str  # "https" or "http": what it came over
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Answer = Callable[[http.server.BaseHTTPRequestHandler, Seen], None]


def reply(handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class Server:
    """An HTTP server on ADDRESS (a free port) that records each request in `seen`, then lets
    `answer` answer it. With a TLS `context` it speaks HTTPS; with `plain_too` as well, plain
    HTTP on the same port (it peeks at the first byte: a TLS hello starts with 0x16)."""

    def __init__(
        self,
        answer: Answer,
        address: str = "127.0.0.1",
        context: ssl.SSLContext | None = None,
        plain_too=False,
    ) -> None:
        self.seen: list[Seen] = []
        self.answer = answer
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                tls = isinstance(self.connection, ssl.SSLSocket)
                seen = Seen(
                    time.time(),
                    "https" if tls else "http",
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    body,
                )
                server.seen.append(seen)
                server.answer(self, seen)

            do_GET = do_HEAD = do_PUT = do_POST = do_CONNECT = _any

        class Listener(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def get_request(self):
                sock, peer = self.socket.accept()
                if context is not None:
                    sock.settimeout(10)
                    if not plain_too or sock.recv(1, socket.MSG_PEEK) == b"\x16":
                        sock = context.wrap_socket(sock, server_side=True)
                    sock.settimeout(None)
                return sock, peer

        self.httpd = Listener((address, 0), Handler)
        self.host = f"{address}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, scheme: str | None = None) -> list[Seen]:
        return [seen for seen in self.seen if scheme is None or seen.scheme == scheme]


class FakeRegistry:
    """The manifest part of the registry API, in memory: /v2/, HEAD, GET and PUT of
    manifests by tag or digest, Basic auth when it has a password. `fault(handler, seen)`
    may answer a request first (returning True when it did)."""

    def __init__(self, password: str | None = None) -> None:
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.password = password
        self.fault: Callable[[http.server.BaseHTTPRequestHandler, Seen], bool] | None = None

    def push(self, image: str, label: str = "") -> str:
        data = manifest_bytes(label or uuid.uuid4().hex)
        self.manifests[(f"iree-oss/{image}", sha256(data))] = data
        return sha256(data)

    def tag(self, image: str, tag: str) -> str | None:
        data = self.manifests.get((f"iree-oss/{image}", tag))
        return sha256(data) if data is not None else None

    def __call__(self, handler, seen: Seen) -> None:
        if self.fault is not None and self.fault(handler, seen):
            return
        if self.password is not None and seen.headers.get("authorization") != basic(USER, self.password):
            error = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return reply(handler, 401, error, {"WWW-Authenticate": 'Basic realm="test"'})
        if seen.path == "/v2/":
            return reply(handler, 200, b"{}")
        match = re.fullmatch(r"/v2/(.+)/manifests/([^/?]+)(?:\?.*)?", seen.path)
        if match is None:
            return reply(handler, 404)
        if seen.method == "PUT":
            self.manifests[match.groups()] = seen.body
            return reply(handler, 201, b"", {"Docker-Content-Digest": sha256(seen.body)})
        data = self.manifests.get(match.groups())
        if data is None:
            return reply(handler, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')
        reply(handler, 200, data, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(data)})


class ConnectProxy:
    """A forward proxy on 127.0.0.1 as docker's client uses one: CONNECT tunnels (HTTPS),
    absolute URLs answered 502 (plain HTTP). `lines` records each request line and
    `headers` its headers; `fault(line)` may answer a CONNECT instead (raw bytes)."""

    def __init__(self, fault: Callable[[str], bytes | None] | None = None) -> None:
        self.lines: list[str] = []
        self.headers: list[dict[str, str]] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).decode("latin-1").strip()
                headers = {}
                while (header := self.rfile.readline(65536).decode("latin-1").strip()) != "":
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                proxy.lines.append(line)
                proxy.headers.append(headers)
                answer = fault(line) if fault else None
                if answer is not None:
                    self.wfile.write(answer)
                    return
                if not line.startswith("CONNECT "):
                    self.wfile.write(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    return
                host, _, port = line.split()[1].rpartition(":")
                with socket.create_connection((host, int(port)), timeout=30) as upstream:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    pump = threading.Thread(target=_pump, args=(upstream, self.connection), daemon=True)
                    pump.start()
                    _pump(self.connection, upstream)
                    pump.join(30)

        class Listener(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        self.server = Listener(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    source.settimeout(30)
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


# --- Fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def far() -> str:
    """An IPv4 address of this machine that is not loopback: the first global one, else
    one on a dummy interface made for the module (root) and removed after it."""
    found = subprocess.run(
        ("ip", "-4", "-o", "addr", "show", "scope", "global"), capture_output=True, text=True
    )
    for address in (line.split()[3].partition("/")[0] for line in found.stdout.splitlines()):
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        yield address
        return
    name, address = f"mitrust{os.getpid() % 100000}", "198.18.99.1"
    if subprocess.run(("ip", "link", "add", name, "type", "dummy"), capture_output=True).returncode != 0:
        unavailable("this machine has no address off loopback, and cannot add one (ip link add: not root?)")
    try:
        subprocess.run(("ip", "addr", "add", f"{address}/32", "dev", name), check=True)
        subprocess.run(("ip", "link", "set", name, "up"), check=True)
        yield address
    finally:
        subprocess.run(("ip", "link", "del", name), capture_output=True)


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(authority, far) -> ssl.SSLContext:
    """A server context whose certificate names both 127.0.0.1 and `far`."""
    cert, key = authority.issue("trust-server", ips=("127.0.0.1", far))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture(autouse=True)
def clean(docker_env, monkeypatch):
    """No proxy from the machine's environment, and a run not stopped by an earlier test."""
    for name in (*PROXY_VARIABLES, "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    mi.CHILDREN.reset()
    yield docker_env
    mi.CHILDREN.reset()


@pytest.fixture
def servers():
    """Stops every server a test starts."""
    started: list = []
    yield started
    for server in started:
        server.stop()


def serve(servers, answer, **options) -> Server:
    server = Server(answer, **options)
    servers.append(server)
    return server


def write_config(docker_env, document: dict) -> Path:
    path = docker_env["docker-config"] / "config.json"
    path.write_text(json.dumps(document))
    return path


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def client() -> mi.RegistryClient:
    return mi.RegistryClient(dict(os.environ))


def tree(tmp_path: Path, host: str, pins: dict[str, str]) -> Path:
    return fake_tree.make_tree(tmp_path / "repo", f"{host}/iree-oss", GRAPH, pins)


def helper_script(folder: Path, name: str, body: str) -> Path:
    """`docker-credential-NAME` in `folder`: a shell script that logs each run (its pid) in
    folder/runs, then runs `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"docker-credential-{name}"
    script.write_text(f'#!/bin/sh\necho $$ >> "{folder}/runs"\n{body}\n')
    script.chmod(0o755)
    return script


def runs(folder: Path) -> list[int]:
    path = folder / "runs"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


# --- 1. Credentials go only where they belong ------------------------------------------


def test_an_https_registry_that_redirects_to_plain_http_off_loopback_is_refused_and_gets_no_password(
    servers, tls, authority, far, clean
):
    registry = FakeRegistry(PASSWORD)
    digest = registry.push(LEAVES[0])

    def hop(handler, seen: Seen) -> bool:
        # Over HTTPS the manifest moves to the same host and port in plain HTTP, where it is
        # served to anyone (as a blob store's signed URL would be).
        if "/manifests/" in seen.path and seen.scheme == "https":
            reply(handler, 307, b"", {"Location": f"http://{front.host}{seen.path}?hop=plain"})
            return True
        if "hop=plain" in seen.path:
            reply(
                handler,
                200,
                registry.manifests[(f"iree-oss/{LEAVES[0]}", digest)],
                {"Content-Type": OCI_MANIFEST},
            )
            return True
        return False

    registry.fault = hop
    front = serve(servers, registry, address=far, context=tls, plain_too=True)
    authority.trust_in(clean["certs.d"], front.host)
    write_config(clean, {"auths": {front.host: auth_entry(USER, PASSWORD)}})
    with pytest.raises(mi.RegistryError) as error:
        client().get_manifest(f"{front.host}/iree-oss/{LEAVES[0]}", digest)
    assert str(error.value).startswith(
        f"{front.host} redirected GET https://{front.host}/v2/iree-oss/{LEAVES[0]}/manifests/{digest} to "
        f"http://{front.host}/v2/iree-oss/{LEAVES[0]}/manifests/{digest}?hop=plain, plain HTTP off loopback: refused"
    )
    assert front.requests("https")  # it did speak to the registry, over TLS
    assert front.requests("http") == []  # and never in clear: no password, no request at all


def test_the_authorization_goes_on_only_to_the_same_scheme_host_and_port(servers, tls, authority, clean):
    registry = FakeRegistry(PASSWORD)
    digest = registry.push(LEAVES[0])
    data = registry.manifests[(f"iree-oss/{LEAVES[0]}", digest)]

    def hops(handler, seen: Seen) -> bool:
        path = seen.path.partition("?")[0]
        if "/manifests/" not in path or seen.method != "GET":
            return False
        hop = seen.path.partition("?hop=")[2]
        if hop == "":  # the same scheme, host and port: the credentials go on
            reply(handler, 307, b"", {"Location": f"{path}?hop=same"})
        elif hop == "same":  # loopback, the same host and port, but plain HTTP: they do not
            reply(handler, 307, b"", {"Location": f"http://{front.host}{path}?hop=plain"})
        elif hop == "plain":  # back to HTTPS on another port: nor there
            reply(handler, 307, b"", {"Location": f"https://{other.host}{path}?hop=other"})
        else:
            reply(handler, 200, data, {"Content-Type": OCI_MANIFEST})
        return True

    registry.fault = hops
    front = serve(servers, registry, context=tls, plain_too=True)
    other = serve(servers, hops, context=tls)
    authority.trust_in(clean["certs.d"], front.host)
    write_config(clean, {"auths": {front.host: auth_entry(USER, PASSWORD)}})
    assert client().get_manifest(f"{front.host}/iree-oss/{LEAVES[0]}", digest).data == data
    sent = {
        seen.path.partition("?hop=")[2]: seen.headers.get("authorization")
        for seen in front.seen + other.seen
        if "/manifests/" in seen.path
    }
    assert sent[""] == sent["same"] == basic(USER, PASSWORD)
    assert sent["plain"] is None and sent["other"] is None


def test_no_password_or_identity_token_reaches_a_token_server_in_clear_off_loopback(
    servers, tls, authority, far, clean
):
    def token_server(handler, seen: Seen) -> None:
        if seen.scheme == "https":  # "moved": the same host and port, in plain HTTP
            return reply(handler, 307, b"", {"Location": f"http://{tokens.host}{seen.path}"})
        reply(handler, 200, json.dumps({"token": "t", "access_token": "t"}).encode())

    tokens = serve(servers, token_server, address=far, context=tls, plain_too=True)
    realm = {"now": ""}

    def challenge(handler, seen: Seen) -> None:
        if seen.headers.get("authorization") != "Bearer t":
            header = f'Bearer realm="{realm["now"]}",service="test"'
            return reply(handler, 401, b'{"errors":[]}', {"WWW-Authenticate": header})
        reply(handler, 404)

    registry = serve(servers, challenge, context=tls)
    authority.trust_in(clean["certs.d"], registry.host)
    authority.trust_in(clean["certs.d"], tokens.host)
    refusals = []
    for entry in (auth_entry(USER, PASSWORD), {"identitytoken": REFRESH}):
        write_config(clean, {"auths": {registry.host: entry}})
        for scheme in ("https", "http"):  # HTTPS that redirects to plain HTTP, and plain HTTP
            realm["now"] = f"{scheme}://{tokens.host}/token"
            with pytest.raises(mi.RegistryError) as error:
                client().served_digest(f"{registry.host}/iree-oss/{LEAVES[0]}", "latest")
            refusals.append(str(error.value))
    redirected = f"redirected {{}} https://{tokens.host}/token"
    refused = (
        f"refusing to send the credentials for {registry.host} to its token server http://{tokens.host}/token"
    )
    expected = [redirected.format("GET"), refused, redirected.format("POST"), refused]
    assert len(refusals) == len(expected)
    for message, start in zip(refusals, expected):
        assert message.startswith(start if start == refused else f"{registry.host} {start}"), message
    for seen in tokens.requests("http"):
        assert "authorization" not in seen.headers, seen
        assert REFRESH.encode() not in seen.body and PASSWORD not in seen.path, seen


def test_a_proxy_never_carries_a_loopback_registry_or_its_credentials(servers, far, clean, monkeypatch):
    registry = FakeRegistry(PASSWORD)
    digest = registry.push(LEAVES[0])
    local = serve(servers, registry)
    elsewhere = serve(servers, lambda handler, seen: reply(handler, 502), address=far)
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, f"http://{elsewhere.host}")
    write_config(clean, {"auths": {local.host: auth_entry(USER, PASSWORD)}})
    assert client().served_digest(f"{local.host}/iree-oss/{LEAVES[0]}", digest) == digest
    assert elsewhere.seen == []
    assert [seen.headers.get("authorization") for seen in local.seen if "/manifests/" in seen.path][
        -1
    ] == basic(USER, PASSWORD)


# --- 3. A signal stops everything promptly ----------------------------------------------


def test_a_signal_during_the_wait_before_a_retry_ends_the_run_at_once_and_nothing_is_asked_after(
    servers, tmp_path
):
    registry = FakeRegistry()
    digest = registry.push(LEAVES[0])
    registry.fault = lambda handler, seen: (
        "/manifests/" in seen.path
        and (reply(handler, 503, b"", {"Retry-After": str(int(mi.RETRY_AFTER_MAX))}) or True)
    )
    server = serve(servers, registry)
    root = tree(tmp_path, server.host, {LEAVES[0]: digest})
    report = tmp_path / "report.json"
    tool = Tool(
        root,
        "--registry",
        f"{server.host}/iree-oss",
        "--image",
        LEAVES[0],
        "--promote",
        "--json",
        str(report),
    )
    try:
        wait_until(lambda: any("/manifests/" in seen.path for seen in server.seen))
        time.sleep(0.3)  # well into the wait the registry asked for
        asked = len(server.seen)
        started = time.monotonic()
        tool.send_signal(signal.SIGINT)
        code, out, err = tool.finish(timeout=mi.RETRY_AFTER_MAX + 30)
    finally:
        tool.process.kill()
    assert code == 128 + signal.SIGINT, out + err
    assert time.monotonic() - started < 5
    assert len(server.seen) == asked  # no retry, no other request after the signal
    document = json.loads(report.read_text())
    assert document["error"] == "interrupted by SIGINT"
    assert [(image["name"], image["result"]) for image in document["images"]] == [(LEAVES[0], "failed")]
    assert registry.tag(LEAVES[0], "latest") is None


def test_a_signal_cuts_a_hung_read_lets_a_write_finish_and_the_report_says_which_tags_moved(
    servers, tmp_path
):
    registry = FakeRegistry()
    pins = {image: registry.push(image) for image in LEAVES[:2]}
    writing, hung, release = threading.Event(), threading.Event(), threading.Event()

    def fault(handler, seen: Seen) -> bool:
        if seen.method == "PUT":  # the first image's write takes a while, and happens
            writing.set()
            time.sleep(1.5)
        elif seen.method == "GET" and LEAVES[1] in seen.path:  # the second one's read never ends
            hung.set()
            release.wait(60)
            return True
        return False

    registry.fault = fault
    server = serve(servers, registry)
    root = tree(tmp_path, server.host, pins)
    report = tmp_path / "report.json"
    tool = Tool(
        root,
        *("--registry", f"{server.host}/iree-oss", "--promote", "-j", "2", "--json", str(report)),
        *(argument for image in LEAVES[:2] for argument in ("--image", image)),
    )
    try:
        wait_until(lambda: writing.is_set() and hung.is_set())
        asked = len(server.seen)
        started = time.monotonic()
        tool.send_signal(signal.SIGTERM)
        code, out, err = tool.finish(timeout=60)
    finally:
        release.set()
        tool.process.kill()
    assert code == 128 + signal.SIGTERM, out + err
    assert time.monotonic() - started < mi.STOP_GRACE
    assert len(server.seen) == asked
    results = {image["name"]: image for image in json.loads(report.read_text())["images"]}
    assert results[LEAVES[0]]["result"] == "done" and registry.tag(LEAVES[0], "latest") == pins[LEAVES[0]]
    assert results[LEAVES[1]]["result"] == "failed" and registry.tag(LEAVES[1], "latest") is None
    assert f"  {LEAVES[0]}" in out and f"  {LEAVES[1]}" in out  # the summary lists both, as they are


def test_a_signal_cuts_a_request_the_main_thread_waits_on(servers, tmp_path):
    registry = FakeRegistry()
    pins = {LEAVES[0]: registry.push(LEAVES[0])}
    hung, release = threading.Event(), threading.Event()

    def fault(handler, seen: Seen) -> bool:
        if seen.method == "HEAD":  # --verify_pinned asks in the main thread, and this never answers
            hung.set()
            release.wait(60)
            return True
        return False

    registry.fault = fault
    server = serve(servers, registry)
    root = tree(tmp_path, server.host, pins)
    tool = Tool(root, "--registry", f"{server.host}/iree-oss", "--image", LEAVES[0], "--verify_pinned")
    try:
        wait_until(hung.is_set)
        asked = len(server.seen)
        started = time.monotonic()
        tool.send_signal(signal.SIGINT)
        code, out, err = tool.finish(timeout=60)
    finally:
        release.set()
        tool.process.kill()
    assert code == 128 + signal.SIGINT, out + err
    assert time.monotonic() - started < 3
    assert len(server.seen) == asked
    assert "serves every pinned digest" not in out and err == ""


def test_a_credential_helper_is_a_child_of_the_run_that_a_signal_stops_term_then_kill(
    servers, tmp_path, clean, monkeypatch
):
    registry = FakeRegistry(PASSWORD)
    pins = {image: registry.push(image) for image in LEAVES[:2]}
    server = serve(servers, registry)
    folder = tmp_path / "helper"
    # It ignores SIGTERM, logs it, and never answers.
    helper_script(
        folder, "hang", f"trap 'echo TERM >> \"{folder}/signals\"' TERM\nwhile :; do sleep 0.1; done"
    )
    write_config(clean, {"credsStore": "hang"})
    root = tree(tmp_path, server.host, pins)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    tool = Tool(
        root,
        *("--registry", f"{server.host}/iree-oss", "--promote", "-k"),
        *(argument for image in LEAVES[:2] for argument in ("--image", image)),
    )
    try:
        wait_until(lambda: runs(folder) != [])
        time.sleep(0.3)  # the shell has set its trap
        (pid,) = runs(folder)
        started = time.monotonic()
        tool.send_signal(signal.SIGTERM)
        code, out, err = tool.finish(timeout=mi.STOP_GRACE + 60)
    finally:
        tool.process.kill()
        for helper in runs(folder):  # only where the tool left it running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(helper, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM, out + err
    assert mi.STOP_GRACE - 1 < time.monotonic() - started < mi.STOP_GRACE + 5
    assert (folder / "signals").read_text() == "TERM\n"  # asked to end first, then killed
    assert gone(pid)
    assert runs(folder) == [pid]  # never started again, for the other image or a retry
    assert registry.tag(LEAVES[0], "latest") is None and registry.tag(LEAVES[1], "latest") is None


def test_a_credential_helper_that_failed_is_not_run_again_in_the_run(
    servers, tmp_path, clean, monkeypatch, capsys
):
    registry = FakeRegistry(PASSWORD)
    pins = {image: registry.push(image) for image in LEAVES[:2]}
    server = serve(servers, registry)
    folder = tmp_path / "helper"
    helper_script(folder, "broken", "echo 'the keyring is locked' >&2\nexit 3")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    write_config(clean, {"credsStore": "broken"})
    monkeypatch.chdir(tree(tmp_path, server.host, pins))
    argv = ["--registry", f"{server.host}/iree-oss", "--promote", "-k"]
    assert mi.main(argv + [argument for image in LEAVES[:2] for argument in ("--image", image)]) == 1
    assert len(runs(folder)) == 1
    line = f"`docker-credential-broken get` failed with exit code 3 for {server.host}: the keyring is locked"
    assert capsys.readouterr().err.count(line) == 2  # both images fail with its one answer


def test_a_credential_helper_that_does_not_answer_is_stopped_at_its_bound_and_not_asked_again(
    servers, tmp_path, clean, monkeypatch
):
    monkeypatch.setattr(mi, "HELPER_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(mi, "COMMAND_TIMEOUT", 0.5)  # the bound of the code before the helper had its own
    registry = FakeRegistry(PASSWORD)
    server = serve(servers, registry)
    folder = tmp_path / "helper"
    helper_script(folder, "slow", "sleep 30")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    write_config(clean, {"credsStore": "slow"})
    registry_client = client()
    started = time.monotonic()
    messages = []
    for image in LEAVES[:2]:
        with pytest.raises(mi.RegistryError) as error:
            registry_client.served_digest(f"{server.host}/iree-oss/{image}", "latest")
        messages.append(str(error.value))
    assert time.monotonic() - started < 5
    assert (
        messages
        == [
            f"`docker-credential-slow get` did not answer within 0.5 s for {server.host}, so it was stopped and "
            "is not asked again in this run; fix the helper (or log in anew) and run again"
        ]
        * 2
    )
    (pid,) = runs(folder)
    wait_until(lambda: gone(pid), timeout=5)


# --- 4. Every wait and every read has a bound --------------------------------------------


@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_answer_that_trickles_is_cut_at_the_deadline_of_one_request(servers, clean, monkeypatch, where):
    monkeypatch.setattr(mi, "REGISTRY_DEADLINE", 1.0, raising=False)
    monkeypatch.setattr(mi, "REGISTRY_ATTEMPTS", 1)
    body = manifest_bytes("trickled")

    def trickle(handler, seen: Seen) -> None:
        if seen.path == "/v2/":
            return reply(handler, 200, b"{}")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body)}\r\n"
        slow = head.encode() + b"X-Slow: " + b"a" * 80 + b"\r\n\r\n" if where == "headers" else body
        if where == "body":
            handler.wfile.write(head.encode() + b"\r\n")
        with contextlib.suppress(OSError):  # one byte every 0.1 s: each read gets one, in time
            for byte in slow[:80]:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.1)

    server = serve(servers, trickle)
    started = time.monotonic()
    with pytest.raises(mi.RegistryError) as error:
        client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", sha256(body))
    assert time.monotonic() - started < 3
    assert str(error.value) == (
        f"the registry {server.host} did not answer GET http://{server.host}/v2/iree-oss/{LEAVES[0]}/manifests/"
        f"{sha256(body)} in full within 1.0 s (the deadline of one request); check that it is up and not "
        "overloaded, and run again"
    )


def endless(handler, status: int = 200, content_type: str = OCI_MANIFEST) -> int:
    """Answers with an endless chunked body (cut at 64 MiB, so the server ends); the bytes sent."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    sent = 0
    with contextlib.suppress(OSError):
        while sent < 64 << 20:
            handler.wfile.write(chunk)
            sent += 65536
        handler.wfile.write(b"0\r\n\r\n")
    return sent


@pytest.mark.parametrize("what", ["manifest", "token"])
def test_a_manifest_or_token_answer_over_its_limit_is_refused_in_one_line(
    servers, tls, authority, clean, what
):
    sent: list[int] = []

    def answer(handler, seen: Seen) -> None:
        if seen.path.startswith("/token"):
            return sent.append(endless(handler, content_type="application/json"))
        if what == "token" and seen.headers.get("authorization") is None:
            header = f'Bearer realm="https://{server.host}/token",service="test"'
            return reply(handler, 401, b"{}", {"WWW-Authenticate": header})
        if seen.path == "/v2/":
            return reply(handler, 200, b"{}")
        sent.append(endless(handler))

    server = serve(servers, answer, context=tls)
    authority.trust_in(clean["certs.d"], server.host)
    digest = "sha256:" + "a" * 64
    url = f"https://{server.host}/v2/iree-oss/{LEAVES[0]}/manifests/{digest}"
    if what == "token":
        url = f"https://{server.host}/token?service=test&scope=repository%3Airee-oss%2F{LEAVES[0]}%3Apull"
    subject = f"the registry {server.host}"  # its token server is on the same host and port
    with pytest.raises(mi.RegistryError) as error:
        client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", digest)
    wait_until(lambda: sent != [])
    assert sent[0] < 32 << 20  # it stopped reading: the rest could not even be sent
    size, kind = (
        (mi.MANIFEST_LIMIT, "a manifest")
        if what == "manifest"
        else (mi.TOKEN_LIMIT, "a token server's answer")
    )
    assert str(error.value) == (
        f"{subject} answered GET {url} with more than {size} bytes, the most {kind} may have (as docker reads "
        "it): refused; check what it serves"
    )


def test_an_endless_error_body_is_read_only_as_far_as_its_limit(servers, clean):
    sent: list[int] = []

    def answer(handler, seen: Seen) -> None:
        if seen.path == "/v2/":
            return reply(handler, 200, b"{}")
        sent.append(endless(handler, status=404, content_type="application/json"))

    server = serve(servers, answer)
    started = time.monotonic()
    with pytest.raises(mi.RegistryError) as error:
        client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    assert str(error.value).startswith(
        f"{server.host} does not serve {server.host}/iree-oss/{LEAVES[0]}:latest"
    )
    wait_until(lambda: sent != [])
    assert sent[0] < 32 << 20 and time.monotonic() - started < 10


# --- 5. Verification checks what it is told -------------------------------------------------


def lying(upstream, by_digest_only: Callable[[str, str], bool]) -> Proxy:
    """A front for the real registry that answers another Docker-Content-Digest wherever
    `by_digest_only(method, path)` says."""
    other = "sha256:" + "d" * 64

    def answer_headers(method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        if by_digest_only(method, path):
            return {
                **{k: v for k, v in headers.items() if k.lower() != "docker-content-digest"},
                "Docker-Content-Digest": other,
            }
        return headers

    return Proxy(f"http://{upstream.host}", answer_headers=answer_headers).start()


def test_verify_pinned_fails_when_a_head_by_digest_answers_another_digest(
    plain_registry, tmp_path, monkeypatch, capsys
):
    digest = plain_registry.push_image(LEAVES[0], "latest", label=uuid.uuid4().hex)
    front = lying(plain_registry, lambda method, path: method == "HEAD" and path.endswith(digest))
    try:
        monkeypatch.chdir(tree(tmp_path, front.host, {LEAVES[0]: digest}))
        code = mi.main(["--registry", f"{front.host}/iree-oss", "--image", LEAVES[0], "--verify_pinned"])
    finally:
        front.stop()
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "serves every pinned digest" not in out
    assert err == (
        f"{front.host} answered the HEAD of {front.host}/iree-oss/{LEAVES[0]}@{digest} with Docker-Content-Digest "
        f"sha256:{'d' * 64}, another digest than the one asked for, so it does not serve it as asked; check "
        "the registry and what stands between it and this machine\n"
    )


def test_promote_refuses_a_get_by_digest_whose_header_names_another_digest(
    plain_registry, tmp_path, monkeypatch, capsys
):
    digest = plain_registry.push_image(LEAVES[0], None, label=uuid.uuid4().hex)
    front = lying(plain_registry, lambda method, path: method == "GET" and path.endswith(digest))
    try:
        monkeypatch.chdir(tree(tmp_path, front.host, {LEAVES[0]: digest}))
        argv = ["--registry", f"{front.host}/iree-oss", "--image", LEAVES[0], "--promote", "--tag", "lied"]
        assert mi.main(argv) == 1
    finally:
        front.stop()
    assert capsys.readouterr().err.startswith(
        f"{front.host} answered the GET of {front.host}/iree-oss/{LEAVES[0]}@{digest} with Docker-Content-Digest "
    )
    assert plain_registry.digest(LEAVES[0], "lied") is None


# --- 6. Proxies as docker's client uses them ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://r.example.com/v2/", {"HTTPS_PROXY": "http://p:3128"}, ("http://p:3128", "HTTPS_PROXY")),
        ("https://r.example.com/v2/", {"https_proxy": "p:3128"}, ("http://p:3128", "https_proxy")),
        (
            "https://r.example.com/v2/",
            {"HTTPS_PROXY": "http://u", "https_proxy": "http://l"},
            ("http://u", "HTTPS_PROXY"),
        ),
        ("http://r.example.com/v2/", {"HTTPS_PROXY": "http://p"}, None),  # HTTP_PROXY is for http
        ("http://r.example.com/v2/", {"HTTP_PROXY": "http://p"}, ("http://p", "HTTP_PROXY")),
        ("https://127.0.0.1:5000/v2/", {"HTTPS_PROXY": "http://p"}, None),  # loopback: never
        ("https://127.9.9.9/v2/", {"HTTPS_PROXY": "http://p"}, None),
        ("https://[::1]:5000/v2/", {"HTTPS_PROXY": "http://p"}, None),
        ("https://localhost:5000/v2/", {"HTTPS_PROXY": "http://p"}, None),
        ("https://10.1.2.3/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "10.0.0.0/8"}, None),
        (
            "https://11.1.2.3/v2/",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "10.0.0.0/8"},
            ("http://p", "HTTPS_PROXY"),
        ),
        ("https://10.1.2.3/v2/", {"HTTPS_PROXY": "http://p", "no_proxy": "10.1.2.3"}, None),
        (
            "https://10.1.2.3:5000/v2/",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "10.1.2.3:6000"},
            ("http://p", "HTTPS_PROXY"),
        ),
        ("https://10.1.2.3:5000/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "10.1.2.3:5000"}, None),
        ("https://a.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, None),
        ("https://example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, None),
        ("https://a.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": ".example.com"}, None),
        (
            "https://example.com/v2/",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": ".example.com"},
            ("http://p", "HTTPS_PROXY"),
        ),
        ("https://a.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "*.example.com"}, None),
        (
            "https://badexample.com/v2/",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"},
            ("http://p", "HTTPS_PROXY"),
        ),
        ("https://r.example.com:443/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "r.example.com:443"}, None),
        ("https://r.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "r.example.com:443"}, None),
        ("https://r.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "R.Example.COM"}, None),
        ("https://r.example.com/v2/", {"HTTPS_PROXY": "http://p", "NO_PROXY": "x.org, *"}, None),
        (
            "https://r.example.com/v2/",
            {"HTTPS_PROXY": "http://p", "NO_PROXY": " , x.org"},
            ("http://p", "HTTPS_PROXY"),
        ),
    ],
)
def test_the_proxy_for_a_url_is_the_one_gos_httpproxy_picks(url, env, expected):
    assert mi.proxy_for(url, env) == expected


@pytest.mark.parametrize("case", ["upper", "lower", "no_proxy range", "no_proxy host", "loopback"])
def test_https_goes_through_the_proxy_unless_no_proxy_or_loopback_says_otherwise(
    servers, tls, authority, far, clean, monkeypatch, case
):
    registry = FakeRegistry()
    digest = registry.push(LEAVES[0])
    server = serve(servers, registry, address="127.0.0.1" if case == "loopback" else far, context=tls)
    authority.trust_in(clean["certs.d"], server.host)
    proxy = ConnectProxy()
    servers.append(proxy)
    monkeypatch.setenv("https_proxy" if case == "lower" else "HTTPS_PROXY", proxy.url)
    if case == "no_proxy range":
        monkeypatch.setenv("NO_PROXY", f"192.0.2.0/24,{far.rpartition('.')[0]}.0/24")
    elif case == "no_proxy host":
        monkeypatch.setenv("no_proxy", f"other.example.com,{server.host}")
    assert client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", digest) == digest
    proxied = case in ("upper", "lower")
    assert [line.split()[:2] for line in proxy.lines] == ([["CONNECT", server.host]] * 2 if proxied else [])
    assert len(server.requests("https")) == 2  # the ping and the HEAD, whichever way they went


@pytest.mark.parametrize("fault", ["refused", "407", "not HTTP"])
def test_a_proxy_that_fails_is_named_as_the_proxy(servers, tls, authority, far, clean, monkeypatch, fault):
    server = serve(servers, FakeRegistry(), address=far, context=tls)
    authority.trust_in(clean["certs.d"], server.host)
    answers = {
        "407": b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="p"\r\n'
        b"Content-Length: 0\r\n\r\n",
        "not HTTP": b"\x16\x03\x01 what is this\r\n\r\n",
    }
    proxy = ConnectProxy(fault=lambda line: answers[fault])
    servers.append(proxy)
    url = f"http://127.0.0.1:{free_port()}" if fault == "refused" else proxy.url
    monkeypatch.setenv("HTTPS_PROXY", url.replace("http://", "http://user:secret@"))
    with pytest.raises(mi.RegistryError) as error:
        client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    message = str(error.value)
    assert message.startswith(
        f"the proxy {url} (HTTPS_PROXY) failed on the way to the registry {server.host}: "
    )
    assert message.endswith(f"; check the proxy, or list {server.host} in NO_PROXY")
    assert "secret" not in message and "\n" not in message and "\r" not in message
    assert server.seen == []
    if fault != "refused":
        assert proxy.headers[0]["proxy-authorization"] == basic("user", "secret")


def test_a_proxy_this_tool_cannot_speak_to_is_one_line_and_nothing_is_sent(
    servers, tls, authority, far, clean, monkeypatch
):
    server = serve(servers, FakeRegistry(), address=far, context=tls)
    authority.trust_in(clean["certs.d"], server.host)
    proxy = ConnectProxy()
    servers.append(proxy)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "https://user:secret@"))
    with pytest.raises(mi.RegistryError) as error:
        client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    assert str(error.value) == (
        f"HTTPS_PROXY names {proxy.url.replace('http://', 'https://')}: this tool reaches proxies in plain HTTP "
        f"only (CONNECT for HTTPS); name an http:// proxy, or list {server.host} in NO_PROXY"
    )
    assert proxy.lines == [] and server.seen == []


# --- 7. Odd answers: a bounded retry or one clear line, never "unexpected" ----------------------


@pytest.mark.parametrize(
    "value",
    [
        "NaN",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "-5",
        "1e999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Mon, 01 Jan 99999 0:0:0 GMT",
        "soon",
        "",
    ],
)
def test_any_retry_after_gives_a_finite_bounded_wait(value):
    for attempt in range(1, mi.REGISTRY_ATTEMPTS):
        delay = mi.retry_delay(value, attempt)
        assert math.isfinite(delay) and 0 <= delay <= mi.RETRY_AFTER_MAX, (value, attempt, delay)


def test_a_retry_after_of_nan_is_waited_as_none_and_the_promotion_goes_through(
    servers, tmp_path, monkeypatch
):
    registry = FakeRegistry()
    digest = registry.push(LEAVES[0])
    once: list[str] = []

    def fault(handler, seen: Seen) -> bool:
        if seen.method == "GET" and "/manifests/" in seen.path and not once:
            once.append(seen.path)
            reply(handler, 503, b"{}", {"Retry-After": "NaN"})
            return True
        return False

    registry.fault = fault
    server = serve(servers, registry)
    monkeypatch.chdir(tree(tmp_path, server.host, {LEAVES[0]: digest}))
    assert mi.main(["--registry", f"{server.host}/iree-oss", "--image", LEAVES[0], "--promote"]) == 0
    assert registry.tag(LEAVES[0], "latest") == digest


NESTED = b"[" * 100000 + b"]" * 100000


@pytest.mark.parametrize("where", ["manifest", "index", "error", "token", "no content type"])
def test_json_nested_deeper_than_python_reads_is_one_clear_line(
    servers, tmp_path, monkeypatch, capsys, where
):
    registry = FakeRegistry()
    digest = registry.push(LEAVES[0])
    nested = b'{"schemaVersion": 2, "config": ' + NESTED + b"}"
    data = {"manifest": nested, "index": nested, "no content type": nested}.get(where, b"{}")
    pinned = sha256(data)

    def fault(handler, seen: Seen) -> bool:
        if where == "token" and seen.path.startswith("/token"):
            reply(handler, 200, NESTED)
        elif where == "token" and seen.headers.get("authorization") is None:
            reply(handler, 401, b"{}", {"WWW-Authenticate": f'Bearer realm="http://{server.host}/token"'})
        elif where == "error" and "/manifests/" in seen.path:
            reply(handler, 404, b'{"errors": ' + NESTED + b"}")
        elif "/manifests/" in seen.path and seen.method == "GET" and where != "token":
            types = {"manifest": OCI_MANIFEST, "index": "application/vnd.oci.image.index.v1+json"}
            headers = {"Content-Type": types[where]} if where in types else {}
            reply(handler, 200, data, {**headers, "Docker-Content-Digest": pinned})
        else:
            return False
        return True

    registry.fault = fault
    server = serve(servers, registry)
    url = f"{server.host}/iree-oss/{LEAVES[0]}"
    if where == "no content type":  # promote reads the media type from the bytes when not told
        monkeypatch.chdir(tree(tmp_path, server.host, {LEAVES[0]: pinned}))
        assert mi.main(["--registry", f"{server.host}/iree-oss", "--image", LEAVES[0], "--promote"]) == 0
        assert registry.tag(LEAVES[0], "latest") == pinned
        return
    with pytest.raises(mi.RegistryError) as error:
        # An index is read to pick the engine's platform's image, as --verify_pinned does.
        client().image_config(url, pinned if where in ("manifest", "index") else digest, "linux/amd64")
    expected = {
        "manifest": f"the manifest of {url}@{pinned} is not JSON this tool reads (JSON nested too deeply to read)",
        "index": f"the manifest of {url}@{pinned} is not JSON this tool reads (JSON nested too deeply to read)",
        "error": f"{server.host} does not serve {url}@{digest} (HTTP 404); check the pin, or push the image first",
        "token": f"the token server http://{server.host}/token of {server.host} answered no token",
    }[where]
    assert str(error.value).startswith(expected), str(error.value)


# --- A second hostile pass (trust-attack): what it found, one test each ------------------------


def test_a_redirect_s_body_is_never_read_and_a_location_that_is_no_url_is_one_line(
    servers, clean, monkeypatch
):
    # urllib reads a redirect's whole body before it follows it: 3 GiB in 15 s from a registry
    # whose redirect never ends. A Location it cannot parse was an "unexpected ValueError".
    monkeypatch.setattr(mi, "REGISTRY_DEADLINE", 5.0, raising=False)
    registry = FakeRegistry(PASSWORD)
    digest = registry.push(LEAVES[0])
    data = registry.manifests[(f"iree-oss/{LEAVES[0]}", digest)]
    location = {"now": ""}
    sent: list[int] = []

    def fault(handler, seen: Seen) -> bool:
        if seen.path.endswith("?moved"):
            reply(handler, 200, data, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest})
        elif "/manifests/" in seen.path:
            handler.send_response(307)
            handler.send_header("Location", location["now"] or f"{seen.path}?moved")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            chunk, count = b"%x\r\n%s\r\n" % (65536, b"x" * 65536), 0
            with contextlib.suppress(OSError):  # 32 MiB, then silence until the client goes
                while count < 512:
                    handler.wfile.write(chunk)
                    count += 1
                sent.append(count)
                time.sleep(10)
        else:
            return False
        return True

    registry.fault = fault
    server = serve(servers, registry)
    write_config(clean, {"auths": {server.host: auth_entry(USER, PASSWORD)}})
    started = time.monotonic()
    assert client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", digest).data == data
    assert time.monotonic() - started < 3 and sent == []  # it went on at once: the body unread
    for bad in ("http://[::1/v2/", f"http://{server.host.split(':')[0]}:port/v2/", "https://h:99999/"):
        location["now"] = bad
        with pytest.raises(mi.RegistryError) as error:
            client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
        assert str(error.value) == (
            f"{server.host} redirected GET http://{server.host}/v2/iree-oss/{LEAVES[0]}/manifests/latest to "
            f"{bad}, which is no URL: refused; check the registry"
        )


def test_a_challenge_from_where_a_redirect_went_never_gets_the_registry_s_credentials(servers, clean):
    # The registry sends a read to a blob store elsewhere; that store's 401 named a token
    # server, which then got the registry's password (Basic) from the tool. Docker answers
    # the registry's own challenge only.
    registry = FakeRegistry(PASSWORD)
    digest = registry.push(LEAVES[0])
    tokens = serve(servers, lambda handler, seen: reply(handler, 200, b'{"token": "t"}'))
    header = f'Bearer realm="http://{tokens.host}/token",service="elsewhere"'
    store = serve(servers, lambda handler, seen: reply(handler, 401, b"{}", {"WWW-Authenticate": header}))

    def fault(handler, seen: Seen) -> bool:
        if "/manifests/" in seen.path and seen.headers.get("authorization") == basic(USER, PASSWORD):
            reply(handler, 307, b"", {"Location": f"http://{store.host}/blob"})
            return True
        return False

    registry.fault = fault
    server = serve(servers, registry)
    write_config(clean, {"auths": {server.host: auth_entry(USER, PASSWORD)}})
    with pytest.raises(mi.RegistryError) as error:
        client().get_manifest(f"{server.host}/iree-oss/{LEAVES[0]}", digest)
    assert str(error.value).startswith(
        f"the registry {server.host} refused GET iree-oss/{LEAVES[0]}/manifests/"
    )
    assert tokens.seen == [] and all("authorization" not in seen.headers for seen in store.seen)


def test_a_proxy_s_refusal_never_shows_its_password_and_a_proxy_url_that_is_none_is_named(
    servers, tls, authority, far, clean, monkeypatch
):
    server = serve(servers, FakeRegistry(), address=far, context=tls)
    authority.trust_in(clean["certs.d"], server.host)
    secret = f"proxy-{uuid.uuid4().hex}"
    said = f"denied \x1b]0;title\x07 {secret} {basic('user', secret)[6:]}".encode()
    proxy = ConnectProxy(fault=lambda line: b"HTTP/1.1 403 " + said + b"\r\nContent-Length: 0\r\n\r\n")
    servers.append(proxy)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", f"http://user:{secret}@"))
    with pytest.raises(mi.RegistryError) as error:
        client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    assert str(error.value) == (
        f"the proxy {proxy.url} (HTTPS_PROXY) failed on the way to the registry {server.host}: Tunnel "
        f"connection failed: 403 denied  *** ***; check the proxy, or list {server.host} in NO_PROXY"
    )
    assert proxy.headers[0]["proxy-authorization"] == basic("user", secret)
    for bad in (f"http://user:{secret}@[::1", f"http://user:{secret}@127.0.0.1:port", "http://p:99999"):
        monkeypatch.setenv("HTTPS_PROXY", bad)
        with pytest.raises(mi.RegistryError) as error:
            client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
        assert str(error.value) == (
            "HTTPS_PROXY is no proxy URL this tool reads (a bad address or port); name the proxy as "
            f"http://HOST:PORT, or list {server.host} in NO_PROXY"
        )
    assert server.seen == []


@pytest.mark.parametrize(
    "token", ["t\r\nX-Injected: 1", "t\u4e2d", "t t"], ids=["crlf", "non-latin-1", "space"]
)
def test_a_token_no_http_header_can_carry_is_one_line(servers, clean, token):
    def answer(handler, seen: Seen) -> None:
        if seen.path.startswith("/token"):
            return reply(handler, 200, json.dumps({"token": token}).encode())
        header = f'Bearer realm="http://{server.host}/token",service="test"'
        reply(handler, 401, b"{}", {"WWW-Authenticate": header})

    server = serve(servers, answer)
    with pytest.raises(mi.RegistryError) as error:
        client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    assert str(error.value) == (
        f"the token server http://{server.host}/token of {server.host} answered a token with characters an "
        "HTTP header cannot carry (spaces, line breaks, controls or non-ASCII); check the registry"
    )
    assert not any(seen.headers.get("authorization") for seen in server.seen)


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_manifest_s_media_type_that_is_none_is_refused_not_shown_and_put_back(
    servers, tmp_path, monkeypatch, capsys, where
):
    # A Content-Type of 60,000 characters and escapes reached stdout and the log whole, and
    # went back to the registry in the PUT; one from the body with a line break was a bug.
    registry = FakeRegistry()
    odd = (
        "application/\x1b]0;title\x07" + "a" * 60000
        if where == "header"
        else "application/x\r\nX-Injected: 1"
    )
    data = json.dumps({"schemaVersion": 2, "mediaType": odd}).encode()
    registry.manifests[(f"iree-oss/{LEAVES[0]}", sha256(data))] = data

    def fault(handler, seen: Seen) -> bool:
        if "/manifests/sha256:" not in seen.path:
            return False
        headers = {"Docker-Content-Digest": sha256(data)}
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")  # as sent: escapes in a header are bytes too
        if where == "header":
            handler.wfile.write(b"Content-Type: " + odd.encode("latin-1") + b"\r\n")
        for name, value in {**headers, "Content-Length": str(len(data)), "Connection": "close"}.items():
            handler.wfile.write(f"{name}: {value}\r\n".encode())
        handler.wfile.write(b"\r\n" + data)
        handler.close_connection = True
        return True

    registry.fault = fault
    server = serve(servers, registry)
    monkeypatch.chdir(tree(tmp_path, server.host, {LEAVES[0]: sha256(data)}))
    argv = ["--registry", f"{server.host}/iree-oss", "--image", LEAVES[0], "--promote", "--progress", "plain"]
    assert mi.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.startswith(
        f"{server.host} answered {server.host}/iree-oss/{LEAVES[0]}@{sha256(data)} with a media "
    )
    assert err.endswith("); check the registry\n") and len(err) < 400 and "\\x1b" not in err
    assert max(map(len, out.splitlines())) < 1000
    assert [seen for seen in server.seen if seen.method == "PUT"] == []


def test_a_credential_helper_that_prints_past_its_limit_is_stopped_at_once(
    servers, clean, tmp_path, monkeypatch
):
    # One that printed forever filled 5 GiB in 8 s: its output was read whole until its time was up.
    folder = tmp_path / "bin"
    helper_script(folder, "loud", f"head -c {2 * mi.HELPER_LIMIT} /dev/zero; sleep 60")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    registry = FakeRegistry(PASSWORD)
    server = serve(servers, registry)
    write_config(clean, {"credHelpers": {server.host: "loud"}})
    started = time.monotonic()
    with pytest.raises(mi.RegistryError) as error:
        client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest")
    assert time.monotonic() - started < mi.HELPER_TIMEOUT / 4
    assert str(error.value) == (
        f"`docker-credential-loud get` did not answer in {mi.HELPER_LIMIT} bytes (it printed more) for "
        f"{server.host}, so it was stopped and is not asked again in this run; fix the helper (or log in "
        "anew) and run again"
    )
    (pid,) = runs(folder)
    wait_until(lambda: gone(pid), timeout=5)


def hangs_on(fifo: Path, call: Callable[[], object]) -> BaseException | None:
    """What `call` raised (None if nothing), or an AssertionError when it hung on opening
    `fifo` for 10 s; the open is released so no thread stays blocked."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as error:  # noqa: B036 - handed to the test
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        thread.join(10)
        raise AssertionError(f"hung on opening the FIFO {fifo}")
    return raised[0]


@pytest.mark.parametrize("where", ["config.json", "certs.d"])
def test_a_fifo_for_docker_s_config_or_a_certificate_is_one_line_not_a_hang(
    servers, tls, authority, clean, where
):
    server = serve(servers, FakeRegistry(PASSWORD), context=tls)  # it asks for credentials
    if where == "config.json":
        authority.trust_in(clean["certs.d"], server.host)
        fifo = clean["docker-config"] / "config.json"
    else:
        fifo = clean["certs.d"] / server.host / "ca.crt"
        fifo.parent.mkdir()
    os.mkfifo(fifo)
    error = hangs_on(fifo, lambda: client().served_digest(f"{server.host}/iree-oss/{LEAVES[0]}", "latest"))
    assert isinstance(error, mi.RegistryError), error
    assert (
        str(error)
        == {
            "config.json": f"cannot read {fifo}: it is not a regular file; fix it or point DOCKER_CONFIG elsewhere",
            "certs.d": f"cannot load the certificates in {fifo.parent}: ca.crt or its key is missing or not a "
            "regular file (a FIFO hangs a read); fix them (docker reads the same folder)",
        }[where]
    )


def test_a_stop_during_a_put_answered_without_a_digest_reports_the_tag_it_moved(servers, tmp_path):
    # The answer's Docker-Content-Digest is optional: without it the tool asks what the tag
    # serves, a request a stop forbids; the image was "failed" although its tag had moved.
    registry = FakeRegistry()
    pins = {LEAVES[0]: registry.push(LEAVES[0])}
    writing = threading.Event()

    def fault(handler, seen: Seen) -> bool:
        if seen.method != "PUT":
            return False
        writing.set()
        time.sleep(1.5)
        registry.manifests[(f"iree-oss/{LEAVES[0]}", "latest")] = seen.body
        reply(handler, 201)
        return True

    registry.fault = fault
    server = serve(servers, registry)
    report = tmp_path / "report.json"
    tool = Tool(
        tree(tmp_path, server.host, pins),
        *("--registry", f"{server.host}/iree-oss", "--image", LEAVES[0], "--promote", "--json", str(report)),
    )
    try:
        wait_until(writing.is_set)
        tool.send_signal(signal.SIGTERM)
        code, out, err = tool.finish(timeout=60)
    finally:
        tool.process.kill()
    assert code == 128 + signal.SIGTERM, out + err
    assert registry.tag(LEAVES[0], "latest") == pins[LEAVES[0]]
    (result,) = json.loads(report.read_text())["images"]
    assert result["result"] == "done" and result["digest"]["new"] == pins[LEAVES[0]], result
    assert [seen.method for seen in server.seen if "/manifests/" in seen.path] == ["GET", "PUT"]


def test_a_pinned_index_nested_deeper_than_python_reads_is_one_line_in_check_and_verify(servers, tmp_path):
    # --check --json and --verify_pinned with platforms read a pin's JSON with json.loads:
    # "unexpected RecursionError ... This is a bug".
    registry = FakeRegistry()
    data = b'{"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": ' + NESTED + b"}"
    registry.manifests[(f"iree-oss/{LEAVES[0]}", sha256(data))] = data
    server = serve(servers, registry)
    root = tree(tmp_path, server.host, {LEAVES[0]: sha256(data)})
    registry_flag = ("--registry", f"{server.host}/iree-oss")
    check = run_tool(root, *registry_flag, "--images", "all", "--check", "--json", str(tmp_path / "r.json"))
    assert check.returncode == 0 and check.stderr == "", check.stderr
    (pin,) = [
        pin for pin in json.loads((tmp_path / "r.json").read_text())["pins"] if pin["name"] == LEAVES[0]
    ]
    assert pin["kind"] == "manifest" and pin["error"] is None, pin
    verify = run_tool(
        root, *registry_flag, "--image", LEAVES[0], "--verify_pinned", "--platform", "linux/amd64"
    )
    assert verify.returncode == 1 and "unexpected" not in verify.stderr, verify.stderr
    assert verify.stderr == (
        f"the manifest of {server.host}/iree-oss/{LEAVES[0]}@{sha256(data)} is not JSON this tool reads (JSON "
        "nested too deeply to read); check what was pushed\n"
    )


def test_a_pinned_index_s_platform_names_are_shown_as_outside_text(servers, tmp_path):
    # An index's platforms are the registry's words: one of 200,000 characters and escapes was
    # a 200,000-character finding on stdout and in --check --json's "platforms".
    registry = FakeRegistry()
    odd = "x" * 200_000 + "\x1b]0;title\x07\u202e"
    entries = [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": odd}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    ]
    data = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    registry.manifests[(f"iree-oss/{LEAVES[0]}", sha256(data))] = data
    server = serve(servers, registry)
    root = tree(tmp_path, server.host, {LEAVES[0]: sha256(data)})
    report = tmp_path / "r.json"
    registry_flag = ("--registry", f"{server.host}/iree-oss")
    check = run_tool(root, *registry_flag, "--images", "all", "--check", "--json", str(report))
    verify = run_tool(
        root, *registry_flag, "--image", LEAVES[0], "--verify_pinned", "--platform", "linux/amd64"
    )
    assert check.returncode == 0 and verify.returncode == 1, check.stderr + verify.stderr
    (pin,) = [pin for pin in json.loads(report.read_text())["pins"] if pin["name"] == LEAVES[0]]
    assert pin["platforms"] == [f"linux/{'x' * (mi.OUTSIDE_TEXT_MAX - 9)}...", "linux/amd64"]
    assert "holds a linux/xxx" in verify.stdout and max(map(len, verify.stdout.splitlines())) < 1000
    assert not any(control in verify.stdout for control in ("\x1b", "\\x1b", "\u202e", "\\u202e"))
