"""A private `docker-registry` on 127.0.0.1 for the end-to-end tests and the benchmarks.

By default it speaks plain HTTP with no auth. It can also serve TLS with a
certificate from a test CA, and ask for htpasswd (Basic) or token (Bearer)
auth; the test side then talks to it with that CA and with credentials of its
own (`Registry.request`), independently of the tool's client. Images are made
here through the API itself (`push_image`, `push_index`): blobs uploaded,
manifests put, no engine needed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# A line of the registry's access log (combined format).
ACCESS_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d+) (?P<size>\d+|-) "[^"]*" "(?P<agent>[^"]*)"'
)


# Every port this process handed to a server (a registry of its own, or the try-it
# world's): the session's cleanup (conftest.py) removes what the tests left in the engine
# under these, and under no other.
SERVED_PORTS: set[int] = set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    SERVED_PORTS.add(port)
    return port


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def served_digest(host: str, repository: str, tag: str) -> str | None:
    """The manifest digest a plain-HTTP registry at `host` serves for repository:tag (HEAD request)."""
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": MANIFEST_ACCEPT},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


class Registry:
    """A private `docker-registry` on 127.0.0.1, queried through its HTTP API.

    `tls` is (certificate, key, CA file) for HTTPS; `auth` is the registry's
    `auth:` section as YAML lines; `authorize(scope)` gives the Authorization
    header the test side sends (None: anonymous). `access_log` turns on the
    registry's access log (one line per request, in registry.log); `client_cas`
    makes it require a client certificate signed by that CA.
    """

    def __init__(
        self,
        folder: Path,
        tls: tuple[Path, Path, Path] | None = None,
        auth: str = "",
        authorize: Callable[[str], str | None] | None = None,
        access_log: bool = False,
        client_cas: Path | None = None,
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{self.host}/iree-oss"
        self.scheme = "https" if tls else "http"
        self.context = ssl.create_default_context(cafile=str(tls[2])) if tls else None
        self.authorize = authorize or (lambda scope: None)
        self.log = folder / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "config.yml"
        tls_lines = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        if client_cas is not None:  # a client certificate signed by one of these is required
            tls_lines += f"    clientcas:\n      - {client_cas}\n"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n{tls_lines}" + auth
        )

    def start(self) -> None:
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            ("docker-registry", "serve", str(self.config)), stdout=log, stderr=log
        )
        # Whether it answers, whatever its certificate says (a test may give it a wrong one).
        ready = ssl._create_unverified_context() if self.context else None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{self.scheme}://{self.host}/v2/", timeout=1, context=ready):
                    return
            except urllib.error.HTTPError:  # 401: it answers
                return
            except ssl.SSLError:  # it answers, asking for a client certificate
                return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"registry did not start; see {self.log}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    # --- the API, as the test side speaks it -------------------------------

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        scope: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to the registry's API; (status, headers, body), errors included."""
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        authorization = self.authorize(scope) if scope else None
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def tags(self, image: str) -> list[str]:
        status, _, body = self.request(
            "GET", f"/v2/iree-oss/{image}/tags/list", scope=f"repository:iree-oss/{image}:pull"
        )
        if status == 404:
            return []
        assert status == 200, (status, body)
        return sorted(json.loads(body).get("tags") or [])

    def digest(self, image: str, tag: str) -> str | None:
        """The manifest digest the registry serves for image:tag (HEAD request)."""
        status, headers, _ = self.request(
            "HEAD",
            f"/v2/iree-oss/{image}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            scope=f"repository:iree-oss/{image}:pull",
        )
        if status == 404:
            return None
        assert status == 200, status
        return headers["Docker-Content-Digest"]

    def manifest(self, image: str, reference: str) -> tuple[str, bytes]:
        """(Content-Type, bytes) of a manifest, by GET."""
        status, headers, body = self.request(
            "GET",
            f"/v2/iree-oss/{image}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            scope=f"repository:iree-oss/{image}:pull",
        )
        assert status == 200, (status, body)
        return headers["Content-Type"], body

    def image_config(self, image: str, reference: str, platform: str = "linux/amd64") -> dict:
        """The image config the registry serves for `reference`, through an index for `platform`."""
        media_type, data = self.manifest(image, reference)
        document = json.loads(data)
        if "manifests" in document:
            wanted = platform.split("/")
            entry = next(
                entry
                for entry in document["manifests"]
                if [entry.get("platform", {}).get(key) for key in ("os", "architecture")] == wanted[:2]
            )
            media_type, data = self.manifest(image, entry["digest"])
            document = json.loads(data)
        status, _, body = self.request(
            "GET",
            f"/v2/iree-oss/{image}/blobs/{document['config']['digest']}",
            scope=f"repository:iree-oss/{image}:pull",
        )
        assert status == 200, status
        return json.loads(body)

    def snapshot(self, images, tags=("latest", "prod")) -> dict[tuple[str, str], str | None]:
        return {(image, tag): self.digest(image, tag) for image in images for tag in tags}

    def log_lines(self, since: int = 0) -> list[str]:
        """The registry's log from byte `since` on (see `log_size`)."""
        with open(self.log, "rb") as log:
            log.seek(since)
            return log.read().decode("utf-8", "replace").splitlines()

    def requests(self, since: int = 0, agent: str = "") -> list[tuple[str, str, int, int]]:
        """(method, path, status, bytes sent) of each request in the access log from byte
        `since` on, made by a client whose User-Agent starts with `agent`."""
        found = []
        for line in self.log_lines(since):
            match = ACCESS_RE.search(line)
            if match and match["agent"].startswith(agent):
                size = 0 if match["size"] == "-" else int(match["size"])
                found.append((match["method"], match["path"], int(match["status"]), size))
        return found

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    # --- making images through the API -------------------------------------

    def push_blob(self, image: str, data: bytes) -> dict[str, object]:
        """Uploads a blob (monolithic POST then PUT); its descriptor, media type left to the caller."""
        scope = f"repository:iree-oss/{image}:pull,push"
        digest = sha256(data)
        status, headers, body = self.request("POST", f"/v2/iree-oss/{image}/blobs/uploads/", b"", scope=scope)
        assert status == 202, (status, body)
        location = urllib.parse.urljoin(f"{self.scheme}://{self.host}/", headers["Location"])
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        status, _, body = self.request(
            "PUT", location, data, {"Content-Type": "application/octet-stream"}, scope=scope
        )
        assert status == 201, (status, body)
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, image: str, reference: str, data: bytes, media_type: str) -> str:
        status, headers, body = self.request(
            "PUT",
            f"/v2/iree-oss/{image}/manifests/{reference}",
            data,
            {"Content-Type": media_type},
            scope=f"repository:iree-oss/{image}:pull,push",
        )
        assert status == 201, (status, body)
        assert headers["Docker-Content-Digest"] == sha256(data)
        return headers["Docker-Content-Digest"]

    def push_image(
        self,
        image: str,
        tag: str | None = None,
        layers: list[bytes] = (),
        docker: bool = False,
        platform: str = "linux/amd64",
        label: str = "",
    ) -> str:
        """An image manifest (OCI, or Docker schema 2) with a config and `layers`,
        put by digest (and under `tag`); its digest. `label` makes it unique."""
        os_, architecture = platform.split("/")[:2]
        descriptors = [
            {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, **self.push_blob(image, layer)}
            for layer in layers
        ]
        config = json.dumps(
            {
                "architecture": architecture,
                "os": os_,
                "config": {"Labels": {"test": label}},
                "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
            },
            sort_keys=True,
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                    **self.push_blob(image, config),
                },
                "layers": descriptors,
            },
            indent=3,  # not how the engine writes it: the bytes must survive as they are
        ).encode()
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        digest = self.push_manifest(image, sha256(manifest), manifest, media_type)
        if tag is not None:
            self.push_manifest(image, tag, manifest, media_type)
        return digest

    def push_index(
        self, image: str, tag: str | None = None, platforms=("linux/amd64", "linux/arm64"), label=""
    ) -> str:
        """An OCI index of one image per platform, each with a small layer; its digest."""
        entries = []
        for platform in platforms:
            digest = self.push_image(
                image, layers=[f"{platform} {label}".encode()], platform=platform, label=label
            )
            _, data = self.manifest(image, digest)
            os_, architecture = platform.split("/")[:2]
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(data),
                    "platform": {"os": os_, "architecture": architecture},
                }
            )
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        digest = self.push_manifest(image, sha256(index), index, OCI_INDEX)
        if tag is not None:
            self.push_manifest(image, tag, index, OCI_INDEX)
        return digest


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.contextmanager
def running(folder: Path, **options) -> Iterator[Registry]:
    """A registry serving from `folder` (made if missing) for the time of the `with` block."""
    folder.mkdir(parents=True, exist_ok=True)
    server = Registry(folder, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
