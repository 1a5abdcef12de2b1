"""The banner's `try:` line (xsoar_local/try_line.py): right for each instance's auth, with no secret in it.

Unit tests check each mode's command and where its variables' values are. End-to-end tests start the platform
with the real Generic Webhook pack, run each printed command in bash with the variables exported (curl gets 200
and the incident is created) and without them (refused), and show that where there is no line, the instance
indeed cannot be reached with one request.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from helpers import GENERIC_WEBHOOK_PACK, Platform, start_platform, write_config

from xsoar_local.config import ServerConfig, load_config
from xsoar_local.instances import Instance, resolve_instances
from xsoar_local.try_line import API_KEY, PASSWORD, SIGNING_SECRET, TOKEN, TryLine, try_line, why_no_try_line

pytestmark = pytest.mark.timeout(300)

INTEGRATION = "Generic Webhook"
# Secrets with characters the shell would expand or split if they were ever put in the command itself.
TOKEN_VALUE = 't0k\'en "$(id)" `id` $HOME!€'
PASSWORD_VALUE = "pa:ss w0rd '$USER' \\n!"
SIGNING_VALUE = "s3cr3t 'quoted' \"$PATH\" !x"
# Standard Webhooks: base64 of a key whose hex dump has repeated lines (od must not write `*` for them).
STANDARD_VALUE = "whsec_" + base64.b64encode(bytes(32) + b"tail key").decode()
API_KEY_VALUE = "k3y-$(echo pwned)-'x'"
ODD_USER = "al'ice $x!"
ODD_NAME = "odd name's $x!"
SENDER_VARIABLES = (TOKEN, PASSWORD, SIGNING_SECRET, API_KEY)
# Instances by name, the server settings and the config path, of a config no platform runs.
Offline = tuple[dict[str, Instance], ServerConfig, Path]


def generic_hmac(header: str, algorithm: str, encoding: str, prefix: str) -> dict[str, Any]:
    return {
        "signature_scheme": "Generic HMAC",
        "signature_secret": SIGNING_VALUE,
        "signature_header": header,
        "signature_algorithm": algorithm,
        "signature_encoding": encoding,
        "signature_prefix": prefix,
    }


def signed(scheme: str, secret: str = SIGNING_VALUE) -> dict[str, Any]:
    return {"signature_scheme": scheme, "signature_secret": secret}


TOKEN_AUTH = {"credentials": {"identifier": "_header:X-Webhook-Token", "password": TOKEN_VALUE}}
BASIC_AUTH = {"credentials": {"identifier": ODD_USER, "password": PASSWORD_VALUE}}

# name -> (params, the variables the line needs with their values); every one gets a working line.
WORKING: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "open": ({}, {}),
    "token": (TOKEN_AUTH, {TOKEN: TOKEN_VALUE}),
    "authorization-token": (
        {"credentials": {"identifier": "_header:Authorization", "password": TOKEN_VALUE}},
        {TOKEN: TOKEN_VALUE},
    ),
    "basic": (BASIC_AUTH, {PASSWORD: PASSWORD_VALUE}),
    "github": (signed("GitHub"), {SIGNING_SECRET: SIGNING_VALUE}),
    "slack": (signed("Slack"), {SIGNING_SECRET: SIGNING_VALUE}),
    "stripe": (signed("Stripe", "whsec_" + SIGNING_VALUE), {SIGNING_SECRET: "whsec_" + SIGNING_VALUE}),
    "standard-webhooks": (signed("Standard Webhooks", STANDARD_VALUE), {SIGNING_SECRET: STANDARD_VALUE}),
    "generic-hex": (generic_hmac("X-Signature", "sha1", "hex", "sha1="), {SIGNING_SECRET: SIGNING_VALUE}),
    "generic-base64": (
        generic_hmac("X-Sig", "sha512", "base64", "s!g $x '\"="),
        {SIGNING_SECRET: SIGNING_VALUE},
    ),
    "basic-and-slack": ({**BASIC_AUTH, **signed("Slack")}, {PASSWORD: PASSWORD_VALUE, SIGNING_SECRET: SIGNING_VALUE}),
    "private": (TOKEN_AUTH, {TOKEN: TOKEN_VALUE, API_KEY: API_KEY_VALUE}),
    "private-basic": (BASIC_AUTH, {PASSWORD: PASSWORD_VALUE, API_KEY: API_KEY_VALUE}),
    "private-x-api-key": (
        {"credentials": {"identifier": "_header:X-API-Key", "password": TOKEN_VALUE}},
        {TOKEN: TOKEN_VALUE, API_KEY: API_KEY_VALUE},
    ),
    ODD_NAME: (TOKEN_AUTH, {TOKEN: TOKEN_VALUE}),
}
PRIVATE = ("private", "private-basic", "private-x-api-key")


def tls_params() -> dict[str, Any]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    certificate = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    return {**TOKEN_AUTH, "certificate": certificate, "key": leaf.private_key_pem.bytes().decode()}


# name -> params of an instance with no line, and the reason's telling part.
NO_LINE: dict[str, tuple[dict[str, Any], str]] = {
    "https": (tls_params(), "HTTPS"),
    "elsewhere-only": ({**TOKEN_AUTH, "allowed_cidrs": "203.0.113.0/24, 2001:db8::/32"}, "allowed_cidrs"),
    "basic-and-authorization-hmac": (
        {**BASIC_AUTH, **generic_hmac("Authorization", "sha256", "hex", "")},
        "Authorization",
    ),
    "dropped-header": (
        {"credentials": {"identifier": "_header:X-Forwarded-Host", "password": TOKEN_VALUE}},
        "does not pass on",
    ),
}


def instance_entry(name: str, params: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    return {"name": name, "integration": INTEGRATION, "enabled": enabled, "params": params}


def server_config(private: tuple[str, ...]) -> dict[str, str]:
    return {"instance.execute.external": "true", **{f"instance.execute.external.{name}": "false" for name in private}}


def resolved(config_path: Path) -> tuple[dict[str, Instance], ServerConfig]:
    config = load_config(config_path)
    return {item.name: item for item in resolve_instances(config)}, config.server


def run(line: TryLine, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command in bash, with `variables` exported and none of the others (nor a proxy) inherited."""
    kept = {
        key: value for key, value in os.environ.items() if key not in SENDER_VARIABLES and "proxy" not in key.lower()
    }
    return subprocess.run(
        ["bash", "-c", line.command], env={**kept, **variables}, capture_output=True, text=True, timeout=60
    )


# Unit tests: the command for each mode, without a running platform.


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Offline:
    entries = [instance_entry(name, params) for name, (params, _) in {**WORKING, **NO_LINE}.items()]
    entries.append(instance_entry("disabled", TOKEN_AUTH, enabled=False))
    path = write_config(
        tmp_path_factory.mktemp("offline"),
        entries,
        packs=[GENERIC_WEBHOOK_PACK],
        port=8080,
        api_key=API_KEY_VALUE,
        config=server_config(PRIVATE),
    )
    instances, server = resolved(path)
    return instances, server, path


def offline_line(offline: Offline, name: str) -> TryLine | None:
    instances, server, path = offline
    return try_line(instances[name], server, "http://127.0.0.1:8080" + instances[name].webhook_path(), path)


def test_no_auth_is_a_plain_post(offline: Offline) -> None:
    line = offline_line(offline, "open")

    assert line == TryLine(
        "curl -sS --fail-with-body -X POST http://127.0.0.1:8080/instance/execute/open"
        ' -H \'Content-Type: application/json\' -d \'{"name": "Hello from curl", "severity": 1}\'',
        (),
    )


def test_an_ipv6_gateway_url_is_not_taken_for_a_curl_url_pattern(offline: Offline) -> None:
    instances, server, path = offline

    line = try_line(instances["open"], server, "http://[::1]:8080/instance/execute/open", path)

    assert line is not None
    assert line.command.startswith(
        "curl --globoff -sS --fail-with-body -X POST 'http://[::1]:8080/instance/execute/open'"
    )


def test_a_header_token_is_sent_from_its_variable(offline: Offline) -> None:
    line = offline_line(offline, "token")

    assert line is not None
    assert '-H "X-Webhook-Token: $WEBHOOK_TOKEN"' in line.command
    path = offline[2].resolve()
    assert line.variables == ((TOKEN, f"params.credentials.password of instance 'token' in {path}"),)


def test_basic_auth_names_the_user_and_takes_the_password_from_its_variable(
    offline: Offline,
) -> None:
    line = offline_line(offline, "basic")

    assert line is not None
    # The user name is printed (quoted for bash); the password is not.
    assert f'-u {shlex.quote(ODD_USER + ":")}"$WEBHOOK_PASSWORD"' in line.command
    assert line.variables == ((PASSWORD, f"params.credentials.password of instance 'basic' in {offline[2].resolve()}"),)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("github", ['-H "X-Hub-Signature-256: sha256=$SIG"', 'openssl dgst -sha256 -hmac "$WEBHOOK_SIGNING_SECRET"']),
        ("slack", ["TS=$(date +%s)", '-H "X-Slack-Request-Timestamp: $TS"', '-H "X-Slack-Signature: v0=$SIG"']),
        ("stripe", ["TS=$(date +%s)", '-H "Stripe-Signature: t=$TS,v1=$SIG"']),
        ("standard-webhooks", ['-H "webhook-id: msg_$TS"', '-H "webhook-signature: v1,$SIG"', "hexkey:"]),
        ("generic-hex", ['-H "X-Signature: sha1=$SIG"', "openssl dgst -sha1", "awk '{print $NF}'"]),
        ("generic-base64", ["-H 'X-Sig: s!g $x '\"'\"'\"='\"$SIG\"", "openssl dgst -sha512", "openssl base64 -A"]),
    ],
)
def test_a_signature_is_computed_in_the_line(offline: Offline, name: str, expected: list[str]) -> None:
    line = offline_line(offline, name)

    assert line is not None
    assert line.command.startswith('BODY=\'{"name": "Hello from curl", "severity": 1}\'; ')
    assert line.command.endswith('--data-binary "$BODY"')
    for part in expected:
        assert part in line.command
    assert line.variables == (
        (SIGNING_SECRET, f"params.signature_secret of instance {name!r} in {offline[2].resolve()}"),
    )


def test_a_non_external_instance_gets_the_api_key_where_the_instance_needs_no_header_of_its_own(
    offline: Offline,
) -> None:
    private, private_basic, private_x_api_key, public = (offline_line(offline, name) for name in (*PRIVATE, "token"))

    assert private is not None and private_basic is not None and private_x_api_key is not None and public is not None
    assert '-H "X-API-Key: $XSOAR_LOCAL_API_KEY"' in private.command
    assert '-H "X-API-Key: $XSOAR_LOCAL_API_KEY"' in private_basic.command
    # The instance's own token goes in X-API-Key: the gateway takes the key from Authorization instead.
    assert '-H "X-API-Key: $WEBHOOK_TOKEN"' in private_x_api_key.command
    assert '-H "Authorization: $XSOAR_LOCAL_API_KEY"' in private_x_api_key.command
    assert (API_KEY, f"server.api_key in {offline[2].resolve()}") in private.variables
    assert "XSOAR_LOCAL_API_KEY" not in public.command


def test_no_line_holds_a_secret(offline: Offline) -> None:
    for name in WORKING:
        line = offline_line(offline, name)
        assert line is not None, name
        for secret in (TOKEN_VALUE, PASSWORD_VALUE, SIGNING_VALUE, STANDARD_VALUE, API_KEY_VALUE):
            assert secret not in line.command, name
            assert secret not in json.dumps(line.variables), name


@pytest.mark.parametrize("name", [*NO_LINE, "disabled"])
def test_no_line_where_no_single_curl_can_work(offline: Offline, name: str) -> None:
    instances, server, path = offline
    url = "http://127.0.0.1:8080" + instances[name].webhook_path()

    assert try_line(instances[name], server, url, path) is None
    reason = why_no_try_line(instances[name], server, url, path)
    assert reason is not None
    assert (NO_LINE[name][1] if name in NO_LINE else "disabled") in reason


def test_no_line_for_a_non_external_instance_without_an_api_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [instance_entry("webhook", TOKEN_AUTH)],
        packs=[GENERIC_WEBHOOK_PACK],
        config=server_config(("webhook",)),
    )
    instances, server = resolved(path)
    url = "http://127.0.0.1:8080/instance/execute/webhook"

    assert try_line(instances["webhook"], server, url, path) is None
    assert "server.api_key" in (why_no_try_line(instances["webhook"], server, url, path) or "")


def test_allowed_cidrs_that_include_this_machine_keep_the_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [instance_entry("webhook", {"allowed_cidrs": "10.0.0.0/8\n127.0.0.0/8"})],
        packs=[GENERIC_WEBHOOK_PACK],
    )
    instances, server = resolved(path)

    line = try_line(instances["webhook"], server, "http://127.0.0.1:8080/instance/execute/webhook", path)
    elsewhere = try_line(instances["webhook"], server, "http://gateway.example:8080/instance/execute/webhook", path)

    assert line is not None and line.note == ""
    assert elsewhere is not None and "allowed_cidrs" in elsewhere.note


# End to end: the platform with the real pack, each line run in bash.


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    entries = [instance_entry(name, params) for name, (params, _) in {**WORKING, **NO_LINE}.items()]
    path = write_config(
        tmp_path_factory.mktemp("platform"),
        entries,
        packs=[GENERIC_WEBHOOK_PACK],
        api_key=API_KEY_VALUE,
        config=server_config(PRIVATE),
    )
    running = start_platform(path, timeout=180)
    try:
        yield running
    finally:
        running.stop()


def platform_line(platform: Platform, name: str) -> tuple[Instance, TryLine | None]:
    instances, server = resolved(platform.config_path)
    instance = instances[name]
    return instance, try_line(instance, server, platform.url + instance.webhook_path(), platform.config_path)


@pytest.mark.parametrize("name", list(WORKING))
def test_the_line_creates_an_incident_with_the_variables_exported(platform: Platform, name: str) -> None:
    _, line = platform_line(platform, name)
    assert line is not None
    assert {variable for variable, _ in line.variables} == set(WORKING[name][1])

    result = run(line, WORKING[name][1])

    assert result.returncode == 0, f"{line.command}\n{result.stdout}\n{result.stderr}"
    (created,) = json.loads(result.stdout)
    assert created["name"] == "Hello from curl"
    incidents = platform.client.get("/incidents")
    assert incidents.status_code == 200, incidents.text
    assert created["id"] in [item["id"] for item in incidents.json()]


@pytest.mark.parametrize("name", [name for name, (_, variables) in WORKING.items() if variables])
def test_the_line_is_refused_without_the_variables(platform: Platform, name: str) -> None:
    _, line = platform_line(platform, name)
    assert line is not None

    result = run(line, {})

    # --fail-with-body: an HTTP error exits 22 and shows the error's body.
    assert result.returncode == 22, f"{line.command}\n{result.stdout}\n{result.stderr}"
    assert json.loads(result.stdout)["error"] in (
        "unauthorized",
        "signature_missing",
        "signature_malformed",
        "signature_mismatch",
    )


@pytest.mark.parametrize("name", [name for name, (_, variables) in WORKING.items() if len(variables) > 1])
def test_each_variable_is_needed(platform: Platform, name: str) -> None:
    _, line = platform_line(platform, name)
    assert line is not None
    variables = WORKING[name][1]

    for missing in variables:
        result = run(line, {key: value for key, value in variables.items() if key != missing})
        assert result.returncode == 22, f"without {missing}: {result.stdout}\n{result.stderr}"


def test_where_there_is_no_line_the_instance_cannot_be_reached(platform: Platform) -> None:
    """Even with every secret right, one request does not get a 200 from these instances."""
    token = {"X-Webhook-Token": TOKEN_VALUE.encode()}
    event = {"name": "Hello from curl"}
    for name in NO_LINE:
        _, line = platform_line(platform, name)
        assert line is None, name

    def post(name: str, **kwargs: Any) -> httpx.Response:
        instance, _ = platform_line(platform, name)
        return httpx.post(platform.url + instance.webhook_path(), json=event, timeout=30, **kwargs)

    # The gateway speaks plain HTTP to an instance that serves HTTPS.
    assert post("https", headers=token).status_code in (502, 503)
    # The gateway's caller address (127.0.0.1) is not allowed.
    assert post("elsewhere-only", headers=token).status_code == 403
    # Basic auth and the Generic HMAC signature would both have to be the Authorization header.
    # (the Basic credentials are then read as the signature, which they are not).
    both = post("basic-and-authorization-hmac", auth=(ODD_USER, PASSWORD_VALUE))
    assert both.status_code == 401 and both.json()["error"] == "signature_malformed"
    # The gateway sets X-Forwarded-Host itself.
    dropped = post("dropped-header", headers={"X-Forwarded-Host": TOKEN_VALUE.encode()})
    assert dropped.status_code == 401


def test_a_non_external_instance_without_an_api_key_cannot_be_reached(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [instance_entry("webhook", TOKEN_AUTH)],
        packs=[GENERIC_WEBHOOK_PACK],
        config=server_config(("webhook",)),
    )
    running = start_platform(path, timeout=180)
    try:
        instances, server = resolved(path)
        url = running.url + instances["webhook"].webhook_path()
        assert try_line(instances["webhook"], server, url, path) is None

        response = httpx.post(url, headers={"X-Webhook-Token": TOKEN_VALUE.encode()}, json={"name": "x"}, timeout=30)

        assert response.status_code == 401
        assert "no server.api_key is set" in response.json()["detail"]
    finally:
        running.stop()


def test_the_headers_it_avoids_are_the_ones_the_gateway_drops() -> None:
    """try_line keeps its own copy (so the CLI need not import the web stack); it must match the gateway's."""
    from xsoar_local import gateway
    from xsoar_local import try_line as module

    assert {name.decode() for name in gateway._NOT_FORWARDED} == module._NOT_FORWARDED
