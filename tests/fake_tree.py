"""A throwaway repository that mirrors the real layout with tiny busybox images.

Each image of the graph gets `build_tools/docker/NAME/Dockerfile`: the roots
are `FROM scratch` plus a static busybox; every other image is `FROM` its first
parent and `COPY --from` its other parents, all pinned by digest. Each image
copies its parents' `/stamp/` folder and adds `/stamp/NAME` from its own
context, so `/stamp/base` inside any image shows which base it was built on.

Used by the tests and by the benchmark.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import manage_images

BUSYBOX = Path("/bin/busybox")
# Digests the tree starts from: well formed, in no registry. The first
# `--build --push --update_references --images all` replaces them.
PLACEHOLDER = "sha256:" + "0" * 64
# Every image of a test tree carries it (its children inherit it from the base images),
# and so does each container a build step runs in: what the session's cleanup may remove.
TEST_LABEL = "manage-images-tests"

KOKORO_DIR = "build_tools/kokoro/gcp_ubuntu"
REAL_ROOT = Path(__file__).resolve().parent.parent
REAL_KOKORO = REAL_ROOT / KOKORO_DIR
_RUNS = re.compile(r"gcr\.io/iree-oss/([a-z0-9-]+)(?::[\w.-]+)?@sha256:[0-9a-f]{64}")


def real_ci_jobs() -> dict[str, tuple[str, bool]]:
    """The real tree's CI jobs: each `build_kokoro.sh` under build_tools/kokoro/gcp_ubuntu/
    (relative to it) -> the image it runs and whether it asks for GPUs. Read from the
    files, so a job added there is in every fake tree too."""
    jobs = {}
    for script in sorted(REAL_KOKORO.rglob("build_kokoro.sh")):
        text = script.read_text()
        (image,) = set(_RUNS.findall(text))
        jobs[script.relative_to(REAL_KOKORO).as_posix()] = (image, "--gpus all" in text)
    return jobs


def real_unreferenced(jobs: dict[str, tuple[str, bool]]) -> frozenset[str]:
    """The images whose fake Dockerfile carries the marker that nothing else has to refer
    to them (README, "Deploy a new image"): those whose real Dockerfile carries it, and
    those a fake tree holds no use of (not built on, not run by a `build_kokoro.sh` job of
    `jobs`, not the WORKSPACE rule's) though the real tree passes --check, so uses them
    where no fake tree copies (a CI script of another name, say). Either way, an image
    added by a documented route needs no reference in a fake tree."""
    graph = manage_images.IMAGES_TO_DEPENDENCIES
    used = {parent for parents in graph.values() for parent in parents}
    used |= {image for image, _ in jobs.values()} | {manage_images.RBE_IMAGE}
    marked = {image for image in graph if image not in used}
    for image in graph:
        path = REAL_ROOT / manage_images.DOCKER_DIR / image / "Dockerfile"
        if path.is_file() and manage_images.ALLOW_UNREFERENCED in path.read_text(errors="replace"):
            marked.add(image)
    return frozenset(marked)


# The CI scripts of the real tree and the image each one runs.
CI_JOBS = real_ci_jobs()
UNREFERENCED = real_unreferenced(CI_JOBS)
CI_SCRIPTS = {script: image for script, (image, _) in CI_JOBS.items()}
OTHER_RULE_DIGEST = "sha256:" + "1a8ed713f40267bb51fe17de012fa631a20c52df818ccb317aaed2ee068dfc61"


# A user's own git configuration (signed commits, hooks, templates) must not
# break the fixtures.
GIT_ISOLATION = ("-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.hooksPath=/dev/null")


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ("git", *GIT_ISOLATION, "-C", str(root), *args), check=True, capture_output=True, text=True
    ).stdout


def dockerfile(
    registry: str, image: str, parents: Sequence[str], digests: Mapping[str, str], sleep: float
) -> str:
    # The image's own stamp comes first, so no two images share a first step:
    # siblings built at the same time would otherwise each leave a copy of the
    # shared step, and a later cached build could pick either copy.
    lines = [f"# Test image {image}: busybox plus the stamps of its parents."]
    if image in UNREFERENCED:
        lines.append(f"# {manage_images.ALLOW_UNREFERENCED}")
    if not parents:
        lines += [
            "FROM scratch AS final",
            f"COPY stamp /stamp/{image}",
            f"LABEL {TEST_LABEL}=1",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        ]
    else:
        first, *others = parents
        lines.append(f"FROM {registry}/{first}@{digests.get(first, PLACEHOLDER)} AS final")
        lines.append(f"COPY stamp /stamp/{image}")
        for other in others:
            lines.append(f"COPY --from={registry}/{other}@{digests.get(other, PLACEHOLDER)} /stamp/ /stamp/")
    if sleep:
        lines.append(f"RUN sleep {sleep}")
    return "\n".join(lines) + "\n"


def ci_script(registry: str, image: str, digest: str, gpus: bool) -> str:
    gpu = "  --gpus all \\\n" if gpus else ""
    return (
        "#!/bin/bash\n"
        "set -e\n"
        "source build_tools/kokoro/gcp_ubuntu/docker_common.sh\n"
        "docker_setup\n"
        'docker run "${DOCKER_RUN_ARGS[@]?}" \\\n'
        f"{gpu}"
        f"  {registry}/{image}@{digest} \\\n"
        "  build_tools/kokoro/gcp_ubuntu/build.sh\n"
    )


def workspace(registry: str, digest: str) -> str:
    host, _, path = registry.partition("/")
    return (
        'workspace(name = "iree_core")\n\n'
        'load("@bazel_toolchains//rules:rbe_repo.bzl", "rbe_autoconfig")\n\n'
        "rbe_autoconfig(\n"
        '    name = "rbe_default",\n'
        f'    base_container_digest = "{OTHER_RULE_DIGEST}",\n'
        f'    digest = "{digest}",\n'
        f'    registry = "{host}",\n'
        f'    repository = "{path}/rbe-toolchain",\n'
        '    use_checked_in_confs = "Force",\n'
        ")\n\n"
        "container_pull(\n"
        '    name = "other_container",\n'
        f'    digest = "{OTHER_RULE_DIGEST}",\n'
        '    registry = "gcr.io",\n'
        '    repository = "cloud-marketplace/google/rbe-ubuntu16-04",\n'
        ")\n"
    )


def make_tree(
    root: Path,
    registry: str,
    graph: Mapping[str, Sequence[str]],
    digests: Mapping[str, str] | None = None,
    sleep: float = 0,
) -> Path:
    """Writes the tree into `root` (a new git repository) and commits it."""
    digests = dict(digests or {})
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--template=", "-b", "main")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "Test")
    docker_dir = root / "build_tools" / "docker"
    for image, parents in graph.items():
        context = docker_dir / image
        context.mkdir(parents=True, exist_ok=True)
        (context / "Dockerfile").write_text(dockerfile(registry, image, parents, digests, sleep))
        (context / "stamp").write_text(f"{image} 1\n")
        if not parents and BUSYBOX.is_file():
            shutil.copy2(BUSYBOX, context / "busybox")
    (docker_dir / "prod_digests.txt").write_text(
        "".join(f"{registry}/{image}@{digests.get(image, PLACEHOLDER)}\n" for image in graph)
    )
    kokoro = root / KOKORO_DIR
    kokoro.mkdir(parents=True, exist_ok=True)
    (kokoro / "docker_common.sh").write_text("docker_setup() { DOCKER_RUN_ARGS=(--rm); }\n")
    (kokoro / "build.sh").write_text("#!/bin/bash\necho build\n")
    for script, image in CI_SCRIPTS.items():
        if image not in graph:
            continue
        path = kokoro / script
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ci_script(registry, image, digests.get(image, PLACEHOLDER), CI_JOBS[script][1]))
        path.chmod(0o755)
    (root / "WORKSPACE").write_text(workspace(registry, digests.get("rbe-toolchain", PLACEHOLDER)))
    (root / "README.md").write_text(f"Images live under {registry}; see prod_digests.txt for the digests.\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Initial tree")
    return root


def tracked_files(root: Path) -> dict[str, bytes]:
    """Every tracked file's bytes, for before/after comparisons."""
    names = [name for name in git(root, "ls-files", "-z").split("\0") if name]
    return {name: (root / name).read_bytes() for name in names if (root / name).is_file()}


def clone(source: Path, destination: Path) -> Path:
    subprocess.run(
        ("git", *GIT_ISOLATION, "clone", "-q", "--template=", str(source), str(destination)), check=True
    )
    git(destination, "config", "user.email", "test@example.com")
    git(destination, "config", "user.name", "Test")
    return destination
