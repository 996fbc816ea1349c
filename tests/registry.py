"""A private `docker-registry` on 127.0.0.1 for the end-to-end tests and the benchmark."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_digest(host: str, repository: str, tag: str) -> str | None:
    """The manifest digest a registry at `host` serves for repository:tag (HEAD request)."""
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
    """A private `docker-registry` on 127.0.0.1, queried through its HTTP API."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{self.host}/iree-oss"
        self.process: subprocess.Popen[bytes] | None = None
        self.config = folder / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )

    def start(self) -> None:
        log = open(self.folder / "registry.log", "ab")
        self.process = subprocess.Popen(
            ("docker-registry", "serve", str(self.config)), stdout=log, stderr=log
        )
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"registry did not start; see {self.folder / 'registry.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def tags(self, image: str) -> list[str]:
        try:
            with urllib.request.urlopen(
                f"http://{self.host}/v2/iree-oss/{image}/tags/list", timeout=5
            ) as answer:
                return sorted(json.load(answer).get("tags") or [])
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise

    def digest(self, image: str, tag: str) -> str | None:
        """The manifest digest the registry serves for image:tag (HEAD request)."""
        return served_digest(self.host, f"iree-oss/{image}", tag)

    def snapshot(self, images, tags=("latest", "prod")) -> dict[tuple[str, str], str | None]:
        return {(image, tag): self.digest(image, tag) for image in images for tag in tags}


@contextlib.contextmanager
def running(folder: Path) -> Iterator[Registry]:
    """A registry serving from `folder` (made if missing) for the time of the `with` block."""
    folder.mkdir(parents=True, exist_ok=True)
    server = Registry(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
