"""What a pack, a YAML file or the config may hold: the bounds the platform checks while it reads or installs them.

Every bound is far above what a real pack needs (the Generic Webhook pack: 18 files, 355 KB; a large content-repo
pack: a few thousand files, tens of MB), and low enough that a hostile pack fails early with bounded memory, disk and
time: a zip bomb, a YAML alias bomb ("billion laughs"), a folder whose links loop. An error names the bound, the
value seen and the fix; raise a bound here if a real pack ever needs more.

Standard library only: `xsoar_local.images` uses it before any other environment exists.
"""

from __future__ import annotations

import os

KIB = 1024
MIB = 1024 * KIB

# Entries of one pack: files and folders of a pack folder, central directory records of a pack zip.
MAX_PACK_ENTRIES = 20_000
# One file of a pack, uncompressed: counted from the bytes really read or decompressed, not from a zip's header.
MAX_PACK_FILE_BYTES = 64 * MIB
# All files of a pack together, uncompressed, counted the same way.
MAX_PACK_BYTES = 512 * MIB
# Uncompressed to compressed size of one zip entry, checked once the entry has decompressed past
# RATIO_CHECKED_AFTER bytes (small files may compress far better). Text compresses about 3-20:1, deflate's limit is
# about 1030:1, which only runs of one byte reach: a zip bomb fails after at most 200 times its own size.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECKED_AFTER = 1 * MIB

# One YAML file read from a pack (a unified integration YAML holds the whole script: a few MB at most).
MAX_YAML_BYTES = 16 * MIB
# Nesting of a YAML document, aliases expanded (an integration YAML nests about 5 levels).
MAX_YAML_DEPTH = 64
# Nodes (mappings, lists, scalars) of a YAML document once every alias (`*name`) is expanded, and the characters of
# its scalars counted the same way. Without aliases they stay below the file's size (a large integration YAML has
# some 10,000 nodes); an alias bomb reaches them within a few hundred bytes and fails while it is composed, before
# anything is built from it.
MAX_YAML_NODES = 1_000_000
MAX_YAML_CHARS = 2 * MAX_YAML_BYTES
# pack_metadata.json, and metadata.json of a demisto-sdk zip (a few KB).
MAX_JSON_BYTES = 1 * MIB
# The platform's own config file.
MAX_CONFIG_BYTES = 1 * MIB


def size_text(count: int) -> str:
    """`count` bytes for a message: `64 MiB (67108864 bytes)`."""
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if count >= scale:
            return f"{count / scale:.4g} {unit} ({count} bytes)"
    return f"{count} bytes"


def bound_name(name: str) -> str:
    """Where a bound is set, for the fix of a message: `MAX_PACK_BYTES in xsoar_local/bounds.py`."""
    return f"{name} in xsoar_local/bounds.py"


def read_at_most(path: os.PathLike[str] | str, limit: int) -> bytes:
    """The file's first limit + 1 bytes: more than `limit` of them means the file is over the bound (OSError as
    open() raises it)."""
    with open(path, "rb") as file:
        return file.read(limit + 1)
