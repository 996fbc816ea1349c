"""What the TLS and auth tests run beside a real registry: a test CA and the
certificates it signs, an htpasswd file, a token server that issues signed JWTs
the way the registry's `auth: token` expects them, a fake credential helper
that speaks docker's protocol, and a proxy that counts, delays, fails and
tampers with what passes through it.

Test-only dependencies: `cryptography` (certificates, RS256 signatures) and
`bcrypt` (the only hash `docker-registry`'s htpasswd accepts).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from standin import python_executable

SERVICE = "manage-images-test-registry"
ISSUER = "manage-images-test-issuer"


# --- Certificates ----------------------------------------------------------------


class Authority:
    """A certificate authority made for one test session."""

    def __init__(self, folder: Path, name: str = "manage_images test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / "ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, ips=("127.0.0.1",), dns=("localhost",)) -> tuple[Path, Path]:
        """A server certificate for `ips` and `dns` names, signed by this CA: (cert, key) files."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def trust_in(self, certs_d: Path, host: str) -> None:
        """Puts the CA where docker (and the tool) look for `host`'s: certs.d/HOST:PORT/ca.crt."""
        (certs_d / host).mkdir(parents=True, exist_ok=True)
        (certs_d / host / "ca.crt").write_bytes(self.path.read_bytes())


def htpasswd(path: Path, users: dict[str, str]) -> Path:
    import bcrypt

    path.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
            for user, pw in users.items()
        )
    )
    return path


# --- A token server ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs that `docker-registry` (`auth: token`) accepts: the signing
    certificate rides in the `x5c` header and is the registry's rootcertbundle.

    GET with Basic credentials (or none) answers `{"token": ...}`; POST with the
    refresh-token or password grant answers `{"access_token": ...}`, as Docker
    Hub's and Google's token servers do. A wrong password or refresh token is a
    401. `asked` records (method, grant or user, scope) of each request.
    """

    def __init__(
        self, folder: Path, authority: Authority, users: dict[str, str], refresh: dict[str, str]
    ) -> None:
        self.users, self.refresh = users, refresh
        self.asked: list[tuple[str, str, str]] = []
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        signer = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.signing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.signing_key, hashes.SHA256())
        )
        self.bundle = folder / "token-signer.crt"
        self.bundle.write_bytes(signer.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(signer.public_bytes(serialization.Encoding.DER)).decode()
        cert, key = authority.issue("token-server")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.urlsplit(self.path).query
                server.answer(self, "GET", urllib.parse.parse_qs(query), self.headers.get("Authorization"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                server.answer(self, "POST", form, self.headers.get("Authorization"))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.realm = f"https://127.0.0.1:{self.httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def registry_auth(self) -> str:
        """The registry's `auth:` section for this server."""
        return (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.bundle}\n"
        )

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def token(self, subject: str, scopes: list[str]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.signing_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def authorize(self, scope: str) -> str:
        """A Bearer header for the test side (every action granted)."""
        return f"Bearer {self.token('test-side', [scope])}"

    def answer(self, handler, method: str, form: dict[str, list[str]], authorization: str | None) -> None:
        scopes = form.get("scope", [])
        subject = self._subject(method, form, authorization)
        self.asked.append((method, subject or "denied", " ".join(scopes)))
        if subject is None or form.get("service") != [SERVICE]:
            body, status = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}', 401
        else:
            token = self.token(subject, scopes if subject != "anonymous" else [])
            key = "access_token" if method == "POST" else "token"
            body, status = json.dumps({key: token, "expires_in": 300}).encode(), 200
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _subject(self, method: str, form: dict[str, list[str]], authorization: str | None) -> str | None:
        if method == "POST":
            grant = form.get("grant_type", [""])[0]
            if grant == "refresh_token":
                return self.refresh.get(form.get("refresh_token", [""])[0])
            if grant == "password":
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                return user if self.users.get(user) == password else None
            return None
        if authorization is None:
            return "anonymous"
        if not authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None


# --- A credential helper -------------------------------------------------------------

HELPER = """# docker-credential-test: docker's credential helper protocol (`get`: the server
# URL on stdin, JSON on stdout; "credentials not found" and exit 1 when it has none).
import json, sys
store = json.load(open({store!r}))
with open({log!r}, "a") as log:
    server = sys.stdin.read().strip()
    log.write(json.dumps([sys.argv[1:], server]) + "\\n")
if sys.argv[1:] != ["get"]:
    sys.exit(2)
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, **store[server]}}))
"""


def credential_helper(
    folder: Path, store: dict[str, dict[str, str]], name: str = "test"
) -> tuple[Path, Path]:
    """`docker-credential-NAME` in `folder` (put it on PATH), serving `store`
    (server -> {"Username", "Secret"}); (its folder, the log of what it was asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "store.json").write_text(json.dumps(store))
    log = folder / "asked.log"
    helper = folder / f"docker-credential-{name}"
    python_executable(helper, HELPER.format(store=str(folder / "store.json"), log=str(log)))
    return folder, log


# --- A proxy that counts and injects faults --------------------------------------------


class Proxy:
    """A plain-HTTP proxy on loopback in front of `upstream` (a base URL), forwarding
    every request as it is. `fault(method, path, attempt)` may answer instead: a
    (status, headers, body) tuple; `tamper(path, body)` may change a body on its way
    back. `seen` records (method, path, status, bytes of the body sent back)."""

    def __init__(
        self,
        upstream: str,
        fault: Callable[[str, str, int], tuple[int, dict[str, str], bytes] | None] | None = None,
        tamper: Callable[[str, bytes], bytes] | None = None,
        answer_headers: Callable[[str, str, dict[str, str]], dict[str, str]] | None = None,
        context: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ) -> None:
        """`answer_headers` may change the headers of a forwarded answer; `context`
        verifies an HTTPS upstream; `authorization` replaces the client's own."""
        self.upstream, self.fault, self.tamper = upstream, fault, tamper
        self.answer_headers, self.context, self.authorization = answer_headers, context, authorization
        self.authorizations: list[tuple[str, str | None]] = []  # (path, the client's Authorization)
        self.seen: list[tuple[str, str, int, int]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                proxy.forward(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def forward(self, handler) -> None:
        method, path = handler.command, handler.path
        with self._lock:
            attempt = self._counts[(method, path)] = self._counts.get((method, path), 0) + 1
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        with self._lock:
            self.authorizations.append((path, handler.headers.get("Authorization")))
        injected = self.fault(method, path, attempt) if self.fault else None
        if injected is not None:
            status, headers, data = injected
            rewrite = False
        else:
            rewrite = True
            headers_out = {
                k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")
            }
            if self.authorization is not None:
                headers_out["Authorization"] = self.authorization
            request = urllib.request.Request(
                self.upstream + path, data=body, method=method, headers=headers_out
            )
            https = urllib.request.HTTPSHandler(context=self.context)
            opener = urllib.request.build_opener(https, _NoRedirects())
            try:
                with opener.open(request, timeout=30) as answer:
                    status, headers, data = answer.status, dict(answer.headers), answer.read()
            except urllib.error.HTTPError as error:
                status, headers, data = error.code, dict(error.headers), error.read()
            if self.tamper is not None and method == "GET":
                data = self.tamper(path, data)
            if self.answer_headers is not None:
                headers = self.answer_headers(method, path, headers)
        with self._lock:
            self.seen.append((method, path, status, 0 if method == "HEAD" else len(data)))
        handler.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                # Upstream's own URLs (an upload's Location) point back through the proxy.
                handler.send_header(
                    name, value.replace(self.upstream, f"http://{self.host}") if rewrite else value
                )
        handler.send_header(
            "Content-Length", str(len(data) if method != "HEAD" else headers.get("Content-Length", len(data)))
        )
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
