#!/usr/bin/env python3
"""Benchmark: promote 17 pinned images of realistic size, the old way and through the registry API.

Needs a Docker engine (tests/provision-docker.sh) and docker-registry. Starts
a private registry on 127.0.0.1 with its access log on, makes 17 images in it
through the API (each one layer of SIZE MB of random bytes, Docker schema 2,
pinned in a throwaway tree), then measures in one run:

1. the old way, on a fresh, empty second engine: for each image `docker pull
   REGISTRY/NAME@DIGEST`, `docker tag` it as `:old`, `docker push` (what
   --promote did before it spoke the registry API);
2. `manage_images.py --images all --promote --tag new -j 4`, with DOCKER_HOST
   pointing at nothing (no engine at all).

For each: the wall time, the bytes the registry sent (its access log), the
blob requests it served and the blob uploads it took, and how many tags serve
exactly the pinned digest afterwards. Goal: promotion moves no layer byte and
takes under 2 s for the 17 images, whatever their size; exits 1 if missed.

Usage: python3 benchmarks/bench_promote.py [--size-mb 200]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build_tools" / "docker"), str(ROOT / "tests")]

import fake_tree  # noqa: E402
import manage_images  # noqa: E402
from helpers import fresh_engine  # noqa: E402
from registry import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, Registry, running, sha256  # noqa: E402

SCRIPT = ROOT / "build_tools" / "docker" / "manage_images.py"
GRAPH = manage_images.IMAGES_TO_DEPENDENCIES
GOAL_SECONDS = 2.0


def layer(size: int, name: str) -> bytes:
    """An uncompressed tar holding one file of `size` random bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{name}.bin")
        info.size, info.mtime = size, 0
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buffer.getvalue()


def descriptor(media_type: str, blob: dict[str, object]) -> dict[str, object]:
    """A descriptor with its keys in the engine's order (mediaType, size, digest)."""
    return {"mediaType": media_type, "size": blob["size"], "digest": blob["digest"]}


def make_image(registry: Registry, image: str, size: int) -> str:
    """A Docker schema 2 image of one random layer, made through the API; its digest."""
    data = layer(size, image)
    blob = descriptor(DOCKER_LAYER, registry.push_blob(image, data))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(data).hexdigest()}"]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, registry.push_blob(image, config)),
            "layers": [blob],
        },
        indent=3,  # the engine's own serialization, so the old way has its fair chance to keep digests
    ).encode()
    return registry.push_manifest(image, sha256(manifest), manifest, DOCKER_MANIFEST)


def traffic(registry: Registry, since: int) -> dict[str, int]:
    requests = registry.requests(since)
    return {
        "sent": sum(size for _, _, _, size in requests),
        "blob_reads": sum(
            1 for method, path, _, _ in requests if method == "GET" and "/blobs/sha256:" in path
        ),
        "uploads": sum(1 for method, path, _, _ in requests if "/blobs/uploads/" in path),
        "requests": len(requests),
    }


def run(argv: list[str], env: dict[str, str] | None, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr}")


def old_way(registry: Registry, pinned: dict[str, str]) -> tuple[float, dict[str, int]]:
    with fresh_engine() as env:
        since = registry.log_size()
        started = time.monotonic()
        for image, digest in pinned.items():
            url = f"{registry.url}/{image}"
            run(["docker", "pull", "-q", f"{url}@{digest}"], env)
            run(["docker", "tag", f"{url}@{digest}", f"{url}:old"], env)
            run(["docker", "push", "-q", f"{url}:old"], env)
        elapsed = time.monotonic() - started
        return elapsed, traffic(registry, since)


def registry_way(registry: Registry, repo: Path, folder: Path) -> tuple[float, dict[str, int]]:
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{folder / 'no-engine.sock'}",
        "DOCKER_CONFIG": str(folder / "cfg"),
    }
    since = registry.log_size()
    started = time.monotonic()
    run(
        [
            sys.executable,
            str(SCRIPT),
            "--registry",
            registry.url,
            "--images",
            "all",
            "--promote",
            "--tag",
            "new",
            "-j",
            "4",
        ],
        env,
        repo,
    )
    elapsed = time.monotonic() - started
    return elapsed, traffic(registry, since)


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200, help="layer size per image in MB (default 200)")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="where the registry stores its data")
    args = parser.parse_args()
    size = int(args.size_mb * 1e6)
    with tempfile.TemporaryDirectory(prefix="bench-promote-", dir=args.scratch) as scratch:
        folder = Path(scratch)
        with running(folder / "registry", access_log=True) as registry:
            made = time.monotonic()
            pinned = {image: make_image(registry, image, size) for image in GRAPH}
            made = time.monotonic() - made
            repo = fake_tree.make_tree(folder / "repo", registry.url, GRAPH, pinned)
            old_seconds, old = old_way(registry, pinned)
            old_kept = sum(registry.digest(image, "old") == digest for image, digest in pinned.items())
            new_seconds, new = registry_way(registry, repo, folder)
            new_kept = sum(registry.digest(image, "new") == digest for image, digest in pinned.items())
    version = subprocess.run(
        ("docker", "version", "--format", "{{.Server.Version}}"), capture_output=True, text=True
    )
    print(
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"Docker engine {version.stdout.strip()}"
    )
    print(
        f"17 images, one random layer of {megabytes(size)} each ({megabytes(17 * size)} in all; "
        f"made through the API in {made:.1f} s); registry on loopback\n"
    )
    print(
        "| promotion of 17 images | wall time | ratio | registry sent | blob reads | blob uploads | requests | tags = pinned digest |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, counts, kept in (
        ("old way: docker pull, tag, push (fresh engine)", old_seconds, old, old_kept),
        ("--promote -j 4 (registry API, no engine)", new_seconds, new, new_kept),
    ):
        print(
            f"| {name} | {seconds:.2f} s | {seconds / old_seconds:.3f} | {megabytes(counts['sent'])} | "
            f"{counts['blob_reads']} | {counts['uploads']} | {counts['requests']} | {kept}/17 |"
        )
    met = new_seconds < GOAL_SECONDS and new["blob_reads"] == 0 and new["uploads"] == 0 and new_kept == 17
    print(
        f"\nGoal: --promote moves no layer byte, keeps 17/17 digests and takes under {GOAL_SECONDS:g} s: "
        f"{'met' if met else 'MISSED'} ({old_seconds / new_seconds:.0f}x faster than the old way)"
    )
    return 0 if met else 1


if __name__ == "__main__":
    import results  # benchmarks/README.md: --record writes this run's results there

    raise SystemExit(results.recorded("bench_promote", main))
