"""xsoar-local puts ApiModules in place for pack folders the way `demisto-sdk prepare-content` does (issue 15, item 2):
each import replaced by the module's code in prepare-content's wrapper, nested imports too, from the ApiModules pack
beside the pack; a missing module, a link, a module that imports itself and a zip whose script still imports one are
refused with the cause and the fix; an installed copy holds the script with its modules in place and runs without
the ApiModules pack. The Generic Webhook's own split runs as a folder, as its zip and as prepare-content's unified
script in tests/test_webhook_e2e.py and tests/test_platform_generic_webhook.py."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import run_cli, write_config

from xsoar_local.api_modules import imported_modules, inline_api_modules, modules_folder
from xsoar_local.errors import PackError
from xsoar_local.packs import load_pack

INTEGRATION_YAML = """commonfields: {id: Split, version: -1}
name: Split
display: Split
category: Utilities
configuration: []
script:
  script: '-'
  type: python
  subtype: python3
  longRunning: true
"""


def split_pack(root: Path, script: str, modules: dict[str, str]) -> Path:
    """`root/Packs/Split` (one integration whose script is `script`) and `root/Packs/ApiModules` with `modules`."""
    folder = root / "Packs" / "Split" / "Integrations" / "Split"
    folder.mkdir(parents=True)
    (folder.parents[1] / "pack_metadata.json").write_text('{"name": "Split", "currentVersion": "1.0.0"}')
    (folder / "Split.yml").write_text(INTEGRATION_YAML)
    (folder / "Split.py").write_text(script)
    for name, code in modules.items():
        module = root / "Packs" / "ApiModules" / "Scripts" / name
        module.mkdir(parents=True)
        (module / f"{name}.py").write_text(code)
    return folder.parents[1]


def test_each_import_is_replaced_by_the_module_in_prepare_contents_wrapper(tmp_path: Path) -> None:
    script = "import demistomock as demisto\nfrom OuterApiModule import *  # noqa: E402\n\nprint(outer(), inner())\n"
    pack = split_pack(
        tmp_path,
        script,
        {
            "OuterApiModule": "from InnerApiModule import *\n\ndef outer():\n    return 'outer'\n",
            "InnerApiModule": "def inner():\n    return 'inner'\n",
        },
    )

    (integration,) = load_pack(pack).integrations

    assert integration.script == (
        "import demistomock as demisto\n"
        "\n### GENERATED CODE ###: from OuterApiModule import *  # noqa: E402\n"
        "# This code was inserted in place of an API module.\n"
        "register_module_line('OuterApiModule', 'start', __line__(), wrapper=-3)\n"
        "\n### GENERATED CODE ###: from InnerApiModule import *\n"
        "# This code was inserted in place of an API module.\n"
        "register_module_line('InnerApiModule', 'start', __line__(), wrapper=-3)\n"
        "def inner():\n    return 'inner'\n\n"
        "register_module_line('InnerApiModule', 'end', __line__(), wrapper=1)\n"
        "### END GENERATED CODE ###\n\ndef outer():\n    return 'outer'\n\n"
        "register_module_line('OuterApiModule', 'end', __line__(), wrapper=1)\n"
        "### END GENERATED CODE ###\n\nprint(outer(), inner())\n"
    )
    assert imported_modules(integration.script) == []  # in place: nothing is put in again
    assert inline_api_modules(integration.script, "again", None) == integration.script


def test_a_missing_module_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    pack = split_pack(tmp_path, "from AbsentApiModule import *\n", {})

    with pytest.raises(PackError) as refused:
        load_pack(pack)

    message = str(refused.value)
    assert "imports AbsentApiModule" in message and "AbsentApiModule/AbsentApiModule.py is missing" in message
    assert "fix: keep the ApiModules pack beside the pack" in message


def test_a_module_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("SECRET = 1\n")
    pack = split_pack(tmp_path, "from LinkedApiModule import *\n", {"LinkedApiModule": ""})
    module = modules_folder(pack) / "LinkedApiModule" / "LinkedApiModule.py"
    module.unlink()
    os.symlink(elsewhere, module)

    with pytest.raises(PackError, match=r"LinkedApiModule\.py is a link"):
        load_pack(pack)


def test_a_module_that_imports_itself_is_refused_instead_of_inlined_for_ever(tmp_path: Path) -> None:
    pack = split_pack(
        tmp_path,
        "from AApiModule import *\n",
        {"AApiModule": "from BApiModule import *\n", "BApiModule": '"""Use it as `from AApiModule import *`."""\n'},
    )

    with pytest.raises(PackError) as refused:
        load_pack(pack)

    message = str(refused.value)
    assert "AApiModule -> BApiModule -> AApiModule" in message
    assert "fix: remove the text `from AApiModule import *` from BApiModule.py" in message


def test_a_zip_whose_script_still_imports_a_module_is_refused_with_the_fix(tmp_path: Path) -> None:
    pack = split_pack(tmp_path, "from SomeApiModule import *\n", {"SomeApiModule": "X = 1\n"})
    pack_zip = tmp_path / "Split.zip"
    with zipfile.ZipFile(pack_zip, "w") as archive:
        for path in pack.rglob("*"):
            if path.is_file():
                archive.write(path, path.relative_to(pack).as_posix())

    with pytest.raises(PackError) as refused:
        load_pack(pack_zip)

    assert "a pack zip has no ApiModules beside it" in str(refused.value)
    assert "`demisto-sdk zip-packs` (or `make pack`) builds" in str(refused.value)


def test_the_installed_copy_holds_its_modules_and_loads_without_the_apimodules_pack(tmp_path: Path) -> None:
    pack = split_pack(
        tmp_path / "content",
        "from OneApiModule import *\n\nVALUE = one()\n",
        {"OneApiModule": "def one():\n    return 1\n"},
    )
    config = write_config(tmp_path, [], packs=[])

    installed = run_cli("install", pack, "--config", config)

    assert installed.returncode == 0, installed.stderr
    copy = tmp_path / "data" / "packs" / "Split"
    (original,) = load_pack(pack).integrations
    assert (copy / "Integrations" / "Split" / "Split.py").read_text() == original.script
    shutil.rmtree(tmp_path / "content" / "Packs" / "ApiModules")
    (integration,) = load_pack(copy).integrations
    assert integration.script == original.script
    assert "### GENERATED CODE ###: from OneApiModule import *" in integration.script
