"""The registry client over real TLS and real auth: `docker-registry` with a
certificate from a CA made here (trusted through a certs.d folder, or not),
htpasswd Basic auth (credentials from config.json and from a credential helper
on PATH), and `auth: token` with a token server that signs JWTs; then faults a
proxy injects in front of a real registry (429/503 with Retry-After, a
redirect, a changed manifest). No engine anywhere: DOCKER_HOST points at
nothing. A known password must never appear in any output."""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
import uuid

import pytest

import fake_tree
import manage_images as mi
from auth_servers import Authority, Proxy, TokenServer, credential_helper, htpasswd
from helpers import GRAPH, run_tool
from registry import basic, running, sha256

PASSWORD = f"correct-horse-{uuid.uuid4().hex}"
REFRESH = f"refresh-{uuid.uuid4().hex}"
LEAF = "cmake-python-nvidia"  # an image nothing depends on: promoting it promotes it alone


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_registry(registry_binary, authority, tmp_path_factory):
    cert, key = authority.issue("registry")
    with running(tmp_path_factory.mktemp("tls"), tls=(cert, key, authority.path), access_log=True) as server:
        yield server


@pytest.fixture(scope="module")
def basic_registry(registry_binary, authority, tmp_path_factory):
    folder = tmp_path_factory.mktemp("basic")
    users = htpasswd(folder / "htpasswd", {"alice": PASSWORD})
    cert, key = authority.issue("basic-registry")
    auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {users}\n"
    with running(
        folder,
        tls=(cert, key, authority.path),
        auth=auth,
        authorize=lambda scope: basic("alice", PASSWORD),
        access_log=True,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def token_server(authority, tmp_path_factory):
    server = TokenServer(
        tmp_path_factory.mktemp("token"), authority, {"alice": PASSWORD}, {REFRESH: "alice"}
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(registry_binary, authority, token_server, tmp_path_factory):
    cert, key = authority.issue("token-registry")
    with running(
        tmp_path_factory.mktemp("token-registry"),
        tls=(cert, key, authority.path),
        auth=token_server.registry_auth(),
        authorize=token_server.authorize,
        access_log=True,
    ) as server:
        yield server


def write_config(docker_env, document: dict) -> str:
    path = docker_env["docker-config"] / "config.json"
    path.write_text(json.dumps(document))
    return str(path)


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def leaf_world(registry, tmp_path) -> tuple:
    """A tree whose pin of LEAF is an image made through the API (the rest are placeholders)."""
    digest = registry.push_image(LEAF, "latest", layers=[f"leaf {tmp_path.name}".encode()])
    root = fake_tree.make_tree(tmp_path / "repo", registry.url, GRAPH, {LEAF: digest})
    return root, digest


def promote_leaf(registry, root, tag: str, *extra: str):
    return run_tool(
        root, "--image", LEAF, "--promote", "--tag", tag, *extra, registry=registry, env=dict(os.environ)
    )


# --- TLS ---------------------------------------------------------------------------


def test_tls_with_the_ca_in_certs_d_promotes_over_https(tls_registry, authority, docker_env, tmp_path):
    authority.trust_in(docker_env["certs.d"], tls_registry.host)
    root, digest = leaf_world(tls_registry, tmp_path)
    before = tls_registry.log_size()
    result = promote_leaf(tls_registry, root, "prod-tls")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tls_registry.digest(LEAF, "prod-tls") == digest
    requests = tls_registry.requests(before, agent=mi.USER_AGENT)
    assert [request[:3] for request in requests] == [
        ("GET", "/v2/", 200),
        ("GET", f"/v2/iree-oss/{LEAF}/manifests/{digest}", 200),
        ("PUT", f"/v2/iree-oss/{LEAF}/manifests/prod-tls", 201),
    ]


def test_an_untrusted_certificate_is_one_line_naming_the_problem_and_the_folder(
    tls_registry, docker_env, tmp_path
):
    root, digest = leaf_world(tls_registry, tmp_path)
    result = promote_leaf(tls_registry, root, "never")
    assert result.returncode == 1
    folder = docker_env["certs.d"] / tls_registry.host
    assert result.stderr == (
        f"cannot verify the TLS certificate of {tls_registry.host}: unable to get local issuer certificate; "
        f"if your own CA signed it, put the CA in {folder / 'ca.crt'} (as for docker) and run again\n"
    )
    assert tls_registry.digest(LEAF, "never") is None
    # A loopback registry that speaks TLS is never asked over plain HTTP instead.
    assert "HTTP request to an HTTPS server" not in "\n".join(tls_registry.log_lines())


def test_a_certificate_for_another_host_is_refused_even_with_a_trusted_ca(
    registry_binary, authority, docker_env, tmp_path
):
    cert, key = authority.issue("elsewhere", ips=("10.9.9.9",), dns=("registry.example.com",))
    with running(tmp_path / "elsewhere", tls=(cert, key, authority.path)) as server:
        authority.trust_in(docker_env["certs.d"], server.host)
        client = mi.RegistryClient(dict(os.environ))
        with pytest.raises(mi.RegistryError) as error:
            client.served_digest(f"{server.url}/{LEAF}", "latest")
    assert str(error.value).startswith(
        f"cannot verify the TLS certificate of {server.host}: IP address mismatch, certificate is not valid "
        "for '127.0.0.1'."
    )


# --- htpasswd (Basic) over TLS ----------------------------------------------------------


def test_basic_auth_with_credentials_from_config_json(basic_registry, authority, docker_env, tmp_path):
    authority.trust_in(docker_env["certs.d"], basic_registry.host)
    write_config(docker_env, {"auths": {f"https://{basic_registry.host}": auth_entry("alice", PASSWORD)}})
    root, digest = leaf_world(basic_registry, tmp_path)
    report = tmp_path / "report.json"
    result = promote_leaf(basic_registry, root, "prod-basic", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert basic_registry.digest(LEAF, "prod-basic") == digest
    for text in (result.stdout, result.stderr, report.read_text()):
        assert PASSWORD not in text and base64.b64encode(f"alice:{PASSWORD}".encode()).decode() not in text


def test_a_wrong_password_is_one_line_naming_the_registry_and_docker_login(
    basic_registry, authority, docker_env, tmp_path
):
    authority.trust_in(docker_env["certs.d"], basic_registry.host)
    wrong = f"wrong-{PASSWORD}"
    config = write_config(docker_env, {"auths": {basic_registry.host: auth_entry("alice", wrong)}})
    root, digest = leaf_world(basic_registry, tmp_path)
    report = tmp_path / "report.json"
    result = promote_leaf(basic_registry, root, "never", "--json", str(report))
    assert result.returncode == 1
    assert result.stderr == (
        f"the registry {basic_registry.host} refused GET iree-oss/{LEAF}/manifests/{digest} (HTTP 401, with "
        f"the credentials from {config}): run `docker login {basic_registry.host}` with an account that may "
        "do this, then run again\n"
    )
    for text in (result.stdout, result.stderr, report.read_text()):
        assert wrong not in text and PASSWORD not in text
    assert basic_registry.digest(LEAF, "never") is None


def test_no_credentials_for_a_basic_registry_says_to_log_in(basic_registry, authority, docker_env, tmp_path):
    authority.trust_in(docker_env["certs.d"], basic_registry.host)
    config = write_config(docker_env, {"auths": {"other.example.com": auth_entry("alice", PASSWORD)}})
    root, _ = leaf_world(basic_registry, tmp_path)
    result = promote_leaf(basic_registry, root, "never")
    assert result.returncode == 1
    assert result.stderr == (
        f"the registry {basic_registry.host} asks for a user and password and {config} has none for it: "
        f"run `docker login {basic_registry.host}`, then run again\n"
    )


@pytest.mark.parametrize("how", ["credsStore", "credHelpers"])
def test_basic_auth_through_a_credential_helper_on_path(
    basic_registry, authority, docker_env, tmp_path, monkeypatch, how
):
    authority.trust_in(docker_env["certs.d"], basic_registry.host)
    folder, asked = credential_helper(
        tmp_path / "helper", {basic_registry.host: {"Username": "alice", "Secret": PASSWORD}}
    )
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    if how == "credsStore":
        config = {"credsStore": "test", "auths": {basic_registry.host: {}}}
    else:  # a registry's own helper wins over the store (here one that is not even installed)
        config = {"credsStore": "not-installed", "credHelpers": {basic_registry.host: "test"}}
    write_config(docker_env, config)
    root, digest = leaf_world(basic_registry, tmp_path)
    result = promote_leaf(basic_registry, root, f"prod-{how.lower()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert basic_registry.digest(LEAF, f"prod-{how.lower()}") == digest
    # Asked once per run, with the server on stdin, as docker asks.
    assert [json.loads(line) for line in asked.read_text().splitlines()] == [[["get"], basic_registry.host]]
    assert PASSWORD not in result.stdout + result.stderr


def test_a_helper_without_credentials_means_anonymous_and_the_registry_refuses(
    basic_registry, authority, docker_env, tmp_path, monkeypatch
):
    authority.trust_in(docker_env["certs.d"], basic_registry.host)
    folder, _ = credential_helper(tmp_path / "helper", {})
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    config = write_config(docker_env, {"credsStore": "test"})
    root, _ = leaf_world(basic_registry, tmp_path)
    result = promote_leaf(basic_registry, root, "never")
    assert result.returncode == 1
    assert f"asks for a user and password and {config} has none for it" in result.stderr


# --- Token auth (Bearer) ---------------------------------------------------------------


def test_token_auth_with_a_password_asks_separate_pull_and_push_scopes(
    token_registry, token_server, authority, docker_env, tmp_path
):
    authority.trust_in(docker_env["certs.d"], token_registry.host)
    write_config(docker_env, {"auths": {token_registry.host: auth_entry("alice", PASSWORD)}})
    root, digest = leaf_world(token_registry, tmp_path)
    token_server.asked.clear()
    result = promote_leaf(token_registry, root, "prod-token")
    assert result.returncode == 0, result.stdout + result.stderr
    assert token_registry.digest(LEAF, "prod-token") == digest
    scope = f"repository:iree-oss/{LEAF}"
    assert [entry for entry in token_server.asked if entry[2].startswith(scope)] == [
        ("GET", "alice", f"{scope}:pull"),
        ("GET", "alice", f"{scope}:pull,push"),
    ]


def test_token_auth_with_an_identity_token_uses_the_refresh_token_grant(
    token_registry, token_server, authority, docker_env, tmp_path, monkeypatch
):
    authority.trust_in(docker_env["certs.d"], token_registry.host)
    write_config(docker_env, {"auths": {token_registry.host: {"identitytoken": REFRESH}}})
    root, digest = leaf_world(token_registry, tmp_path)
    token_server.asked.clear()
    result = promote_leaf(token_registry, root, "prod-refresh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert token_registry.digest(LEAF, "prod-refresh") == digest
    assert [entry[:2] for entry in token_server.asked if LEAF in entry[2]] == [("POST", "alice")] * 2
    assert REFRESH not in result.stdout + result.stderr
    # The same identity token from a credential helper (docker's `<token>` user).
    folder, _ = credential_helper(
        tmp_path / "helper", {token_registry.host: {"Username": "<token>", "Secret": REFRESH}}
    )
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    write_config(docker_env, {"credHelpers": {token_registry.host: "test"}})
    token_server.asked.clear()
    result = promote_leaf(token_registry, root, "prod-refresh-helper")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [entry[:2] for entry in token_server.asked if LEAF in entry[2]] == [("POST", "alice")] * 2


def test_token_auth_with_a_wrong_password_is_refused_by_the_token_server(
    token_registry, token_server, authority, docker_env, tmp_path
):
    authority.trust_in(docker_env["certs.d"], token_registry.host)
    wrong = f"wrong-{PASSWORD}"
    config = write_config(docker_env, {"auths": {token_registry.host: auth_entry("alice", wrong)}})
    root, digest = leaf_world(token_registry, tmp_path)
    report = tmp_path / "report.json"
    result = run_tool(
        root,
        "--images",
        "all",
        "--verify_pinned",
        "--json",
        str(report),
        registry=token_registry,
        env=dict(os.environ),
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"the registry {token_registry.host} refused a token for repository:iree-oss/base:pull from "
        f"{token_server.realm} (HTTP 401, with the credentials from {config}): run `docker login "
        f"{token_registry.host}` with an account that may do this, then run again\n"
    )
    assert ("GET", "denied", "repository:iree-oss/base:pull") in token_server.asked
    for text in (result.stdout, result.stderr, report.read_text()):
        assert wrong not in text and PASSWORD not in text


def test_anonymous_token_without_push_rights_is_refused_with_the_registry_named(
    token_registry, authority, docker_env, tmp_path
):
    authority.trust_in(docker_env["certs.d"], token_registry.host)
    client = mi.RegistryClient(dict(os.environ))
    url = f"{token_registry.url}/{LEAF}"
    with pytest.raises(mi.RegistryError) as error:
        client.served_digest(url, "latest")
    assert str(error.value) == (
        f"the registry {token_registry.host} refused HEAD iree-oss/{LEAF}/manifests/latest (HTTP 401, "
        f"without credentials): run `docker login {token_registry.host}` with an account that may do this, "
        "then run again"
    )


# --- Faults a proxy injects in front of a real registry -----------------------------------


@pytest.fixture
def upstream(plain_registry):
    return plain_registry


def proxied(proxy, image: str) -> str:
    return f"{proxy.host}/iree-oss/{image}"


def test_429_and_503_are_retried_as_retry_after_says(upstream, docker_env):
    digest = upstream.push_image("retried", "v1", label=uuid.uuid4().hex)

    def fault(method, path, attempt):
        if "/manifests/" in path and attempt <= 2:
            status = 429 if method == "GET" else 503
            return status, {"Retry-After": "1", "Content-Type": "application/json"}, b'{"errors":[]}'
        return None

    proxy = Proxy(f"http://{upstream.host}", fault=fault).start()
    try:
        client = mi.RegistryClient(dict(os.environ))
        started = time.monotonic()
        manifest = client.get_manifest(proxied(proxy, "retried"), digest)
        assert manifest.digest == digest
        assert time.monotonic() - started >= 2.0  # two waits of Retry-After: 1
        assert [seen[2] for seen in proxy.seen if seen[0] == "GET" and "/manifests/" in seen[1]] == [
            429,
            429,
            200,
        ]
        assert client.put_manifest(proxied(proxy, "retried"), "retried", manifest) == digest
        assert [seen[2] for seen in proxy.seen if seen[0] == "PUT"] == [503, 503, 201]
    finally:
        proxy.stop()
    assert upstream.digest("retried", "retried") == digest


def test_a_registry_that_keeps_failing_is_given_up_after_the_bounded_attempts(
    upstream, docker_env, monkeypatch
):
    monkeypatch.setattr(mi, "RETRY_AFTER_MAX", 0.0)
    proxy = Proxy(
        f"http://{upstream.host}",
        fault=lambda method, path, attempt: (503, {}, b"") if "/manifests/" in path else None,
    ).start()
    try:
        client = mi.RegistryClient(dict(os.environ))
        with pytest.raises(mi.RegistryError) as error:
            client.served_digest(proxied(proxy, "down"), "v1")
    finally:
        proxy.stop()
    assert str(error.value) == (
        f"the HEAD of {proxy.host}/iree-oss/down:v1 failed: {proxy.host} answered HTTP 503; "
        "check the registry and run again"
    )
    assert len([seen for seen in proxy.seen if seen[0] == "HEAD"]) == mi.REGISTRY_ATTEMPTS


def test_a_manifest_read_follows_a_redirect(upstream, docker_env):
    digest = upstream.push_image("redirected", "v1", label=uuid.uuid4().hex)

    def fault(method, path, attempt):
        if method == "GET" and "/manifests/" in path:
            return 307, {"Location": f"http://{upstream.host}{path}"}, b""
        return None

    proxy = Proxy(f"http://{upstream.host}", fault=fault).start()
    try:
        manifest = mi.RegistryClient(dict(os.environ)).get_manifest(proxied(proxy, "redirected"), digest)
    finally:
        proxy.stop()
    assert manifest.digest == digest and sha256(manifest.data) == digest


def test_a_manifest_changed_on_the_way_is_refused_and_nothing_is_written(
    upstream, docker_env, tmp_path, monkeypatch, capsys
):
    digest = upstream.push_image(LEAF, None, layers=[uuid.uuid4().bytes])

    def tamper(path, body):
        return body.replace(b'"schemaVersion": 2', b'"schemaVersion":  2') if "/manifests/" in path else body

    proxy = Proxy(f"http://{upstream.host}", tamper=tamper).start()
    try:
        root = fake_tree.make_tree(tmp_path / "repo", f"{proxy.host}/iree-oss", GRAPH, {LEAF: digest})
        monkeypatch.chdir(root)
        code = mi.main(
            ["--registry", f"{proxy.host}/iree-oss", "--image", LEAF, "--promote", "--tag", "tampered"]
        )
    finally:
        proxy.stop()
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"{proxy.host} answered {proxy.host}/iree-oss/{LEAF}@{digest} with bytes whose sha256 is "
    )
    assert upstream.digest(LEAF, "tampered") is None


def test_a_registry_that_answers_another_digest_for_the_put_fails_the_promotion(
    upstream, docker_env, tmp_path, monkeypatch, capsys
):
    digest = upstream.push_image(LEAF, None, layers=[uuid.uuid4().bytes])
    other = "sha256:" + "d" * 64

    def answer_headers(method, path, headers):
        return {**headers, "Docker-Content-Digest": other} if method == "PUT" else headers

    proxy = Proxy(f"http://{upstream.host}", answer_headers=answer_headers).start()
    try:
        root = fake_tree.make_tree(tmp_path / "repo", f"{proxy.host}/iree-oss", GRAPH, {LEAF: digest})
        monkeypatch.chdir(root)
        code = mi.main(
            ["--registry", f"{proxy.host}/iree-oss", "--image", LEAF, "--promote", "--tag", "other"]
        )
    finally:
        proxy.stop()
    assert code == 1
    assert capsys.readouterr().err == (
        f"{proxy.host} answered the PUT of {proxy.host}/iree-oss/{LEAF}:other with the digest {other}, not the "
        f"pinned {digest}; it rewrote the manifest: run --verify_pinned to see what it serves\n"
    )


def test_a_redirect_keeps_the_credentials_on_the_same_host_and_drops_them_elsewhere(
    basic_registry, authority, docker_env
):
    digest = basic_registry.push_image("moved", "v1", label=uuid.uuid4().hex)
    context = ssl.create_default_context(cafile=str(authority.path))
    upstream = f"https://{basic_registry.host}"
    # A "blob store" on another host: it records what the client sends and reaches
    # the registry with credentials of its own, as a signed URL would.
    store = Proxy(upstream, context=context, authorization=basic("alice", PASSWORD)).start()

    def fault(method, path, attempt):
        if method == "GET" and "/manifests/" in path and "hop" not in path:
            return 307, {"Location": f"{path}?hop=same-host"}, b""
        if method == "GET" and "hop=same-host" in path:
            return 307, {"Location": f"http://{store.host}{path.split('?')[0]}"}, b""
        return None

    front = Proxy(upstream, fault=fault, context=context).start()
    try:
        write_config(docker_env, {"auths": {front.host: auth_entry("alice", PASSWORD)}})
        manifest = mi.RegistryClient(dict(os.environ)).get_manifest(f"{front.host}/iree-oss/moved", digest)
    finally:
        front.stop()
        store.stop()
    assert manifest.digest == digest
    redirected = [(path, authorization) for path, authorization in front.authorizations if "hop=" in path]
    assert redirected == [(f"/v2/iree-oss/moved/manifests/{digest}?hop=same-host", basic("alice", PASSWORD))]
    assert store.authorizations == [(f"/v2/iree-oss/moved/manifests/{digest}", None)]


def test_a_registry_that_does_not_answer_in_time_is_given_up_after_the_bounded_attempts(
    upstream, docker_env, monkeypatch
):
    monkeypatch.setattr(mi, "REGISTRY_TIMEOUT", 0.5)
    monkeypatch.setattr(mi, "RETRY_AFTER_MAX", 0.0)

    def fault(method, path, attempt):
        if "/manifests/" in path:
            time.sleep(1.5)
            return 200, {}, b""
        return None

    proxy = Proxy(f"http://{upstream.host}", fault=fault).start()
    try:
        client = mi.RegistryClient(dict(os.environ))
        with pytest.raises(mi.RegistryError) as error:
            client.served_digest(proxied(proxy, "slow"), "v1")
        asked = len([path for path, _ in proxy.authorizations if "/manifests/" in path])
    finally:
        proxy.stop()
    assert str(error.value) == (
        f"cannot reach the registry {proxy.host}: timed out; check that it is up and that --registry is right"
    )
    assert asked == mi.REGISTRY_ATTEMPTS


def test_a_registry_gone_mid_run_is_one_line_naming_it(upstream, docker_env):
    digest = upstream.push_image("gone", "v1", label=uuid.uuid4().hex)
    proxy = Proxy(f"http://{upstream.host}").start()
    client = mi.RegistryClient(dict(os.environ))
    assert client.served_digest(proxied(proxy, "gone"), "v1") == digest
    proxy.stop()
    with pytest.raises(mi.RegistryError) as error:
        client.get_manifest(proxied(proxy, "gone"), digest)
    assert str(error.value) == (
        f"cannot reach the registry {proxy.host}: Connection refused; check that it is up and that "
        "--registry is right"
    )


def test_a_client_certificate_in_certs_d_is_sent_when_the_registry_asks_for_one(
    registry_binary, authority, docker_env, tmp_path
):
    cert, key = authority.issue("mtls-registry")
    client_cert, client_key = authority.issue("client", ips=(), dns=("client.example.com",))
    with running(
        tmp_path / "mtls",
        tls=(cert, key, authority.path),
        auth="",
        access_log=True,
        client_cas=authority.path,
    ) as server:
        url = f"{server.url}/{LEAF}"
        authority.trust_in(docker_env["certs.d"], server.host)
        with pytest.raises(mi.RegistryError) as error:
            mi.RegistryClient(dict(os.environ)).served_digest(url, "latest")
        assert str(error.value).startswith(f"cannot reach the registry {server.host}: ") or str(
            error.value
        ).startswith(f"TLS with {server.host} failed: ")
        folder = docker_env["certs.d"] / server.host
        (folder / "client.cert").write_bytes(client_cert.read_bytes())
        (folder / "client.key").write_bytes(client_key.read_bytes())
        assert mi.RegistryClient(dict(os.environ)).served_digest(url, "latest") is None  # asked, and answered
        assert ("HEAD", f"/v2/iree-oss/{LEAF}/manifests/latest", 404) in [
            request[:3] for request in server.requests(agent=mi.USER_AGENT)
        ]


def test_a_registry_that_sends_no_docker_content_digest_is_answered_by_the_bytes(upstream, docker_env):
    digest = upstream.push_image("headerless", "v1", label=uuid.uuid4().hex)

    def answer_headers(method, path, headers):
        return {name: value for name, value in headers.items() if name.lower() != "docker-content-digest"}

    proxy = Proxy(f"http://{upstream.host}", answer_headers=answer_headers).start()
    try:
        client = mi.RegistryClient(dict(os.environ))
        assert client.served_digest(proxied(proxy, "headerless"), "v1") == digest
        manifest = client.get_manifest(proxied(proxy, "headerless"), digest)
        assert client.put_manifest(proxied(proxy, "headerless"), "copied", manifest) == digest
    finally:
        proxy.stop()
    assert upstream.digest("headerless", "copied") == digest
    # Each question without the header became a GET of the manifest, whose bytes were hashed.
    assert [seen[0] for seen in proxy.seen if "/manifests/" in seen[1]] == [
        "HEAD",
        "GET",
        "GET",
        "PUT",
        "HEAD",
        "GET",
    ]
