"""A stand-in `docker` (and `gcloud`) for the unit tests.

It appends each argv as a JSON line to $STANDIN_LOG and behaves as
$STANDIN_CONFIG (a JSON file) says:
  {"fail": {"build": 7}, "signal": {"build": 9, "image": 9},
   "hang": {"build": {"pidfile": "PATH", "ignore_term": true, "tick": 0.2, "match": "cmake:",
                      "until": "PATH"}},
   "repo_digests": {"REF:TAG": ["REPO@sha256:..."]}, "inspect_raw": {"REF:TAG": "text"},
   "manifests": {"REF:TAG or REF@DIGEST": "sha256:..."},
   "server_down": false}
Only the unit tests use it; the end-to-end tests use the real engine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

STANDIN = """#!{python}
import json, os, sys
argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
config = json.load(open(os.environ["STANDIN_CONFIG"]))
step = argv[1] if len(argv) > 1 else argv[0]
if step in config.get("signal", {{}}):
    os.kill(os.getpid(), config["signal"][step])
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
if argv[0] == "docker" and argv[1] == "version":
    if config.get("server_down"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("20.10.24")
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
        elif form == "{{{{.Id}}}}":
            print(config["repo_digests"][ref])
        elif form.startswith("{{{{json .RepoTags}}}}"):
            print(json.dumps([ref]), json.dumps(config["repo_digests"][ref]))
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
print(f"standin {{' '.join(argv)}}")
print("second line")
sys.exit(code)
"""


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
        self.save()
        for name in ("docker", "gcloud"):
            path = self.bin / name
            path.write_text(STANDIN.format(python=sys.executable))
            path.chmod(0o755)

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
        }

    def commands(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
