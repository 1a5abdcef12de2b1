"""ApiModules: the content repository's shared code (`Packs/ApiModules/Scripts/<Name>/<Name>.py`), put in place of
each `from <Name>ApiModule import *` line of an integration's script, as `demisto-sdk prepare-content` and
`zip-packs` do. A pack zip from those tools has its modules in place already; for a pack folder the platform does it
when it reads the pack, from the `ApiModules` pack beside it (the content layout: `<root>/Packs/<Pack>` and
`<root>/Packs/ApiModules`), and an installed copy of the folder holds the script with its modules in place.

A module may import another (it is put in wherever it is imported, as prepare-content does). A module file is read
within MAX_PACK_FILE_BYTES, and never through a link.
"""

from __future__ import annotations

import re
from pathlib import Path

from xsoar_local import bounds
from xsoar_local.bounds import bound_name, size_text
from xsoar_local.errors import PackError

# An import of an ApiModule as demisto-sdk finds it: anywhere in the text (a docstring too), with this one
# trailing comment taken along; each such text is replaced by the module's code, as prepare-content does. Except
# in the marker line of a module already in place (an installed copy of a pack folder holds its script so).
GENERATED_MARK = "### GENERATED CODE ###: "
API_MODULE_IMPORT = re.compile(r"(?<!### GENERATED CODE ###: )from ([\w\d]+ApiModule) import \*(?:  # noqa: E402)?")
# The wrapper prepare-content puts around a module's code (register_module_line is CommonServerPython's).
GENERATED = (
    "\n" + GENERATED_MARK + "{module_import}\n"
    "# This code was inserted in place of an API module.\n"
    "register_module_line('{name}', 'start', __line__(), wrapper=-3)\n"
    "{code}\n"
    "register_module_line('{name}', 'end', __line__(), wrapper=1)\n"
    "### END GENERATED CODE ###"
)


def modules_folder(pack_folder: Path) -> Path:
    """Where the ApiModules of the pack folder `pack_folder` are: the ApiModules pack beside it."""
    return pack_folder.parent / "ApiModules" / "Scripts"


def imported_modules(script: str) -> list[str]:
    """The ApiModules `script` imports, in order."""
    return [match[1] for match in API_MODULE_IMPORT.finditer(script)]


def inline_api_modules(script: str, where: str, folder: Path | None) -> str:
    """`script` (read from `where`) with each ApiModule import replaced by the module's code from `folder`, in
    prepare-content's wrapper (None: there is no ApiModules folder to take them from, as in a zip of a split pack).
    A module that imports itself, directly or through others, is refused (prepare-content would recurse for ever)."""
    return _inline(script, where, folder, ())


def _inline(script: str, where: str, folder: Path | None, importers: tuple[str, ...]) -> str:
    imports = {match.group(): match[1] for match in API_MODULE_IMPORT.finditer(script)}
    for module_import, name in imports.items():
        if name in importers:
            chain = " -> ".join((*importers, name))
            raise PackError(
                f"{where}: ApiModule {name} imports itself ({chain}), and demisto-sdk would inline it for ever;"
                f" fix: remove the text `{module_import}` from {importers[-1]}.py (a docstring or comment counts too)"
            )
        code = _inline(_module_code(name, where, folder), where, folder, (*importers, name))
        script = script.replace(module_import, GENERATED.format(module_import=module_import, name=name, code=code))
    return script


def _module_code(name: str, where: str, folder: Path | None) -> str:
    if folder is None:
        raise PackError(
            f"{where} imports {name}, and a pack zip has no ApiModules beside it; fix: install the zip"
            " `demisto-sdk zip-packs` (or `make pack`) builds, which holds the module in the script, or the pack folder"
        )
    path = folder / name / f"{name}.py"
    if path.is_symlink() or not path.is_file():
        what = "a link" if path.is_symlink() else "missing"
        raise PackError(
            f"{where} imports {name}, and {path} is {what}; fix: keep the ApiModules pack beside the pack"
            " (Packs/ApiModules/Scripts/<Name>/<Name>.py, the content layout) or install the zip `make pack` builds"
        )
    try:
        data = bounds.read_at_most(path, bounds.MAX_PACK_FILE_BYTES)
    except OSError as exc:
        raise PackError(f"{where} imports {name}, and {path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > bounds.MAX_PACK_FILE_BYTES:
        raise PackError(
            f"ApiModule {path} is over {size_text(bounds.MAX_PACK_FILE_BYTES)}; fix: raise"
            f" {bound_name('MAX_PACK_FILE_BYTES')} if it really is that large"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(f"ApiModule {path} is not UTF-8 text: {exc}") from exc
