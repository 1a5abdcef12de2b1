"""`xsoar-local install`: copy a pack folder, or extract a pack zip, into the platform's packs folder."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from xsoar_local.errors import PackError
from xsoar_local.packs import Pack, load_pack

_NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")


def install_pack(source: Path, packs_dir: Path) -> Pack:
    """Install the pack at `source` as `<packs_dir>/<pack id>`, replacing an earlier install of that pack."""
    pack = load_pack(source)
    if not pack.integrations:
        raise PackError(f"pack {str(source)!r} holds no integration (no Integrations/*.yml with a script section)")
    destination = packs_dir / pack.id
    if source.resolve() == destination.resolve():
        return pack
    packs_dir.mkdir(parents=True, exist_ok=True)
    staging = packs_dir / f".{pack.id}.installing"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if source.is_dir():
            shutil.copytree(source, staging, ignore=_NOT_COPIED)
        else:
            _extract(source, staging)
        # Swapped in whole: a running platform never reads a half-copied pack.
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_pack(destination)


def _extract(zip_path: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    root = folder.resolve()
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise PackError(f"pack zip {str(zip_path)!r} has an entry outside its folder: {name!r}")
        archive.extractall(folder)
