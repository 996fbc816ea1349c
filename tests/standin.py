"""A stand-in `docker` (and `gcloud`) for the unit tests.

It appends each argv as a JSON line to $STANDIN_LOG and behaves as
$STANDIN_CONFIG (a JSON file) says:
  {"fail": {"build": 7}, "signal": {"build": 9, "image": 9},
   "say": {"build": [["MATCH", "a line to print when MATCH is in the argv", SECONDS to wait after]]},
   "hang": {"build": {"pidfile": "PATH", "ignore_term": true, "tick": 0.2, "match": "cmake:",
                      "until": "PATH"}},
   "repo_digests": {"REF:TAG": ["REPO@sha256:..."]}, "inspect_raw": {"REF:TAG": "text"},
   "manifests": {"REF:TAG or REF@DIGEST": "sha256:..."}, "contents": {"sha256:...": "LAYER"},
   "local_content": {"REF:TAG": "LAYER"},  (REF:TAG pushed is served as the sha256 of its name)
   "pulled": {"REF:TAG": "sha256:..."},  (the digest `docker pull REF:TAG` says it got)
   "labels": {"URL@DIGEST": "v1:sha256:..."},  (the inputs label of the config served)
   "server_down": false,
   "engine": {"client": "26.1.5", "store": "containerd", "buildx": "0.13.1"},
   "builders": {"NAME": {"driver": "docker" (a context) or "kubernetes", "down": false,
                         "endpoint": "tcp://..." (a context's host; unix:///standin/NAME.sock),
                         "dies": "IMAGE" (its build of IMAGE fails, and it is down from then on),
                         "engine": {...}}}}
Each command's DOCKER_CONTEXT, BUILDX_BUILDER and DOCKER_HOST go to $STANDIN_LOG.where.
Only the unit tests use it; the end-to-end tests use the real engine.

`StandInRegistry` answers, for the same tests, what the registry client
would: REPO:TAG and REPO@DIGEST are served as `repo_digests` and `manifests`
say, and the image served as a digest holds one layer, its `contents` entry
(by default the digest itself). A local image holds its `local_content`
(by default its first repo digest's), so a local image and a served one are
the same image exactly when they hold the same layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

STANDIN = """import json, os, sys
argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
config = json.load(open(os.environ["STANDIN_CONFIG"]))
step = argv[1] if len(argv) > 1 else argv[0]
where = {{name: os.environ.get(name) for name in ("DOCKER_CONTEXT", "BUILDX_BUILDER", "DOCKER_HOST")}}
with open(os.environ["STANDIN_LOG"] + ".where", "a") as log:
    log.write(json.dumps([argv, where]) + "\\n")
builders = config.get("builders", {{}})
if argv[:3] == ["docker", "context", "inspect"]:
    known = builders.get(argv[3], {{}}).get("driver") == "docker"
    if not known:
        print(f"context {{argv[3]!r}}: context not found", file=sys.stderr)
        sys.exit(1)
    host = builders[argv[3]].get("endpoint") or f"unix:///standin/{{argv[3]}}.sock"
    print(json.dumps([{{"Name": argv[3], "Endpoints": {{"docker": {{"Host": host}}}}}}]))
    sys.exit(0)
if argv[:3] == ["docker", "buildx", "version"]:
    print("github.com/docker/buildx 0.13.1 standin")
    sys.exit(0)
if argv[:3] == ["docker", "buildx", "inspect"] and len(argv) > 3:
    name = argv[-1]
    if name not in builders or builders[name].get("down"):
        print(f"ERROR: no builder {{name!r}} found" if name not in builders else "ERROR: cannot reach it", file=sys.stderr)
        sys.exit(1)
    print(f"Name: {{name}}\\nDriver: {{builders[name].get('driver', 'docker')}}\\n\\nNodes:\\nName: {{name}}0\\n"
          f"Endpoint: {{'kubernetes:///' + name if builders[name].get('driver') != 'docker' else name}}\\n"
          "Status: running\\nBuildKit version: v0.13.2\\nPlatforms: linux/amd64, linux/386")
    sys.exit(0)
on = builders.get(where["DOCKER_CONTEXT"] or where["BUILDX_BUILDER"] or "", {{}})
if on.get("dies") and argv[:2] == ["docker", "build"] and f"/{{on['dies']}}:" in " ".join(argv):
    on["down"] = True
    with open(os.environ["STANDIN_CONFIG"] + ".tmp", "w") as file:
        json.dump(config, file)
    os.rename(os.environ["STANDIN_CONFIG"] + ".tmp", os.environ["STANDIN_CONFIG"])
    print("standin: the builder died", flush=True)
if on.get("down"):
    at = on.get("endpoint") or "unix:///standin"
    print(f"Cannot connect to the Docker daemon at {{at}}. Is the docker daemon running?", file=sys.stderr)
    sys.exit(1)
config["engine"] = {{**config.get("engine", {{}}), **on.get("engine", {{}})}}
if step in config.get("signal", {{}}):
    os.kill(os.getpid(), config["signal"][step])
for match, text, seconds in config.get("say", {{}}).get(step, []):
    if match in " ".join(argv):
        import time
        print(text, flush=True)
        time.sleep(seconds)
hang = config.get("hang", {{}}).get(step)
if hang and hang.get("match", "") in " ".join(argv):
    import signal, time
    if hang.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "pidfile" in hang:
        with open(hang["pidfile"] + ".tmp", "w") as pidfile:
            pidfile.write(str(os.getpid()))
        os.rename(hang["pidfile"] + ".tmp", hang["pidfile"])
    # Until a file appears (never, without "until"), printing as docker does.
    while not ("until" in hang and os.path.exists(hang["until"])):
        print("standin still working", flush=True)
        time.sleep(hang.get("tick", 1))
{helpers}
engine = {{"client": "20.10.24", "server": "20.10.24", "store": "overlay2", "buildx": None, **config.get("engine", {{}})}}
if argv[0] == "docker" and argv[1] in ("version", "info"):
    if config.get("server_down"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    if "{{{{json .}}}}" not in argv:
        print(engine["server"])
    elif argv[1] == "version":
        print(json.dumps({{"Client": {{"Version": engine["client"]}}, "Server": {{"Version": engine["server"]}}}}))
    else:
        containerd = engine["store"] == "containerd"
        plugins = [{{"Name": "buildx", "Version": engine["buildx"]}}] if engine["buildx"] else []
        print(json.dumps({{
            "ServerVersion": engine["server"],
            "Driver": "overlayfs" if containerd else engine["store"],
            "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]] if containerd else [["Backing Filesystem", "extfs"]],
            "ClientInfo": {{"Plugins": plugins}},
        }}))
    sys.exit(0)
if argv[0] == "docker" and argv[1:3] == ["image", "inspect"]:
    form = argv[argv.index("--format") + 1]
    code = 0
    for ref in argv[argv.index("--format") + 2:]:
        if ref in config.get("inspect_raw", {{}}):
            print(config["inspect_raw"][ref])
        elif ref not in config.get("repo_digests", {{}}):
            print(f"Error: No such image: {{ref}}", file=sys.stderr)
            code = 1
        elif form == "{{{{json .}}}}":
            digests = config["repo_digests"][ref]
            own = [entry for entry in digests if entry.partition("@")[0] == ref.rpartition(":")[0]] or digests
            content = config.get("local_content", {{}}).get(ref) or (own[0].partition("@")[2] if own else ref)
            print(json.dumps({{**inspected(content, digests), "RepoTags": [ref]}}))
        elif form == "{{{{json .RepoTags}}}}":
            print(json.dumps([ref]))
        else:
            print(json.dumps(config["repo_digests"][ref]))
    sys.exit(code)
if argv[0] == "docker" and argv[1:3] == ["manifest", "inspect"]:
    ref = argv[-1]
    if ref not in config.get("manifests", {{}}):
        print(f"no such manifest: {{ref}}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({{"Ref": ref, "Descriptor": {{"digest": config["manifests"][ref]}}}}))
    sys.exit(0)
code = config.get("fail", {{}}).get(step, 0)
if argv[:2] == ["docker", "build"] and "--metadata-file" in argv and not code:
    # As buildx does: the pushed image's digest (as StandInRegistry serves a push) when it pushed.
    ref = argv[argv.index("--tag") + 1]
    metadata = {{"containerimage.digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest()}} if "--push" in argv else {{}}
    with open(argv[argv.index("--metadata-file") + 1], "w") as file:
        json.dump(metadata, file)
if argv[:2] == ["docker", "build"] and "--file" in argv:  # kept, as the run removes its own copy
    dockerfile = argv[argv.index("--file") + 1]
    os.makedirs(os.environ["STANDIN_LOG"] + ".files", exist_ok=True)
    with open(dockerfile, "rb") as source, open(os.environ["STANDIN_LOG"] + ".files/" + os.path.basename(dockerfile), "wb") as copy:
        copy.write(source.read())
print(f"standin {{' '.join(argv)}}")
if argv[:2] == ["docker", "pull"] and argv[2] in config.get("pulled", {{}}):  # what docker pull says it got
    print("Digest: " + config["pulled"][argv[2]])
print("second line")
sys.exit(code)
"""


# Shared by the stand-in docker (a script) and StandInRegistry: one image config per content.
HELPERS = """
import hashlib


def config_bytes(content):
    return json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [content]}},
        sort_keys=True,
    ).encode()


def config_digest(content):
    return "sha256:" + hashlib.sha256(config_bytes(content)).hexdigest()


def inspected(content, digests):
    return {
        "Id": config_digest(content), "RepoDigests": digests, "Os": "linux", "Architecture": "amd64",
        "RootFS": {"Type": "layers", "Layers": [content]}, "Config": {"Env": None},
    }
"""
_shared: dict = {"json": json}
exec(HELPERS, _shared)


def python_executable(path: Path, source: str) -> Path:
    """SOURCE as the executable PATH, run by this interpreter with PATH as its
    sys.argv[0]. Not a `#!INTERPRETER` line: the kernel cuts that line at its
    first space, and .ci/run's interpreter is in the checkout's .venv, whose
    path may hold one. The shell runs the second line as `exec INTERPRETER
    PATH ARGS...`; Python reads it as a string (pip's launchers do the same)."""
    python = sys.executable
    unquotable = sorted(set(python) & set('"$`\\\n'))
    if unquotable:
        raise ValueError(f"cannot write a launcher for an interpreter path holding {unquotable}: {python}")
    path.write_bytes(b'#!/bin/sh\n"exec" "' + os.fsencode(python) + b'" "$0" "$@"\n' + source.encode())
    path.chmod(0o755)
    return path


TESTS = Path(__file__).resolve().parent
SCRIPT_DIR = TESTS.parent / "build_tools" / "docker"
# manage_images.py as a process of its own whose registry questions StandInRegistry answers.
LAUNCHER = (
    "import os, sys, pathlib, standin, manage_images as mi; "
    "fake = standin.StandInRegistry(pathlib.Path(os.environ['STANDIN_CONFIG'])); "
    "mi.Runner.registry = lambda runner: fake; "
    "raise SystemExit(mi.main())"
)


def script_argv(*args: str) -> list[str]:
    """The argv that runs manage_images.py ARGS with the stand-in registry (PYTHONPATH from `environ`)."""
    return [sys.executable, "-c", LAUNCHER, *args]


class StandInRegistry:
    """What the registry client answers in the unit tests, from the stand-in's configuration."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.calls: list[tuple[str, ...]] = []

    @property
    def config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def _served(self) -> dict[str, str]:
        served = dict(self.config.get("manifests", {}))
        for ref, entries in self.config.get("repo_digests", {}).items():
            repository = ref.rpartition(":")[0]
            for entry in entries:
                url, _, digest = entry.partition("@")
                served.setdefault(entry, digest)
                if url == repository:
                    served.setdefault(ref, digest)
        log = self.config_path.parent / "commands.jsonl"
        for line in log.read_text().splitlines() if log.exists() else ():
            argv = json.loads(line)
            pushed = argv[2] if argv[:2] == ["docker", "push"] else None
            if argv[:2] == ["docker", "build"] and "--push" in argv:  # buildx pushes as it builds
                pushed = argv[argv.index("--tag") + 1]
            if pushed:  # what was pushed is served, as a digest of its name
                served.setdefault(pushed, "sha256:" + hashlib.sha256(pushed.encode()).hexdigest())
        return served

    def served_digest(self, url: str, reference: str) -> str | None:
        self.calls.append(("HEAD", url, reference))
        separator = "@" if reference.startswith("sha256:") else ":"
        return self._served().get(f"{url}{separator}{reference}")

    def get_manifest(self, url: str, reference: str):
        import manage_images

        self.calls.append(("GET", url, reference))
        data = json.dumps({"reference": reference}).encode()
        digest = reference if reference.startswith("sha256:") else "sha256:" + "e" * 64
        return manage_images.Manifest("application/vnd.oci.image.manifest.v1+json", data, digest)

    def put_manifest(self, url: str, tag: str, manifest) -> str:
        self.calls.append(("PUT", url, tag))
        return manifest.digest

    def image_config(self, url: str, reference: str, platform: str = "linux/amd64") -> tuple[str, bytes]:
        self.calls.append(("CONFIG", url, reference))
        content = self.config.get("contents", {}).get(reference, reference)
        label = self.config.get("labels", {}).get(f"{url}@{reference}")
        if label is None:
            return _shared["config_digest"](content), _shared["config_bytes"](content)
        # A pin with the inputs label ("labels": {"URL@DIGEST": "v1:sha256:..."}).
        document = json.loads(_shared["config_bytes"](content))
        document["config"] = {"Labels": {"org.iree.manage-images.inputs": label}}
        data = json.dumps(document, sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(data).hexdigest(), data


class StandIn:
    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        # PATH holds only the stand-ins and git, so a real docker or gcloud on
        # the machine is never found.
        self.tools = folder / "tools"
        self.tools.mkdir()
        (self.tools / "git").symlink_to(shutil.which("git"))
        self.log = folder / "commands.jsonl"
        self.config_path = folder / "config.json"
        self.config: dict = {}
        self.registry = StandInRegistry(self.config_path)
        self.save()
        for name in ("docker", "gcloud"):
            python_executable(self.bin / name, STANDIN.format(helpers=HELPERS))

    def save(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def set(self, **config) -> None:
        self.config.update(config)
        self.save()

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()

    def environ(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}{self.tools}",
            "STANDIN_LOG": str(self.log),
            "STANDIN_CONFIG": str(self.config_path),
            "PYTHONPATH": os.pathsep.join((str(TESTS), str(SCRIPT_DIR))),
        }

    def dockerfile(self, name: str) -> bytes:
        """The Dockerfile a `docker build --file PATH` read (PATH's name), as it was then."""
        return Path(f"{self.log}.files/{name}").read_bytes()

    def commands(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def placed(self) -> list[tuple[list[str], dict[str, str | None]]]:
        """Each command, with the DOCKER_CONTEXT, BUILDX_BUILDER and DOCKER_HOST it ran with."""
        path = Path(f"{self.log}.where")
        return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []
