"""`xsoar-local install`: copy a pack folder, or extract a pack zip, into the platform's packs folder."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from xsoar_local.api_modules import imported_modules
from xsoar_local.errors import PackError
from xsoar_local.packs import Pack, copy_pack, load_pack

# The pack id names the install folder: one plain path segment, never `.`, `..` or anything with a separator.
_PACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def install_pack(source: Path, packs_dir: Path) -> Pack:
    """Install the pack at `source` as `<packs_dir>/<pack id>`, replacing an earlier install of that pack."""
    pack = load_pack(source)
    if not pack.integrations:
        raise PackError(f"pack {str(source)!r} holds no integration (no Integrations/*.yml with a script section)")
    if not _PACK_ID.fullmatch(pack.id):
        raise PackError(
            f"pack {str(source)!r} has the id {pack.id!r}, which cannot name a folder;"
            " fix: give the pack an id of letters, digits, '_', '.' and '-' (in metadata.json or as its folder name)"
        )
    destination = packs_dir / pack.id
    if destination.resolve().parent != packs_dir.resolve():
        raise PackError(f"pack {str(source)!r}: its id {pack.id!r} leads outside the packs folder {str(packs_dir)!r}")
    if source.resolve() == destination.resolve():
        return pack
    packs_dir.mkdir(parents=True, exist_ok=True)
    # Copied into a folder of its own first, within the bounds of xsoar_local.bounds: a pack over one, or with a
    # link out of it, leaves nothing behind and an earlier install of it as it was.
    staging = Path(tempfile.mkdtemp(prefix=f".{pack.id}.", suffix=".installing", dir=packs_dir)) / pack.id
    try:
        copy_pack(source, staging)
        _put_api_modules_in_place(pack, source, staging)
        # Swapped in whole: a running platform never reads a half-copied pack.
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return load_pack(destination)


def _put_api_modules_in_place(pack: Pack, source: Path, copy: Path) -> None:
    """The installed copy of a pack folder holds each split script with its ApiModules in place (load_pack put them
    there, from the ApiModules pack beside the source), as a zip from zip-packs does: it runs without that pack."""
    if not source.is_dir():
        return
    for integration in pack.integrations:
        script_file = Path(integration.script_path)
        if not script_file.is_relative_to(source):
            continue  # the script is in the YAML
        target = copy / script_file.relative_to(source)
        if imported_modules(target.read_text(encoding="utf-8")):
            target.write_text(integration.script, encoding="utf-8")
