"""The engine side of #19, without an engine: which builder and image store
`docker version` and `docker info` describe, the build argv each engine
gets, and what "the same image" means (identity is content). The real
engines are in test_e2e_engines.py."""

from __future__ import annotations

import hashlib
import json

import pytest

import manage_images as mi
from helpers import D1, NEW, after_engine_questions, files

URL = "gcr.io/iree-oss/cmake"
PYTHON = "gcr.io/iree-oss/cmake-python"
OVERLAY = [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]
CONTAINERD = [["driver-type", "io.containerd.snapshotter.v1"]]
BUILDX = [{"Name": "buildx", "Version": "0.13.1+ds1", "Path": "/x/docker-buildx"}]


def version(client: str) -> str:
    return json.dumps({"Client": {"Version": client}, "Server": {"Version": "26.1.5"}})


def info(driver: str = "overlay2", status=OVERLAY, plugins=()) -> str:
    return json.dumps(
        {
            "ServerVersion": "26.1.5",
            "Driver": driver,
            "DriverStatus": status,
            "ClientInfo": {"Plugins": plugins},
        }
    )


@pytest.mark.parametrize(
    ("client", "facts", "buildkit", "builder", "store", "buildx"),
    [
        # Debian 12: a 20.10 CLI builds with the classic builder unless DOCKER_BUILDKIT says otherwise.
        ("20.10.24+dfsg1", info(), None, "classic", "overlay2", ""),
        ("20.10.24+dfsg1", info(), "1", "buildkit", "overlay2", ""),
        ("20.10.24+dfsg1", info(plugins=BUILDX), "", "classic", "overlay2", ""),
        # Since 23, buildx when the plugin is there, else the classic builder (docker falls back).
        ("26.1.5+dfsg1", info(plugins=BUILDX), None, "buildkit", "overlay2", "0.13.1+ds1"),
        ("26.1.5+dfsg1", info("overlayfs", CONTAINERD, BUILDX), None, "buildkit", "containerd", "0.13.1+ds1"),
        ("26.1.5+dfsg1", info(plugins=BUILDX), "0", "classic", "overlay2", ""),
        ("26.1.5+dfsg1", info(plugins=BUILDX), "false", "classic", "overlay2", ""),
        ("28.2.2", info(), None, "classic", "overlay2", ""),
        # A plugin docker reports as broken is not usable.
        (
            "26.1.5",
            info(plugins=[{**BUILDX[0], "Err": "exec format error"}]),
            None,
            "classic",
            "overlay2",
            "",
        ),
    ],
)
def test_the_engine_is_told_by_docker_version_and_info(client, facts, buildkit, builder, store, buildx):
    engine = mi.engine_from(version(client), facts, buildkit)
    assert (engine.builder, engine.store, engine.buildx) == (builder, store, buildx)
    assert engine.containerd() == (store == "containerd")


def test_buildkit_asked_for_without_buildx_or_as_no_boolean_is_one_clear_line():
    with pytest.raises(
        mi.ManageImagesError, match="DOCKER_BUILDKIT is set but docker finds no usable buildx"
    ):
        mi.engine_from(version("26.1.5"), info(), "1")
    with pytest.raises(mi.ManageImagesError, match=r"DOCKER_BUILDKIT='yes' is not a boolean"):
        mi.engine_from(version("20.10.24"), info(), "yes")
    with pytest.raises(mi.ManageImagesError, match="cannot read `docker version` and `docker info` as JSON"):
        mi.engine_from("20.10.24", info(), None)


CLASSIC = mi.engine_from(version("20.10.24"), info(), None)
BUILTIN = mi.engine_from(version("20.10.24"), info(), "1")
OVERLAY2 = mi.engine_from(version("26.1.5"), info(plugins=BUILDX), None)
CONTAINERD_STORE = mi.engine_from(version("26.1.5"), info("overlayfs", CONTAINERD, BUILDX), None)


def test_a_buildx_build_starts_the_plugin_docker_would_with_the_builder_docker_would_pick():
    argv = ("docker", "build", "--tag", f"{URL}:latest", "build_tools/docker/cmake")
    in_context = mi.engine_from(
        version("26.1.5"),
        json.dumps({**json.loads(info(plugins=BUILDX)), "ClientInfo": {"Plugins": BUILDX, "Context": "far"}}),
        None,
    )
    started, env = mi.started_command(argv, in_context, {"HOME": "/h"})
    assert started == ("/x/docker-buildx", "build", "--tag", f"{URL}:latest", "build_tools/docker/cmake")
    # docker build builds on its context's builder, whatever `docker buildx use` chose ...
    assert env == {"HOME": "/h", "BUILDX_BUILDER": "far"}
    # ... unless BUILDX_BUILDER names one (as --builder does).
    assert mi.started_command(argv, in_context, {"BUILDX_BUILDER": "b"})[1] == {"BUILDX_BUILDER": "b"}
    assert mi.started_command(argv, OVERLAY2, {})[1] == {"BUILDX_BUILDER": "default"}
    # The classic builder, BuildKit inside the CLI, and other commands are started as written.
    for engine in (None, CLASSIC, BUILTIN):
        assert mi.started_command(argv, engine, {"HOME": "/h"}) == (argv, {"HOME": "/h"})
    push = ("docker", "push", f"{URL}:latest")
    assert mi.started_command(push, OVERLAY2, {}) == (push, {})


@pytest.mark.parametrize(
    ("engine", "push", "cache_to"),
    [
        (None, True, ""),
        (CLASSIC, True, ""),
        (BUILTIN, False, "type=inline"),
        (OVERLAY2, False, "type=inline"),
        (OVERLAY2, True, "type=inline"),
        (CONTAINERD_STORE, False, ""),
        (CONTAINERD_STORE, True, f"type=registry,ref={URL}:prod.cache,mode=max,ignore-error=true"),
    ],
)
def test_each_engine_writes_the_cache_a_cold_engine_of_its_kind_reads(engine, push, cache_to):
    assert mi.cache_export(engine, URL, "prod", push) == cache_to


def plan(*cache_from: str, cache_to: str = "", metadata: str = "", tag: str = "latest") -> mi.BuildPlan:
    return mi.BuildPlan(URL, tag, "build_tools/docker/cmake", cache_from, cache_to, metadata)


def test_the_build_argv_of_each_engine():
    context = "build_tools/docker/cmake"
    assert mi.build_argv(plan()) == ("docker", "build", "--tag", f"{URL}:latest", context)
    assert mi.build_argv(plan(f"{URL}@{D1}"), CLASSIC) == (
        "docker",
        "build",
        "--tag",
        f"{URL}:latest",
        "--cache-from",
        f"{URL}@{D1}",
        context,
    )
    # BuildKit built into an old CLI: inline cache as a build argument, no attestation flags.
    assert mi.build_argv(plan(cache_to="type=inline"), BUILTIN) == (
        *("docker", "build", "--tag", f"{URL}:latest"),
        *("--build-arg", "BUILDKIT_INLINE_CACHE=1", context),
    )
    registry_cache = f"type=registry,ref={URL}:latest.cache,mode=max,ignore-error=true"
    assert mi.build_argv(plan("X", cache_to=registry_cache, metadata="/tmp/m.json"), CONTAINERD_STORE) == (
        *("docker", "build", "--tag", f"{URL}:latest", "--provenance=false", "--sbom=false"),
        *("--metadata-file", "/tmp/m.json", "--cache-from", "X", "--cache-to", registry_cache, context),
    )
    # Attestations only when asked for: BuildKit's own defaults.
    with_attestations = mi.BuildOptions(attestations=True)
    assert "--provenance=false" not in mi.build_argv(plan(tag="t"), OVERLAY2, with_attestations)
    assert mi.build_argv(plan(cache_to="type=inline", tag="t"), OVERLAY2)[4:7] == (
        "--provenance=false",
        "--sbom=false",
        "--cache-to",
    )


def test_build_arguments_reach_every_engine_in_order():
    options = mi.BuildOptions(build_arg=("A=1", "B=x y", "A=2"))
    for engine in (None, CLASSIC, BUILTIN, OVERLAY2, CONTAINERD_STORE):
        argv = mi.build_argv(plan(), engine, options)
        assert argv[4:10] == ("--build-arg", "A=1", "--build-arg", "B=x y", "--build-arg", "A=2"), engine


def test_cache_tags_are_valid_docker_tags_beside_the_image():
    assert mi.pinned_cache_tag(D1) == f"sha256-{'1' * 64}.cache"
    assert mi.build_cache_tag("prod") == "prod.cache"
    for tag in (mi.pinned_cache_tag(D1), mi.build_cache_tag("x" * 128)):
        assert mi.TAG_RE.match(tag), tag


CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["PATH=/bin"], "WorkingDir": "/"},
    "created": "2026-12-01T22:16:25.831544856Z",
    "history": [{"created_by": "COPY stamp /stamp/base # buildkit"}],
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]},
}
INSPECT = {
    "Id": "sha256:" + "c" * 64,
    "Os": "linux",
    "Architecture": "amd64",
    "Created": "2026-12-01T22:16:25.831544856Z",
    "Author": "",
    # docker shows every field of the runtime config, the unset ones empty.
    "Config": {
        "Hostname": "",
        "Tty": False,
        "Env": ["PATH=/bin"],
        "Cmd": None,
        "WorkingDir": "/",
        "Labels": None,
    },
    "RootFS": {"Type": "layers", "Layers": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]},
}


def test_same_config_leaves_out_buildkits_cache_record_key_order_and_white_space():
    one = json.dumps({**CONFIG, mi.CACHE_RECORD_KEY: "W3sib25lIl0="}).encode()
    other = json.dumps(
        {mi.CACHE_RECORD_KEY: "W3sidHdvIl0=", **dict(reversed(CONFIG.items()))}, indent=2
    ).encode()
    assert mi.same_config(one, other)
    assert mi.same_config(json.dumps(CONFIG).encode(), one)
    # Anything else is content: a layer, the runtime config, the history.
    for key, value in (
        ("rootfs", {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}),
        ("config", {"Env": ["PATH=/usr/bin"], "WorkingDir": "/"}),
        ("history", []),
    ):
        assert not mi.same_config(one, json.dumps({**CONFIG, key: value}).encode()), key


def test_the_view_of_a_local_image_is_the_view_of_its_config():
    assert mi.inspect_view(INSPECT) == mi.config_view(CONFIG)
    assert mi.config_view(CONFIG)["platform"] == "linux/amd64"
    for key, value in (("Created", "2026-12-02T00:00:00Z"), ("Architecture", "arm64")):
        assert mi.inspect_view({**INSPECT, key: value}) != mi.config_view(CONFIG), key
    assert mi.inspect_view({**INSPECT, "Config": {**INSPECT["Config"], "Cmd": ["sh"]}}) != mi.config_view(
        CONFIG
    )
    # A newer CLI shows the runtime config as the OCI spec has it, without docker's own fields.
    classic = {**CONFIG, "config": {**CONFIG["config"], "Image": "sha256:" + "e" * 64, "Hostname": ""}}
    oci_only = {**INSPECT, "Config": {"Env": ["PATH=/bin"], "WorkingDir": "/"}}
    assert mi.inspect_view(oci_only) == mi.config_view(classic)


def local(config_digest: str | None, image_id: str = "sha256:" + "c" * 64) -> mi.LocalImage:
    view = mi.inspect_view(INSPECT)
    return mi.LocalImage(image_id, config_digest, str(view["platform"]), view, ())


def test_identity_identical_same_content_or_differs():
    data = json.dumps({**CONFIG, mi.CACHE_RECORD_KEY: "W3sib25lIl0="}).encode()
    config_digest = "sha256:" + "d" * 64
    assert mi.identity_of(local(config_digest), D1, config_digest, data) == "identical"
    # On the containerd store the ID is the manifest's digest.
    assert mi.identity_of(local(None, image_id=D1), D1, config_digest, data) == "identical"
    # Another config digest, the same platform, layers, runtime config and time: BuildKit's record differed.
    assert mi.identity_of(local(NEW), D1, config_digest, data) == "same content"
    assert mi.identity_of(local(None), D1, config_digest, data) == "same content"
    other = json.dumps({**CONFIG, "created": "2026-12-02T00:00:00Z"}).encode()
    assert mi.identity_of(local(NEW), D1, config_digest, other) == "differs"
    assert mi.identity_of(local(NEW), D1, config_digest, b"not json") == "differs"


# --- The run, with the stand-in docker and registry -----------------------------


def test_a_dry_run_shows_the_engine_and_the_buildkit_argv_it_would_run(tree, standin, capsys):
    standin.set(engine={"client": "26.1.5", "server": "26.1.5", "store": "containerd", "buildx": "0.13.1"})
    assert mi.main(["--image", "cmake-python", "--build", "--push", "--cache_from_pinned", "-n"]) == 0
    out = capsys.readouterr().out
    assert (
        "Engine: Docker 26.1.5 (client 26.1.5), BuildKit (buildx 0.13.1), the containerd image store\n" in out
    )
    build = next(line for line in out.splitlines() if line.startswith("Running: `docker build"))
    assert f"--cache-from type=registry,ref={PYTHON}:sha256-{'1' * 64}.cache" in build
    assert f"--cache-to type=registry,ref={PYTHON}:latest.cache,mode=max" in build
    assert "--provenance=false --sbom=false --metadata-file " in build
    # BuildKit reads its cache from the registry: nothing is pulled.
    assert "docker pull" not in out


def test_the_json_report_names_the_engine(tree, standin, capsys):
    standin.set(engine={"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"})
    assert mi.main(["--image", "cmake-python-nvidia", "--build", "-n", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == 1
    assert document["engine"] == {
        "builder": "buildkit",
        "store": "overlay2",
        "buildx": "0.13.1",
        "client": "26.1.5",
        "server": "26.1.5",
    }


@pytest.mark.parametrize("dry_run", [True, False])
def test_only_a_dry_run_prints_the_engine_and_json_names_it_in_every_run(tree, standin, capsys, dry_run):
    # #19 shows the engine "in --json and in -n output"; a real run's output stays the original's (#22).
    standin.set(engine={"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"})
    argv = ["--image", "cmake-python-nvidia", "--build", "--json", "report.json"]
    assert mi.main([*argv, "-n"] if dry_run else argv) == 0
    line = "Engine: Docker 26.1.5 (client 26.1.5), BuildKit (buildx 0.13.1), the overlay2 image store\n"
    assert (line in capsys.readouterr().out) == dry_run
    assert json.loads((tree / "report.json").read_text())["engine"]["builder"] == "buildkit"
    after_engine_questions(standin.commands())


def test_an_unchanged_image_keeps_its_pin_even_under_a_new_digest(tree, standin, capsys):
    # The registry serves the pin D1 and, under :latest, NEW: both hold what was built.
    standin.set(
        repo_digests={f"{URL}:latest": [f"{URL}@{NEW}"]},
        local_content={f"{URL}:latest": "layer"},
        manifests={f"{URL}@{D1}": D1},
        contents={D1: "layer", NEW: "layer"},
    )
    before = files(tree)
    assert mi.main(["--image", "cmake", "--update_references", "--json", "report.json"]) == 1
    # cmake keeps D1 (nothing to rewrite); its dependent cmake-python has no local image.
    assert {path: data for path, data in files(tree).items() if path != "report.json"} == before
    images = {image["name"]: image for image in json.loads((tree / "report.json").read_text())["images"]}
    assert images["cmake"]["digest"] == {"old": D1, "new": D1}
    assert images["cmake"]["identity"] == "identical"
    assert images["cmake"]["note"] == "pin kept (identical)"


def test_a_built_image_no_registry_serves_is_never_pinned(tree, standin, capsys):
    # What the engine holds (and even lists in RepoDigests) is neither the pin nor what :latest serves.
    standin.set(
        repo_digests={f"{URL}:latest": [f"{URL}@{NEW}"]},
        local_content={f"{URL}:latest": "built here"},
        manifests={f"{URL}@{D1}": D1},
        contents={D1: "pinned", NEW: "pushed"},
    )
    before = files(tree)
    assert mi.main(["--image", "cmake", "--update_references"]) == 1
    assert files(tree) == before
    assert capsys.readouterr().err == (
        f"{URL}:latest differs from every image gcr.io/iree-oss serves for it (the pin {D1[:19]}, :latest "
        f"{NEW[:19]}): push it (--push), or find out why it changed; no file was changed\n"
    )


def test_a_push_is_pinned_as_the_registry_serves_it(tree, standin):
    standin.set(manifests={f"{URL}@{D1}": D1}, contents={D1: "pinned"})
    assert mi.main(["--image", "cmake", "--push", "--update_references"]) == 0
    pushed = standin.registry.served_digest(URL, "latest")
    assert pushed is not None and pushed != D1
    assert (
        (tree / "build_tools/docker/prod_digests.txt").read_bytes().startswith(f"{URL}@{pushed}\n".encode())
    )
    assert ("HEAD", URL, "latest") in standin.registry.calls


def test_a_push_with_the_pins_content_puts_the_pin_back_under_the_tag(tree, standin):
    # What docker pushed (as PUSHED, the stand-in's digest of its name) holds the pin's layer.
    pushed = "sha256:" + hashlib.sha256(f"{URL}:latest".encode()).hexdigest()
    standin.set(manifests={f"{URL}@{D1}": D1}, contents={D1: "pinned", pushed: "pinned"})
    assert mi.main(["--image", "cmake", "--push", "--update_references"]) == 0
    assert f"{URL}@{D1}\n" in (tree / "build_tools/docker/prod_digests.txt").read_text()
    # The pin's own manifest, fetched by its digest, is put under :latest after the push.
    calls = standin.registry.calls
    assert ("PUT", URL, "latest") in calls
    assert calls.index(("GET", URL, D1)) < calls.index(("PUT", URL, "latest"))


OVERLAY2_ENGINE = {"client": "26.1.5", "server": "26.1.5", "store": "overlay2", "buildx": "0.13.1"}
CONTAINERD_ENGINE = {**OVERLAY2_ENGINE, "store": "containerd"}
# An image nothing is built on (so a run of it runs one image), and its URL.
LEAF = min(
    image for image, built_on_it in mi.dependents_map(mi.IMAGES_TO_DEPENDENCIES).items() if not built_on_it
)
LEAF_URL = f"gcr.io/iree-oss/{LEAF}"


def docker_commands(standin) -> list[list[str]]:
    return [
        argv[1:] for argv in standin.commands() if argv[0] == "docker" and argv[1] not in ("version", "info")
    ]


@pytest.mark.parametrize("engine", [OVERLAY2_ENGINE, CONTAINERD_ENGINE])
def test_buildx_pushes_as_it_builds_and_pins_what_the_registry_serves(tree, standin, engine):
    standin.set(engine=engine, manifests={f"{LEAF_URL}@{D1}": D1}, contents={D1: "pinned"})
    assert mi.main(["--image", LEAF, "--build", "--push", "--update_references"]) == 0
    # One docker process per image: no `docker push`, no `docker image inspect` for the digest.
    (build,) = docker_commands(standin)
    assert build[0] == "build" and "--push" in build and "--metadata-file" in build
    pushed = standin.registry.served_digest(LEAF_URL, "latest")
    assert pushed is not None and pushed != D1
    assert f"{LEAF_URL}@{pushed}".encode() in (tree / "build_tools/docker/prod_digests.txt").read_bytes()


def test_a_push_the_registry_does_not_serve_as_the_build_said_is_a_race(tree, standin, capsys):
    standin.set(engine=OVERLAY2_ENGINE, manifests={f"{LEAF_URL}:latest": NEW})
    before = files(tree)
    assert mi.main(["--image", LEAF, "--build", "--push", "--update_references"]) == 1
    said = "sha256:" + hashlib.sha256(f"{LEAF_URL}:latest".encode()).hexdigest()
    assert capsys.readouterr().err == (
        f"docker pushed {LEAF_URL}:latest as {said[:19]}, but the registry serves {NEW[:19]} under it: "
        "another push raced this one; run again\n"
    )
    assert files(tree) == before


def test_a_build_compared_with_its_pin_is_pushed_only_after(tree, standin):
    # --verify_pinned must compare before anything is pushed: build, compare, then push.
    with open(tree / "build_tools/docker/prod_digests.txt", "a") as prod_digests:
        prod_digests.write(f"{LEAF_URL}@{D1}\n")
    standin.set(
        engine=OVERLAY2_ENGINE,
        repo_digests={f"{LEAF_URL}:latest": [f"{LEAF_URL}@{D1}"]},
        manifests={f"{LEAF_URL}@{D1}": D1},
    )
    assert mi.main(["--image", LEAF, "--build", "--verify_pinned", "--push"]) == 0
    steps = [argv[0] for argv in docker_commands(standin)]
    assert steps == ["build", "image", "push"]
    assert "--push" not in docker_commands(standin)[0]


def test_the_classic_builder_builds_then_pushes_and_asks_the_engine_nothing_more(tree, standin):
    standin.set(manifests={f"{LEAF_URL}@{D1}": D1}, contents={D1: "pinned"})
    assert mi.main(["--image", LEAF, "--build", "--push", "--update_references"]) == 0
    assert [argv[0] for argv in docker_commands(standin)] == ["build", "push"]
