"""The registry HTTP client: its pure parts as tables, then the client against a real
`docker-registry` on loopback over plain HTTP (no engine anywhere), and --promote and
--verify_pinned through it, in process. TLS and auth are in test_registry_auth.py."""

from __future__ import annotations

import base64
import json
import os

import pytest

import fake_tree
import manage_images as mi
from helpers import GRAPH
from registry import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256


# --- Pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:5000/iree-oss/base", ("127.0.0.1:5000", "iree-oss/base")),
        ("gcr.io/iree-oss/cmake-python", ("gcr.io", "iree-oss/cmake-python")),
        ("localhost/x/y", ("localhost", "x/y")),
        ("us-docker.pkg.dev/p/r/base", ("us-docker.pkg.dev", "p/r/base")),
        ("iree-oss/base", ("docker.io", "iree-oss/base")),  # no `.` or `:`: Docker Hub
        ("busybox", ("docker.io", "library/busybox")),
        ("docker.io/busybox", ("docker.io", "library/busybox")),
        ("[::1]:5000/x", ("[::1]:5000", "x")),
    ],
)
def test_an_image_url_splits_into_host_and_repository_as_docker_splits_it(url, expected):
    assert mi.split_url(url) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("h:5000/a/b@sha256:" + "1" * 64, ("h:5000/a/b", "sha256:" + "1" * 64)),
        ("h:5000/a/b:prod", ("h:5000/a/b", "prod")),
        ("h:5000/a/b", ("h:5000/a/b", "latest")),
    ],
)
def test_a_reference_splits_into_url_and_tag_or_digest(ref, expected):
    assert mi.split_reference(ref) == expected


def test_a_bearer_challenge_gives_realm_service_and_scope():
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push"'
    )
    assert mi.parse_challenge(header) == (
        "bearer",
        {
            "realm": "https://auth.example.com/token",
            "service": "registry.example.com",
            "scope": "repository:a/b:pull,push",
        },
    )
    assert mi.parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert mi.parse_challenge("") == ("", {})


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auths_entries_are_found_under_any_key_docker_accepts():
    auths = {
        "https://other.example.com": {"auth": _auth("no", "no")},
        "https://reg.example.com:5000/v1/": {"auth": _auth("me", "pa:ss")},
        "https://index.docker.io/v1/": {"identitytoken": "refresh-me"},
    }
    found = mi.auths_credentials(auths, "reg.example.com:5000", "cfg")
    assert (found.username, found.password, found.identity_token) == ("me", "pa:ss", "")
    hub = mi.auths_credentials(auths, "docker.io", "cfg")
    assert hub.identity_token == "refresh-me"
    assert mi.auths_credentials(auths, "reg.example.com", "cfg") is None  # the port is part of the key
    assert (
        mi.auths_credentials({"reg.example.com": {}}, "reg.example.com", "cfg") is None
    )  # credsStore marker


def test_a_broken_auth_entry_is_one_line_without_its_content():
    with pytest.raises(mi.RegistryError) as error:
        mi.auths_credentials({"r.example.com": {"auth": "bm90LWEtcGFpcg=="}}, "r.example.com", "cfg.json")
    assert str(error.value) == (
        "cfg.json: the `auth` of r.example.com is not base64 of user:password; "
        "run `docker login r.example.com` again"
    )


def test_credentials_never_show_their_secrets():
    credentials = mi.Credentials("me", "hunter2-secret", "refresh-secret", "cfg")
    assert "secret" not in repr(credentials) and "secret" not in str(credentials)


def test_a_credential_helper_answer_and_its_identity_token_marker():
    answer = json.dumps({"ServerURL": "h", "Username": "me", "Secret": "pw"}).encode()
    assert mi.helper_credentials(answer, "docker-credential-x")[:3] == ("me", "pw", "")
    token = json.dumps({"ServerURL": "h", "Username": "<token>", "Secret": "refresh"}).encode()
    assert mi.helper_credentials(token, "docker-credential-x")[:3] == ("", "", "refresh")
    with pytest.raises(mi.RegistryError, match="did not answer the credential helper protocol"):
        mi.helper_credentials(b"oops", "docker-credential-x")


@pytest.mark.parametrize(
    ("retry_after", "attempt", "seconds"),
    [(None, 1, 0.5), (None, 2, 1.0), (None, 3, 2.0), ("3", 1, 3.0), ("0", 2, 0.0), ("3600", 1, 30.0)],
)
def test_retry_waits_as_the_registry_says_and_never_long(retry_after, attempt, seconds):
    assert mi.retry_delay(retry_after, attempt) == seconds


def test_retry_after_as_an_http_date():
    import email.utils
    import time

    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= mi.retry_delay(date, 1) <= 5


def test_an_index_resolves_to_the_platforms_manifest():
    index = {
        "manifests": [
            {
                "digest": "sha256:" + "a" * 64,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:" + "c" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
        ]
    }
    assert mi.pick_platform(index, "linux/amd64", "x") == "sha256:" + "b" * 64
    assert mi.pick_platform(index, "linux/arm64/v8", "x") == "sha256:" + "a" * 64
    assert mi.pick_platform(index, "linux/arm64", "x") == "sha256:" + "a" * 64
    with pytest.raises(
        mi.RegistryError,
        match=r"without a linux/s390x image \(it has: linux/arm64/v8, linux/amd64, unknown/unknown\)",
    ):
        mi.pick_platform(index, "linux/s390x", "x")


def test_loopback_registries_are_the_only_ones_asked_over_plain_http():
    assert mi.is_loopback_registry("127.0.0.1:5000/x")
    assert mi.is_loopback_registry("localhost:5000/x")
    assert mi.is_loopback_registry("[::1]:5000/x")
    assert not mi.is_loopback_registry("gcr.io/iree-oss")
    assert not mi.is_loopback_registry("127.example.com/x")


# --- The client against a real registry, plain HTTP on loopback -----------------


@pytest.fixture
def client(docker_env) -> mi.RegistryClient:
    return mi.RegistryClient(dict(os.environ))


def test_served_digest_is_one_head_and_none_when_nothing_is_served(plain_registry, client):
    digest = plain_registry.push_image("served", "v1", label="served")
    url = f"{plain_registry.url}/served"
    before = plain_registry.log_size()
    assert client.served_digest(url, "v1") == digest
    assert client.served_digest(url, digest) == digest
    assert client.served_digest(url, "missing") is None
    assert client.served_digest(url, "sha256:" + "0" * 64) is None
    requests = plain_registry.requests(before, agent=mi.USER_AGENT)
    # One ping of /v2/ (the first request to this host), then one HEAD per question.
    assert [request[:2] for request in requests] == [
        ("GET", "/v2/"),
        ("HEAD", "/v2/iree-oss/served/manifests/v1"),
        ("HEAD", f"/v2/iree-oss/served/manifests/{digest}"),
        ("HEAD", "/v2/iree-oss/served/manifests/missing"),
        ("HEAD", f"/v2/iree-oss/served/manifests/sha256:{'0' * 64}"),
    ]


def test_what_a_digest_names_is_asked_once_and_a_tag_every_time(plain_registry, client):
    digest = plain_registry.push_image("asked", "v1", label="asked")
    url = f"{plain_registry.url}/asked"
    before = plain_registry.log_size()
    for _ in range(3):
        assert client.served_digest(url, digest) == digest
        assert client.served_digest(url, "v1") == digest
        assert client.image_config(url, digest) == client.image_config(url, "v1")
    config = json.loads(plain_registry.manifest("asked", digest)[1])["config"]["digest"]
    asked = [request[:2] for request in plain_registry.requests(before, agent=mi.USER_AGENT)]
    manifest, blob = f"/v2/iree-oss/asked/manifests/{digest}", f"/v2/iree-oss/asked/blobs/{config}"
    assert [request for request in asked if request[1] in (manifest, blob)] == [
        ("HEAD", manifest),
        ("GET", manifest),
        ("GET", blob),
    ]
    assert asked.count(("HEAD", "/v2/iree-oss/asked/manifests/v1")) == 3
    assert asked.count(("GET", "/v2/iree-oss/asked/manifests/v1")) == 3
    # A digest not served is asked again: a push during the run may serve it.
    missing = "sha256:" + "0" * 64
    assert client.served_digest(url, missing) is None
    plain_registry.push_image("asked", "v2", label="other")
    assert client.served_digest(url, missing) is None
    asked = [request[:2] for request in plain_registry.requests(before, agent=mi.USER_AGENT)]
    assert asked.count(("HEAD", f"/v2/iree-oss/asked/manifests/{missing}")) == 2


@pytest.mark.parametrize("kind", ["oci", "docker", "index"])
def test_get_then_put_keeps_the_bytes_the_media_type_and_the_digest(plain_registry, client, kind):
    image = f"copy-{kind}"
    if kind == "index":
        digest, media_type = plain_registry.push_index(image, label=kind), OCI_INDEX
    else:
        digest = plain_registry.push_image(image, layers=[b"layer " + kind.encode()], docker=kind == "docker")
        media_type = DOCKER_MANIFEST if kind == "docker" else OCI_MANIFEST
    url = f"{plain_registry.url}/{image}"
    manifest = client.get_manifest(url, digest)
    assert manifest == (media_type, plain_registry.manifest(image, digest)[1], digest)
    assert sha256(manifest.data) == digest
    assert client.put_manifest(url, "prod", manifest) == digest
    assert plain_registry.digest(image, "prod") == digest
    assert plain_registry.manifest(image, "prod") == (media_type, manifest.data)


def test_get_manifest_of_a_digest_the_registry_does_not_serve_is_one_clear_line(plain_registry, client):
    plain_registry.push_image("absent", "v1")
    with pytest.raises(mi.RegistryError) as error:
        client.get_manifest(f"{plain_registry.url}/absent", "sha256:" + "0" * 64)
    assert str(error.value) == (
        f"{plain_registry.host} does not serve {plain_registry.url}/absent@sha256:{'0' * 64} "
        "(HTTP 404: MANIFEST_UNKNOWN: manifest unknown); check the pin, or push the image first"
    )


def test_image_config_resolves_an_index_to_the_platforms_config(plain_registry, client):
    index = plain_registry.push_index("multi", "v1", label="multi")
    url = f"{plain_registry.url}/multi"
    for platform, architecture in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        digest, data = client.image_config(url, index, platform)
        assert sha256(data) == digest
        assert json.loads(data)["architecture"] == architecture
    single = plain_registry.push_image("single", layers=[b"x"], label="one")
    digest, data = client.image_config(f"{plain_registry.url}/single", single)
    assert json.loads(data)["config"]["Labels"] == {"test": "one"} and sha256(data) == digest


def test_registry_client_is_one_per_environment(docker_env, tmp_path):
    settings = mi.Settings("127.0.0.1:1/x", "latest", False, tmp_path)
    assert mi.registry_client(settings) is mi.registry_client(settings)
    other = settings._replace(env={"HOME": str(tmp_path)})
    assert mi.registry_client(other) is not mi.registry_client(settings)


# --- --promote and --verify_pinned through the API, no engine --------------------


def api_world(registry, tmp_path, index_for=("base",)) -> tuple:
    """A tree whose 17 pins are images made through the API (an index for `index_for`),
    each also tagged `latest`; no engine involved."""
    digests = {
        image: registry.push_index(image, "latest", label=f"{tmp_path.name}-{image}")
        if image in index_for
        else registry.push_image(image, "latest", layers=[f"{image} {tmp_path.name}".encode()])
        for image in GRAPH
    }
    root = fake_tree.make_tree(tmp_path / "repo", registry.url, GRAPH, digests)
    return root, digests


def test_promote_puts_each_pinned_manifest_under_the_tag_with_no_engine(
    plain_registry, docker_env, tmp_path, monkeypatch, capsys
):
    root, digests = api_world(plain_registry, tmp_path, index_for=("base", "cmake"))
    tag = f"prod-{tmp_path.name[-20:]}".replace("_", "-")
    monkeypatch.chdir(root)
    tracked = fake_tree.tracked_files(root)
    before = plain_registry.log_size()
    args = ["--registry", plain_registry.url, "--images", "all", "--promote", "--tag", tag, "-j", "4"]
    assert mi.main(args) == 0, capsys.readouterr()
    requests = plain_registry.requests(before)
    assert fake_tree.tracked_files(root) == tracked
    for image, digest in digests.items():
        assert plain_registry.digest(image, tag) == digest, image
    assert plain_registry.manifest("base", tag)[0] == OCI_INDEX
    assert not [request for request in requests if "/blobs/" in request[1]]
    # The ping, then one GET by digest and one PUT under the tag per image, and nothing else.
    expected = [("GET", "/v2/")] + [
        (method, f"/v2/iree-oss/{image}/manifests/{reference}")
        for image in GRAPH
        for method, reference in (("GET", digests[image]), ("PUT", tag))
    ]
    assert sorted(request[:2] for request in requests) == sorted(expected)
    assert [request for request in requests if request[2] >= 300] == []


def test_a_dry_run_of_promote_prints_the_manifest_reads_and_writes_and_sends_none(
    plain_registry, docker_env, tmp_path, monkeypatch, capsys
):
    root, digests = api_world(plain_registry, tmp_path, index_for=())
    monkeypatch.chdir(root)
    before = plain_registry.log_size()
    args = [
        "--registry",
        plain_registry.url,
        "--image",
        "cmake-python-nvidia",
        "--promote",
        "--tag",
        "dry",
        "-n",
    ]
    assert mi.main(args) == 0
    out = capsys.readouterr().out
    repository = f"{plain_registry.host}/v2/iree-oss/cmake-python-nvidia/manifests"
    assert f"Running: `GET {repository}/{digests['cmake-python-nvidia']}`" in out.splitlines()
    assert f"Running: `PUT {repository}/dry` (the same bytes and media type)" in out.splitlines()
    assert plain_registry.requests(before) == []
    assert plain_registry.digest("cmake-python-nvidia", "dry") is None


def test_promote_of_a_pin_the_registry_does_not_serve_fails_that_image(
    plain_registry, docker_env, tmp_path, monkeypatch, capsys
):
    root, digests = api_world(plain_registry, tmp_path, index_for=())
    prod = root / "build_tools/docker/prod_digests.txt"
    missing = "sha256:" + "e" * 64
    prod.write_text(prod.read_text().replace(digests["cmake-python-nvidia"], missing))
    monkeypatch.chdir(root)
    args = ["--registry", plain_registry.url, "--image", "cmake-python-nvidia", "--promote", "--tag", "gone"]
    assert mi.main(args) == 1
    err = capsys.readouterr().err
    assert err == (
        f"{plain_registry.host} does not serve {plain_registry.url}/cmake-python-nvidia@{missing} "
        "(HTTP 404: MANIFEST_UNKNOWN: manifest unknown); check the pin, or push the image first\n"
    )
    assert plain_registry.digest("cmake-python-nvidia", "gone") is None


def test_verify_pinned_reads_indexes_and_reports_drift(
    plain_registry, docker_env, tmp_path, monkeypatch, capsys
):
    root, digests = api_world(plain_registry, tmp_path, index_for=("base", "util"))
    monkeypatch.chdir(root)
    args = ["--registry", plain_registry.url, "--images", "all", "--verify_pinned", "--tag", "latest"]
    assert mi.main(args) == 0, capsys.readouterr()
    assert capsys.readouterr().out.endswith(
        f"Verified {len(GRAPH)} images: {plain_registry.url} serves every pinned digest, and :latest as it.\n"
    )
    other = plain_registry.push_index("base", "latest", label=f"{tmp_path.name}-moved")
    assert mi.main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"build_tools/docker/prod_digests.txt:1: {plain_registry.url}/base:latest is {other[:19]}, not the "
        f"pinned {digests['base'][:19]}; run manage_images.py --image base --promote --tag latest"
    )


def test_verify_pinned_names_a_pin_never_pushed_and_an_image_without_a_line(
    plain_registry, docker_env, tmp_path, monkeypatch, capsys
):
    root, digests = api_world(plain_registry, tmp_path, index_for=())
    prod = root / "build_tools/docker/prod_digests.txt"
    missing = "sha256:" + "e" * 64
    lines = [
        line.replace(digests["cmake-python"], missing)
        for line in prod.read_text().splitlines()
        if "/swiftshader@" not in line
    ]
    prod.write_text("".join(f"{line}\n" for line in lines))
    number = next(n for n, line in enumerate(lines, 1) if "/cmake-python@" in line)
    monkeypatch.chdir(root)
    url = plain_registry.url
    args = ["--registry", url, "--image", "cmake-python", "--image", "cmake", "--verify_pinned"]
    assert mi.main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        f"build_tools/docker/prod_digests.txt:{number}: {url}/cmake-python@{missing[:19]} is pinned, but the "
        "registry does not serve it (never pushed, or deleted); push it with manage_images.py --image "
        "cmake-python --build --push --update_references" in out
    )
    assert (
        f"build_tools/docker/prod_digests.txt:{number}: {url}/cmake-python:latest is "
        f"{digests['cmake-python'][:19]}, not the pinned {missing[:19]}; run manage_images.py --image "
        "cmake-python --promote --tag latest"
    ) in out
    assert (
        f"build_tools/docker/prod_digests.txt:1: {url}/swiftshader has no line, so there is no pin to verify"
        in out
    )
    verified = len(mi.ordered_images_to_process(["cmake-python", "cmake"], GRAPH))
    assert out[-1] == f"Verified {verified} images in {url}: 3 problems found."


def test_docker_hub_credentials_are_looked_up_as_docker_does(docker_env, tmp_path, monkeypatch):
    from auth_servers import credential_helper

    folder, asked = credential_helper(
        tmp_path / "helper", {"https://index.docker.io/v1/": {"Username": "hub-user", "Secret": "pw"}}
    )
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    # credHelpers is keyed by host name; the helper is asked for Docker Hub's server URL.
    (docker_env["docker-config"] / "config.json").write_text(
        json.dumps({"credHelpers": {"index.docker.io": "test"}})
    )
    credentials = mi.RegistryClient(dict(os.environ))._credentials_for("docker.io")
    assert (credentials.username, credentials.password) == ("hub-user", "pw")
    assert [json.loads(line) for line in asked.read_text().splitlines()] == [
        [["get"], "https://index.docker.io/v1/"]
    ]
    assert mi.api_host("docker.io") == "registry-1.docker.io"
