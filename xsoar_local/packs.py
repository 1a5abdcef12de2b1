"""Packs and the integrations they hold, read from a pack folder or from a `demisto-sdk zip-packs` zip.

A pack folder keeps each integration split (`Integrations/<Name>/<Name>.yml` beside `<Name>.py`); the zip holds
the unified YAML (`Integrations/integration-<Name>.yml`) with the script text in `script.script`. Both give the
same `Integration`.

A pack is read, and installed (`copy_pack`), within the bounds of `xsoar_local.bounds`: entries, bytes per file and
in all (counted from what is really read or decompressed), a zip entry's compression ratio, YAML and JSON file sizes,
YAML aliases and nesting (`xsoar_local.safe_yaml`). Nothing is followed out of a pack: a zip's symlink entries, a
folder's links to folders, links that lead outside the pack or nowhere, and special files are refused, naming the
entry; a link to a file inside the pack is read, and installed, as that file's content.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from xsoar_local import api_modules, bounds, safe_yaml
from xsoar_local.bounds import bound_name, size_text
from xsoar_local.errors import PackError

# `script.script` of a split integration: the code lives in the `.py` beside the YAML.
_SPLIT_SCRIPT_MARKERS = ("", "-")

# An integration YAML inside a pack: `Integrations/<Name>/<Name>.yml` (split) or `Integrations/<file>.yml`
# (unified), optionally under one top-level folder (a zipped pack folder).
_INTEGRATION_YML = re.compile(r"^(?:[^/]+/)?Integrations/(?:[^/]+/)?[^/]+\.ya?ml$")

# Caches that tools write into a pack folder: not part of the pack, neither read nor installed.
_NOT_PACK_FILES = re.compile(r"^(?:__pycache__|\.pytest_cache|\.mypy_cache|.*\.pyc)$")

_CHUNK = 64 * bounds.KIB
# A central directory record is 46 bytes plus its name and extra fields: 1 KiB is more than any real entry needs.
_DIRECTORY_BYTES_PER_ENTRY = bounds.KIB
_LEAVE_OUT = "leave out of the pack what the platform does not need (test data, caches, build output)"


@dataclass(frozen=True)
class ParamSpec:
    """One entry of an integration's `configuration`."""

    name: str
    display: str
    type: int
    required: bool
    default: Any
    hidden: bool
    options: tuple[str, ...]


@dataclass(frozen=True)
class Integration:
    """What the platform needs from an integration YAML to configure and run an instance of it."""

    id: str
    name: str
    display: str
    params: tuple[ParamSpec, ...]
    script_type: str
    long_running: bool
    long_running_port: bool
    is_fetch: bool
    is_fetch_samples: bool
    script: str
    script_path: str
    pack_id: str
    # `script.dockerimage` (`repo:tag`): the image the platform runs the integration in; None if the YAML names none.
    docker_image: str | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((spec for spec in self.params if spec.name == name), None)

    def answers_to(self, name: str) -> bool:
        return name in (self.id, self.name, self.display)


@dataclass(frozen=True)
class Pack:
    id: str
    path: Path
    integrations: tuple[Integration, ...]


@dataclass(frozen=True)
class _Entry:
    """A file or folder of a pack (a folder's name ends with `/`), with its uncompressed size as listed."""

    name: str
    size: int = 0
    # A pack folder's file to read: the file itself, or, for a link inside the pack, the file it leads to.
    source: Path | None = None
    info: zipfile.ZipInfo | None = None

    @property
    def is_folder(self) -> bool:
        return self.name.endswith("/")


class _PackFiles:
    """Read-only view of a pack's files, by POSIX path relative to the pack root, for a folder or a zip; listed and
    read within the bounds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_file():
            self._zip = _open_zip(path)
            try:
                entries = _zip_entries(path, self._zip)
            except BaseException:
                self._zip.close()
                raise
        else:
            entries = _folder_entries(path)
        self._entries = {entry.name: entry for entry in entries}

    @property
    def kind(self) -> str:
        return "pack zip" if self.is_zip else "pack folder"

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def names(self) -> list[str]:
        return sorted(name for name, entry in self._entries.items() if not entry.is_folder)

    def exists(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and not entry.is_folder

    def read_bytes(self, name: str, bound: str = "MAX_PACK_FILE_BYTES") -> bytes:
        """The bytes of file `name`, refused past the bound called `bound` (a name in `xsoar_local.bounds`)."""
        limit: int = getattr(bounds, bound)
        entry = self._entries[name]
        if entry.size > limit:
            raise _over_size(f"{self.location(name)} is", entry.size, bound)
        data = bytearray()
        for chunk in self._chunks(entry):
            data += chunk
            if len(data) > limit:
                raise _over_size(f"{self.location(name)} is at least", len(data), bound)
        return bytes(data)

    def read_text(self, name: str, bound: str = "MAX_PACK_FILE_BYTES") -> str:
        return self.read_bytes(name, bound).decode("utf-8")

    def copy_to(self, folder: Path) -> None:
        """Write every file and folder of the pack into `folder` (which exists), counting what is really written."""
        root = folder.resolve()
        total = 0
        for entry in sorted(self._entries.values(), key=lambda item: item.name):
            target = (root / entry.name).resolve()
            if not target.is_relative_to(root):
                raise PackError(f"{self.kind} {str(self.path)!r} has an entry outside its folder: {entry.name!r}")
            try:
                if entry.is_folder:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with target.open("xb") as out:
                    for chunk in self._chunks(entry):
                        written += len(chunk)
                        total += len(chunk)
                        if written > bounds.MAX_PACK_FILE_BYTES:
                            where = f"{self.location(entry.name)} is at least"
                            raise _over_size(where, written, "MAX_PACK_FILE_BYTES")
                        if total > bounds.MAX_PACK_BYTES:
                            raise _over_size(f"{self.kind} {str(self.path)!r} holds at least", total, "MAX_PACK_BYTES")
                        out.write(chunk)
                if entry.source is not None:
                    shutil.copystat(entry.source, target)
            except OSError as exc:
                raise PackError(
                    f"{self.kind} {str(self.path)!r}: {entry.name!r} cannot be written to {folder}:"
                    f" {exc.strerror or exc}"
                ) from exc

    def location(self, name: str) -> str:
        """Where a file is, for messages and tracebacks."""
        return f"{self.path}!/{name}" if self._zip is not None else str(self.path / name)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def _chunks(self, entry: _Entry) -> Iterator[bytes]:
        if entry.info is not None and self._zip is not None:
            return self._zip_chunks(self._zip, entry.info)
        assert entry.source is not None
        return _file_chunks(self.path, entry.name, entry.source)

    def _zip_chunks(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
        """The entry's bytes as they are decompressed; a ratio past MAX_COMPRESSION_RATIO stops it (zipfile already
        stops at the size the directory names, and its CRC check refuses an entry that says less than it holds)."""
        read = 0
        try:
            stream = archive.open(info)
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile, ValueError) as exc:
            raise self._unreadable(info.filename, exc) from exc
        with stream:
            while True:
                try:
                    chunk = stream.read(_CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    raise self._unreadable(info.filename, exc) from exc
                if not chunk:
                    return
                read += len(chunk)
                ratio_limit = bounds.MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
                if read > bounds.RATIO_CHECKED_AFTER and read > ratio_limit:
                    raise PackError(
                        f"pack zip {str(self.path)!r}: entry {info.filename!r} decompresses to more than"
                        f" {read // max(info.compress_size, 1):,} times its compressed size of"
                        f" {size_text(info.compress_size)}, over the bound of {bounds.MAX_COMPRESSION_RATIO}:1"
                        f" (MAX_COMPRESSION_RATIO), as a zip bomb does; fix: zip the pack's real files"
                        f" (`demisto-sdk zip-packs`), or raise {bound_name('MAX_COMPRESSION_RATIO')}"
                    )
                yield chunk

    def _unreadable(self, name: str, exc: BaseException) -> PackError:
        return PackError(
            f"pack zip {str(self.path)!r}: entry {name!r} cannot be read: {' '.join(str(exc).split())};"
            " fix: rebuild the zip (`demisto-sdk zip-packs`), unencrypted"
        )


def copy_pack(source: Path, folder: Path) -> None:
    """Copy the pack folder, or extract the pack zip, at `source` into the new folder `folder`, within the bounds;
    a link is never followed out of the pack. On an error `folder` may hold part of the pack: the caller removes it."""
    files = _PackFiles(source)
    try:
        folder.mkdir(parents=True)
        files.copy_to(folder)
    finally:
        files.close()


def _open_zip(path: Path) -> zipfile.ZipFile:
    # zipfile reads the whole central directory at once: its size is checked first, from the end record.
    directory = _zip_directory(path)
    if directory is not None:
        entries, directory_bytes = directory
        if entries > bounds.MAX_PACK_ENTRIES:
            raise _too_many_entries(f"pack zip {str(path)!r} holds {entries:,} entries")
        if directory_bytes > bounds.MAX_PACK_ENTRIES * _DIRECTORY_BYTES_PER_ENTRY:
            raise _too_many_entries(
                f"pack zip {str(path)!r} has a central directory of {size_text(directory_bytes)}, more than"
                f" {bounds.MAX_PACK_ENTRIES:,} entries take"
            )
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise PackError(f"pack {str(path)!r} cannot be read: {exc}") from exc
    if len(archive.infolist()) > bounds.MAX_PACK_ENTRIES:
        archive.close()
        raise _too_many_entries(f"pack zip {str(path)!r} holds more than {bounds.MAX_PACK_ENTRIES:,} entries")
    return archive


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """(entries, bytes) of the zip's central directory, as its end record (or zip64 end record) says; None when
    there is none (zipfile then says what is wrong)."""
    end_size, locator_size, zip64_size = 22, 20, 56
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(size - end_size - 0xFFFF, 0)
        file.seek(start)
        tail = file.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < end_size:
            return None
        *_, entries, directory_bytes, _, _ = struct.unpack("<4s4H2LH", tail[at : at + end_size])
        end_record = start + at
        if end_record >= locator_size + zip64_size:
            file.seek(end_record - locator_size - zip64_size)
            zip64 = file.read(zip64_size + locator_size)
            if zip64[:4] == b"PK\x06\x06" and zip64[zip64_size : zip64_size + 4] == b"PK\x06\x07":
                fields = struct.unpack("<4sQ2H2L4Q", zip64[:zip64_size])
                entries, directory_bytes = max(entries, fields[7]), max(directory_bytes, fields[8])
    return entries, directory_bytes


def _zip_entries(path: Path, archive: zipfile.ZipFile) -> list[_Entry]:
    entries: list[_Entry] = []
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        name = info.filename
        if name in seen:
            raise PackError(f"pack zip {str(path)!r} holds {name!r} twice; fix: rebuild the zip")
        seen.add(name)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            try:
                target = repr(archive.open(info).read(bounds.KIB).decode("utf-8", "replace"))
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, ValueError):
                target = "a target that cannot be read"
            raise PackError(
                f"pack zip {str(path)!r}: entry {name!r} is a symlink (to {target}); a pack installs no links;"
                " fix: zip the file itself instead of the link (zip without --symlinks / -y)"
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise PackError(
                f"pack zip {str(path)!r}: entry {name!r} is not a regular file or folder (mode {kind:o});"
                " fix: leave it out of the zip"
            )
        if info.is_dir():
            entries.append(_Entry(name))
            continue
        total += info.file_size
        if info.file_size > bounds.MAX_PACK_FILE_BYTES:
            raise _over_size(
                f"pack zip {str(path)!r}: entry {name!r} is", info.file_size, "MAX_PACK_FILE_BYTES", " uncompressed"
            )
        if total > bounds.MAX_PACK_BYTES:
            raise _over_size(f"pack zip {str(path)!r} holds", total, "MAX_PACK_BYTES", " uncompressed")
        entries.append(_Entry(name, info.file_size, info=info))
    return entries


def _folder_entries(root: Path) -> list[_Entry]:
    """Every file and folder of the pack folder `root`, walked without following a link."""
    real_root = root.resolve()
    entries: list[_Entry] = []
    total = 0
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            with os.scandir(real_root / prefix) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as exc:
            raise PackError(f"pack folder {str(root)!r}: {prefix or '.'} cannot be listed: {exc.strerror}") from exc
        for item in items:
            if _NOT_PACK_FILES.match(item.name):
                continue
            if len(entries) >= bounds.MAX_PACK_ENTRIES:
                raise _too_many_entries(
                    f"pack folder {str(root)!r} holds more than {bounds.MAX_PACK_ENTRIES:,} files and folders"
                )
            name = prefix + item.name
            if item.is_symlink():
                entry = _linked_file(root, real_root, Path(item.path), name)
            elif item.is_dir(follow_symlinks=False):
                entries.append(_Entry(f"{name}/"))
                pending.append(f"{name}/")
                continue
            elif item.is_file(follow_symlinks=False):
                entry = _Entry(name, item.stat(follow_symlinks=False).st_size, source=Path(item.path))
            else:
                raise PackError(
                    f"pack folder {str(root)!r}: {name!r} is not a regular file, folder or link;"
                    " fix: remove it from the pack"
                )
            total += entry.size
            if entry.size > bounds.MAX_PACK_FILE_BYTES:
                raise _over_size(f"pack folder {str(root)!r}: {name!r} is", entry.size, "MAX_PACK_FILE_BYTES")
            if total > bounds.MAX_PACK_BYTES:
                raise _over_size(f"pack folder {str(root)!r} holds", total, "MAX_PACK_BYTES")
            entries.append(entry)
    return entries


def _linked_file(root: Path, real_root: Path, link: Path, name: str) -> _Entry:
    """The file a link of the pack folder leads to, when that is a regular file inside the pack."""
    where = f"pack folder {str(root)!r}: link {name!r} -> {os.readlink(link)!r}"
    try:
        target = link.resolve(strict=True)
        target_stat = target.stat()
    except (OSError, RuntimeError) as exc:
        raise PackError(
            f"{where} leads nowhere (a missing file or a loop); fix: replace the link with the file itself"
        ) from exc
    if not target.is_relative_to(real_root):
        raise PackError(
            f"{where} leads outside the pack, to {str(target)!r}, and a pack is never read through a link out of"
            " it; fix: copy the file into the pack instead of linking it"
        )
    if stat.S_ISDIR(target_stat.st_mode):
        raise PackError(
            f"{where} leads to a folder, and links to folders are refused (one to '.' would hold the pack inside"
            " itself without end); fix: replace the link with the folder's files"
        )
    if not stat.S_ISREG(target_stat.st_mode):
        raise PackError(f"{where} leads to {str(target)!r}, which is not a regular file; fix: remove the link")
    return _Entry(name, target_stat.st_size, source=target)


def _file_chunks(root: Path, name: str, source: Path) -> Iterator[bytes]:
    """The bytes of a pack folder's file, opened without following a link (a file swapped for one since the pack
    was listed is refused) and only if it is a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(source, flags)
    except OSError as exc:
        raise PackError(f"pack folder {str(root)!r}: {name!r} cannot be read: {exc.strerror}") from exc
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise PackError(f"pack folder {str(root)!r}: {name!r} is not a regular file; fix: remove it from the pack")
        while chunk := file.read(_CHUNK):
            yield chunk


def _too_many_entries(what: str) -> PackError:
    return PackError(
        f"{what}, over the bound of {bounds.MAX_PACK_ENTRIES:,} (MAX_PACK_ENTRIES); fix: {_LEAVE_OUT},"
        f" or raise {bound_name('MAX_PACK_ENTRIES')}"
    )


def _over_size(what: str, seen: int, bound: str, how: str = "") -> PackError:
    limit: int = getattr(bounds, bound)
    return PackError(
        f"{what} {size_text(seen)}{how}, over the bound of {size_text(limit)} ({bound}); fix: {_LEAVE_OUT},"
        f" or raise {bound_name(bound)}"
    )


def load_pack(path: str | Path) -> Pack:
    """Read every integration of the pack folder or zip at `path`."""
    path = Path(path)
    if not path.exists():
        raise PackError(f"pack {str(path)!r} does not exist; fix: give the path of a pack folder or a pack zip")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise PackError(f"pack {str(path)!r} is neither a folder nor a zip; fix: give a pack folder or a pack zip")
    try:
        files = _PackFiles(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackError(f"pack {str(path)!r} cannot be read: {exc}") from exc
    try:
        pack_id = _pack_id(files)
        documents = {name: _load_yaml(files, name) for name in files.names() if _INTEGRATION_YML.match(name)}
        integrations = tuple(
            _read_integration(files, name, data, pack_id) for name, data in documents.items() if _is_integration(data)
        )
    finally:
        files.close()
    return Pack(id=pack_id, path=path, integrations=integrations)


def find_integration(packs: list[Pack], name: str) -> tuple[Pack, Integration]:
    """The integration called `name` (its id, name or display), and its pack; one pack id must hold it."""
    found = [(pack, item) for pack in packs for item in pack.integrations if item.answers_to(name)]
    if not found:
        known = sorted({item.id for pack in packs for item in pack.integrations})
        raise PackError(
            f"integration {name!r} is in none of the packs ({', '.join(known) or 'no integrations'});"
            " fix: install its pack with `xsoar-local install <pack>` or correct the integration name"
        )
    pack_ids = sorted({pack.id for pack, _ in found})
    if len(pack_ids) > 1:
        raise PackError(
            f"integration {name!r} is in more than one pack ({', '.join(pack_ids)});"
            " fix: keep only one of those packs in the config's packs list"
        )
    return found[0]


def _pack_id(files: _PackFiles) -> str:
    # zip-packs writes the pack id into metadata.json; a pack folder is named after its id.
    for name in ("metadata.json", "pack_metadata.json"):
        if files.exists(name):
            data = files.read_bytes(name, "MAX_JSON_BYTES")
            try:
                pack_id = json.loads(data.decode("utf-8")).get("id")
            except (ValueError, AttributeError, RecursionError):
                pack_id = None
            if isinstance(pack_id, str) and pack_id:
                return pack_id
    return files.path.stem if files.path.is_file() else files.path.name


def _load_yaml(files: _PackFiles, name: str) -> Any:
    data = files.read_bytes(name, "MAX_YAML_BYTES")
    try:
        return safe_yaml.load(data.decode("utf-8"))
    except safe_yaml.YamlBoundError as exc:
        raise PackError(f"integration YAML {files.location(name)}: {exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PackError(f"integration YAML {files.location(name)} cannot be read: {_one_line(exc)}") from exc


def _is_integration(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("script"), dict) and "configuration" in data


def _read_integration(files: _PackFiles, name: str, data: dict[str, Any], pack_id: str) -> Integration:
    script_section: dict[str, Any] = data["script"]
    integration_id = str((data.get("commonfields") or {}).get("id") or data.get("name") or "")
    if not integration_id:
        raise PackError(f"integration YAML {files.location(name)} has no commonfields.id; fix: add one")
    script, script_path = _script_text(files, name, script_section)
    return Integration(
        id=integration_id,
        name=str(data.get("name") or integration_id),
        display=str(data.get("display") or data.get("name") or integration_id),
        params=tuple(_param_spec(files.location(name), item) for item in data.get("configuration") or []),
        script_type=str(script_section.get("type") or "python"),
        long_running=_flag(script_section.get("longRunning")),
        long_running_port=_flag(script_section.get("longRunningPort")),
        is_fetch=_flag(script_section.get("isfetch")),
        is_fetch_samples=_flag(script_section.get("isFetchSamples")),
        script=script,
        script_path=script_path,
        pack_id=pack_id,
        docker_image=_docker_image(script_section.get("dockerimage")),
    )


def _script_text(files: _PackFiles, yml_name: str, script_section: dict[str, Any]) -> tuple[str, str]:
    embedded = script_section.get("script")
    if isinstance(embedded, str) and embedded.strip() not in _SPLIT_SCRIPT_MARKERS:
        return embedded, f"{files.location(yml_name)}#script"
    yml = PurePosixPath(yml_name)
    for candidate in (yml.with_suffix(".py"), yml.parent / f"{yml.parent.name}.py"):
        if files.exists(str(candidate)):
            where = files.location(str(candidate))
            # The ApiModules a split script imports are put in place, as prepare-content does (a zip has none).
            folder = None if files.is_zip else api_modules.modules_folder(files.path)
            return api_modules.inline_api_modules(files.read_text(str(candidate)), where, folder), where
    raise PackError(
        f"integration YAML {files.location(yml_name)} has no script: script.script is empty and"
        f" {yml.with_suffix('.py').name} is missing; fix: put the script beside the YAML"
    )


def _param_spec(where: str, item: Any) -> ParamSpec:
    if not isinstance(item, dict) or not item.get("name"):
        raise PackError(f"integration YAML {where} has a configuration entry without a name: {item!r}")
    try:
        param_type = int(item.get("type", 0))
    except (TypeError, ValueError) as exc:
        raise PackError(f"integration YAML {where}: param {item['name']!r} has a non-numeric type") from exc
    return ParamSpec(
        name=str(item["name"]),
        display=str(item.get("display") or item["name"]),
        type=param_type,
        required=_flag(item.get("required")),
        default=item.get("defaultvalue"),
        hidden=_flag(item.get("hidden")),
        options=tuple(str(option) for option in item.get("options") or []),
    )


def _docker_image(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
