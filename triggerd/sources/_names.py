"""File names that are not valid UTF-8, delivered intact as data.

Linux names are bytes; Python hands them over as `str` with each undecodable byte mapped to a
lone surrogate (PEP 383, `os.fsdecode`). Such a string cannot go into JSON or an SQL text
column, so at the edges of the filesystem source:

- events show a readable form with each bad byte as `\\xNN` (`display`) in `subject` and the
  path fields of the payload, and carry the exact bytes in `payload.path_b64` (standard
  base64 of the absolute path) for a consumer that must open the file;
- the file table and fingerprints use `stored`, which is the name itself when it is valid
  UTF-8 and `b64:<urlsafe base64 of the bytes>` otherwise: reversible (`from_stored`) and
  distinct from every real name (stored paths are absolute, so they start with `/`; a
  fingerprint's relative part uses the same form, so `a\\xff` and a file literally named
  `a\\\\xff` never share a fingerprint).
"""

from __future__ import annotations

import base64
import os

_PREFIX = "b64:"


def is_text(name: str) -> bool:
    """True when `name` holds no undecodable byte (it is valid UTF-8)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display(name: str) -> str:
    """A readable form: undecodable bytes as `\\xNN`."""
    if is_text(name):
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def raw_b64(name: str) -> str:
    """The name's exact bytes, base64 (standard alphabet)."""
    return base64.b64encode(os.fsencode(name)).decode("ascii")


def stored(name: str) -> str:
    """The form kept in the store: the name, or `b64:` + its bytes when not valid UTF-8."""
    if is_text(name):
        return name
    return _PREFIX + base64.urlsafe_b64encode(os.fsencode(name)).decode("ascii")


def from_stored(value: str) -> str:
    """Invert `stored` (for absolute paths, which never start with `b64:`)."""
    if value.startswith(_PREFIX):
        return os.fsdecode(base64.urlsafe_b64decode(value[len(_PREFIX):]))
    return value
