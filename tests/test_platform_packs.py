"""Packs (folder and demisto-sdk zip), `xsoar-local install`, and the on-demand `samples` and `test` commands."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import ECHO_PACK, build_pack_zip, run_cli, start_platform, write_config

ECHO = {"name": "echo", "integration": "Echo Webhook"}


def test_a_zip_pack_installs_and_serves_like_the_folder(tmp_path: Path) -> None:
    """Given a zip as demisto-sdk zip-packs makes it (unified YAML, import lines stripped), when installed,
    then the config lists it and an instance of it creates incidents through the reroute like the folder's."""
    pack_zip = build_pack_zip(ECHO_PACK, tmp_path / "EchoWebhook.zip")
    with zipfile.ZipFile(pack_zip) as archive:
        unified = yaml.safe_load(archive.read("Integrations/integration-EchoWebhook.yml"))
    assert "import demistomock" not in unified["script"]["script"]
    config = write_config(tmp_path, [ECHO], packs=[])

    installed = run_cli("install", pack_zip, "--config", config)

    assert installed.returncode == 0, installed.stderr
    assert "installed pack EchoWebhook (Echo Webhook)" in installed.stdout
    assert yaml.safe_load(config.read_text())["packs"] == ["data/packs/EchoWebhook"]
    assert (tmp_path / "data/packs/EchoWebhook/Integrations/integration-EchoWebhook.yml").is_file()

    platform = start_platform(config)
    try:
        response = httpx.post(f"{platform.url}/instance/execute/echo/from-zip?a=1", json={"name": "zip event"})
        assert response.status_code == 200
        assert response.json()[0]["name"] == "zip event"
        assert json.loads(response.json()[0]["rawJSON"])["path"] == "/from-zip"
    finally:
        platform.stop()


def test_installing_a_folder_keeps_the_config_comments_and_replaces_an_earlier_install(tmp_path: Path) -> None:
    config = tmp_path / "xsoar-local.yaml"
    config.write_text(
        "# my platform\n"
        "server:\n  port: 18999  # keep me\n  data_dir: data\n"
        "packs:\n  - old/EchoWebhook\n"
        "instances: []\n"
    )

    first = run_cli("install", ECHO_PACK, "--config", config)
    second = run_cli("install", build_pack_zip(ECHO_PACK, tmp_path / "EchoWebhook.zip"), "--config", config)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    text = config.read_text()
    assert "# my platform" in text
    assert "# keep me" in text
    assert yaml.safe_load(text)["packs"] == ["data/packs/EchoWebhook"]
    assert (tmp_path / "data/packs/EchoWebhook/Integrations/integration-EchoWebhook.yml").is_file()
    assert not (tmp_path / "data/packs/EchoWebhook/Integrations/EchoWebhook").exists()


def test_installing_something_that_is_not_a_pack_is_refused(tmp_path: Path) -> None:
    (tmp_path / "not-a-pack").mkdir()
    config = write_config(tmp_path, [], packs=[])

    result = run_cli("install", tmp_path / "not-a-pack", "--config", config)

    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "holds no integration" in result.stderr


@pytest.mark.parametrize("pack_id", ["../../victim", "..", "a/b", ".hidden", "with space"])
def test_a_zip_whose_pack_id_is_not_a_plain_name_is_refused(tmp_path: Path, pack_id: str) -> None:
    """Given a zip whose metadata.json id would lead outside the packs folder, when installed, then it is
    refused in one line and nothing outside the packs folder is touched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    original = build_pack_zip(ECHO_PACK, tmp_path / "EchoWebhook.zip")
    pack_zip = tmp_path / "Evil.zip"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(pack_zip, "w") as archive:
        for name in source.namelist():
            data = json.dumps({"id": pack_id}).encode() if name == "metadata.json" else source.read(name)
            archive.writestr(name, data)
    # The packs folder is <tmp_path>/data/packs, so "../../victim" is <tmp_path>/victim.
    config = write_config(tmp_path, [], packs=[])

    result = run_cli("install", pack_zip, "--config", config)

    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "cannot name a folder" in result.stderr
    assert (victim / "keep.txt").read_text() == "keep"
    assert yaml.safe_load(config.read_text())["packs"] == []


def test_samples_returns_the_events_stored_for_mapping(tmp_path: Path) -> None:
    """Given store_samples on and two events posted, when `xsoar-local samples` runs fetch-incidents, then it
    prints those events as incidents."""
    config = write_config(tmp_path, [{**ECHO, "params": {"store_samples": True}}])
    platform = start_platform(config)
    try:
        for name in ("sample one", "sample two"):
            assert httpx.post(f"{platform.url}/instance/execute/echo", json={"name": name}).status_code == 200
    finally:
        platform.stop()

    result = run_cli("samples", "echo", "--config", config)

    assert result.returncode == 0, result.stderr
    assert [item["name"] for item in json.loads(result.stdout)] == ["sample one", "sample two"]


def test_test_reports_ok_or_the_problem(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        [
            ECHO,
            {"name": "bad-token", "integration": "Echo Webhook", "params": {"token": "bad"}},
            {"name": "bad-param", "integration": "Echo Webhook", "params": {"store_samples": "perhaps"}},
        ],
    )

    ok = run_cli("test", "echo", "--config", config)
    bad_token = run_cli("test", "bad-token", "--config", config)
    bad_param = run_cli("test", "bad-param", "--config", config)
    unknown = run_cli("test", "nosuch", "--config", config)

    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    assert bad_token.returncode != 0
    assert "instance 'bad-token': test-module failed" in bad_token.stderr
    assert "token 'bad' is not accepted" in bad_token.stderr
    assert bad_param.returncode != 0
    assert "param 'store_samples'" in bad_param.stderr
    assert "no instance named 'nosuch'" in unknown.stderr
    for result in (bad_token, bad_param, unknown):
        assert result.stderr.strip().count("\n") == 0, result.stderr
