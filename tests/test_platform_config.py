"""Config and param errors: `xsoar-local up` refuses to start, with one line naming the instance, param and fix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ECHO_PACK, LOOPBACK, copy_pack, free_port, run_cli, write_config

from xsoar_local import cli
from xsoar_local.config import REPOSITORY_PACK, load_config, write_default_config
from xsoar_local.instances import resolve_instances


def refused(config: Path) -> str:
    """The one-line error `xsoar-local up` exits with, before starting anything."""
    result = run_cli("up", "--config", config, timeout=30)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def echo(params: dict[str, Any], **instance: Any) -> list[dict[str, Any]]:
    return [{"name": "hook", "integration": "Echo Webhook", "params": params, **instance}]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"tokn": "x"}, ["unknown param 'tokn'", "did you mean 'token'?"]),
        ({"longRunningPort": "abc"}, ["param 'longRunningPort'", "port number", "fix:"]),
        ({"longRunningPort": 70000}, ["param 'longRunningPort'", "1-65535"]),
        ({"store_samples": "maybe"}, ["param 'store_samples'", "must be a boolean", "use true or false"]),
        ({"credentials": "admin:secret"}, ["param 'credentials'", "identifier", "password", "fix:"]),
        ({"credentials": {"identifier": "admin"}}, ["param 'credentials'", "{identifier: <username>"]),
        ({"mode": "loose"}, ["param 'mode'", "one of normal, strict"]),
        ({"token": ["a", "list"]}, ["param 'token'", "must be text"]),
    ],
)
def test_a_wrong_param_is_refused_with_the_instance_param_and_fix(
    tmp_path: Path, params: dict[str, Any], expected: list[str]
) -> None:
    message = refused(write_config(tmp_path, echo(params)))

    assert "instance 'hook'" in message
    for part in expected:
        assert part in message


def test_a_missing_required_param_is_refused(tmp_path: Path) -> None:
    """Given an integration whose token param is required, when an instance leaves it out, then up refuses."""

    def require_token(yml: dict[str, Any]) -> None:
        next(item for item in yml["configuration"] if item["name"] == "token")["required"] = True

    pack = copy_pack(ECHO_PACK, tmp_path / "StrictEcho", require_token)

    message = refused(write_config(tmp_path, echo({}), packs=[pack]))

    assert "instance 'hook'" in message
    assert "required param 'token'" in message
    assert "fix: add token: <value>" in message


def test_every_problem_is_reported_in_one_line(tmp_path: Path) -> None:
    instances = [*echo({"store_samples": "maybe"}), {"name": "two", "integration": "Echo Webhook", "params": {"x": 1}}]

    message = refused(write_config(tmp_path, instances))

    assert "param 'store_samples'" in message
    assert "instance 'two': unknown param 'x'" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"instances": [{"name": "a", "integration": "No Such Integration"}]}, "integration 'No Such Integration'"),
        ({"packs": ["does/not/exist"]}, "does/not/exist' does not exist"),
        ({"server": {"port": 8080, "api-key": "x"}}, "unknown key 'api-key' (fix: did you mean 'api_key'?)"),
        ({"server": {"port": "eighty"}}, "server.port must be a port number"),
        ({"instances": [{"name": "a", "integration": "Echo Webhook"}] * 2}, "instance 'a' is defined twice"),
        ({"instances": [{"name": "a/b", "integration": "Echo Webhook"}]}, "cannot contain '/'"),
        ({"instances": [{"name": "a", "integration": "Echo Webhook", "enabled": "yes please"}]}, "enabled must be"),
    ],
)
def test_a_wrong_config_is_refused(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    config = write_config(tmp_path, [])
    data = yaml.safe_load(config.read_text())
    data.update(change)
    config.write_text(yaml.safe_dump(data))

    assert expected in refused(config)


def test_invalid_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("server:\n  port: 8080\n instances: [\n")

    message = refused(config)

    assert "invalid YAML at line" in message


def test_two_instances_on_one_port_are_refused(tmp_path: Path) -> None:
    port = free_port()
    instances = [
        {"name": "a", "integration": "Echo Webhook", "params": {"longRunningPort": port}},
        {"name": "b", "integration": "Echo Webhook", "params": {"longRunningPort": port}},
    ]

    message = refused(write_config(tmp_path, instances))

    assert f"instance 'b': param 'longRunningPort': port {port} is also the listen port of instance 'a'" in message


def test_a_listen_port_taken_by_another_process_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        message = refused(write_config(tmp_path, echo({"longRunningPort": port})))

    assert f"instance 'hook': param 'longRunningPort': port {port} is already in use by another process" in message
    assert "fix:" in message


def test_a_gateway_port_taken_by_another_process_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        message = refused(write_config(tmp_path, echo({}), port=port))

    assert f"server.port {port}" in message
    assert "fix:" in message


def test_a_default_config_is_created_by_up_with_an_absolute_pack_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given no config file, when `up` loads it (from a folder outside the repository), then it writes the default
    serving this repository's Packs/GenericWebhook by an absolute path that exists, and the config loads."""
    monkeypatch.chdir(tmp_path)

    config = cli._load(Path("xsoar-local.yaml"), create=True)

    data = yaml.safe_load((tmp_path / "xsoar-local.yaml").read_text())
    (pack,) = data["packs"]
    assert Path(pack).is_absolute() and Path(pack) == REPOSITORY_PACK and Path(pack).is_dir()
    assert config.packs == (REPOSITORY_PACK,)
    (instance,) = data["instances"]
    assert instance["integration"] == "Generic Webhook"
    assert len(instance["params"]["credentials"]["password"]) >= 24
    assert data["server"]["config"]["instance.execute.external.webhook"] == "true"
    assert resolve_instances(config)[0].integration.id == "Generic Webhook"


def test_without_the_pack_the_default_config_serves_nothing_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "GenericWebhook"

    assert not write_default_config(tmp_path / "xsoar-local.yaml", pack=missing)

    config = load_config(tmp_path / "xsoar-local.yaml")
    assert (config.packs, config.instances) == ((), ())
    assert f"{missing} does not exist" in (tmp_path / "xsoar-local.yaml").read_text()


@pytest.mark.parametrize(
    "args", [["status"], ["status", "--json"], ["incidents"], ["samples", "webhook"], ["test", "webhook"]]
)
def test_read_only_commands_never_create_a_config(tmp_path: Path, args: list[str]) -> None:
    """Given a mistyped config path, when a read-only command runs, then it fails naming the path and the fix,
    and creates nothing."""
    result = run_cli(*args, "--config", "xsoar-locl.yaml", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "config file xsoar-locl.yaml does not exist" in result.stderr
    assert "fix: pass --config with the path of yours" in result.stderr
    assert "up --config xsoar-locl.yaml" in result.stderr
    assert list(tmp_path.iterdir()) == []
