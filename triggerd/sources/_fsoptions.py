"""The options of a `type: filesystem` source, checked when the config is loaded (globs
compile, `rescan` and `poll` within bounds). The source itself: `triggerd.sources.filesystem`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from triggerd.plugin import Duration, ExpressionError, Strict, compile_glob

__all__ = ["DEFAULT_IGNORES", "FilesystemOptions", "Kind", "valid_globs"]

DEFAULT_IGNORES = ("*.tmp", "*.part", ".*", "*~", "*.swp", ".goutputstream-*")
"""Partial-write and editor files, matched against every component of a relative path."""
Kind = Literal["created", "modified", "moved", "deleted"]


def valid_globs(value: list[str]) -> list[str]:
    """`patterns` and `ignore` as a validator checks them (also the bucket source's)."""
    for pattern in value:
        try:
            compile_glob(pattern)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from exc
    return value


def _default_events() -> list[Kind]:
    return ["created", "modified", "moved"]


class FilesystemOptions(Strict):
    """Options of a `type: filesystem` source."""

    type: Literal["filesystem"]
    """Files landing or changing under local directories (inotify, or polling), reconciled by
    scans."""
    paths: list[str] = Field(min_length=1)
    """Roots to watch; globs are relative to each."""
    patterns: list[str] = Field(default_factory=lambda: ["**/*"])
    """A file is watched when its path relative to the root matches one of these."""
    ignore: list[str] = Field(default_factory=list)
    """Relative-path globs to skip, on top of the partial-write and editor files always skipped
    (`*.tmp`, `*.part`, `.*`, `*~`, `*.swp`, `.goutputstream-*`, in any path component)."""
    events: list[Kind] = Field(default_factory=_default_events, min_length=1)
    """The kinds to emit: created, modified, moved, deleted."""
    settle: Duration = timedelta(seconds=5)
    """Emit only once a file's size and mtime are unchanged this long."""
    fingerprint: Literal["sha256", "stat"] = "sha256"
    """sha256: the content (the same bytes again are a duplicate); stat: size, mtime and inode."""
    poll: Literal[False] | Duration = False
    """An interval to poll instead of inotify (NFS, CIFS, FUSE)."""
    scan_on_start: bool = True
    """Reconcile the tree against the file table at start: what changed while the daemon was
    down."""
    rescan: Duration = timedelta(minutes=10)
    """Reconcile the tree against the file table this often (and at once after an inotify
    overflow): finds what a lost notification missed."""

    @model_validator(mode="before")
    @classmethod
    def _no_urls(cls, data: Any) -> Any:
        """An object-store URL among `paths` (as in `paths: ["s3://bucket/prefix/"]`) is not a
        directory: it gets the one error that says which source watches it, not errors about
        this source's other options."""
        paths = data.get("paths") if isinstance(data, dict) else None
        for path in paths if isinstance(paths, list) else ():
            if isinstance(path, str) and "://" in path:
                raise ValueError(
                    f"paths: {path!r} is an object-store URL, not a directory: watch it with "
                    f"a source of `type: bucket` and `url: {path}` (it takes poll, patterns, "
                    "ignore, events, settle, and fingerprint etag or stat)")
        return data

    @field_validator("patterns", "ignore")
    @classmethod
    def _valid_globs(cls, value: list[str]) -> list[str]:
        return valid_globs(value)

    @field_validator("rescan")
    @classmethod
    def _valid_rescan(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("`rescan` must be at least 1s")
        return value

    @field_validator("poll")
    @classmethod
    def _valid_poll(cls, value: Literal[False] | timedelta) -> Literal[False] | timedelta:
        if value is not False and value < timedelta(milliseconds=100):
            raise ValueError("`poll` must be false or at least 100ms")
        return value
