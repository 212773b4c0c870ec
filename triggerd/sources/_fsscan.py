"""What the filesystem source knows and how it looks: matching, the in-memory file index, the
reconcile walk and the settle look.

`walk` and `look` block (scandir, stat, hashing) and run in worker threads; they never touch
asyncio. `Known` is mutated on the event loop only; a walk thread reads it with single dict
lookups and C-level set copies, which are atomic under the GIL, and whatever changed meanwhile
is settled by looking again (a look compares with the index at that moment). Both take a
`halted` callable and raise `Halted` soon after it turns true (the source stopped), between
directories and between hashed chunks: nobody waits for their result any more.

Opening a landing file never blocks
    What a look reads is opened `O_NONBLOCK | O_NOFOLLOW | O_NOCTTY` and used only if `fstat`
    of the descriptor shows a regular file with the device and inode the look's `lstat` saw;
    the hash reads through that descriptor. A name is only a name: between the `lstat` and the
    `open` a rename can put a FIFO there (a blocking open waits for a writer forever), a socket,
    a device or a symlink. A non-regular file is the verdict "special" (the source skips and
    counts it); a symlink swapped in (ELOOP) or another regular file (other inode) is
    "changing": looked at again, by the rules for what is there then.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from triggerd.plugin import compile_any

Sig = tuple[int, int, int]  # size, mtime_ns, inode
OnDenied = Callable[[str, OSError], None]
Halt = Callable[[], bool]
CHUNK = 1 << 20
# O_NONBLOCK: a FIFO opens at once (a blocking open waits for a writer); O_NOFOLLOW: the name
# is not a symlink now; O_NOCTTY: a terminal swapped in never becomes the daemon's own
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_SIG = struct.Struct("<QqQ")
_local = threading.local()  # a look thread's read buffer (`_buffer`)
_ANY_PATH = frozenset({"**", "**/*"})  # globs that match every relative file path


@dataclass(eq=False)
class Root:
    path: str  # absolute, as configured (normalised)
    real: str = ""  # its realpath while present: symlinks must stay below it
    present: bool = False

    def rel(self, path: str) -> str | None:
        prefix = self.path.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else None


class Matcher:
    """`patterns` minus `ignore` (root-relative globs) minus the default ignores (any component)."""

    def __init__(self, patterns: Iterable[str], ignore: Iterable[str],
                 default_ignore: Iterable[str]) -> None:
        patterns = list(patterns)
        # each list is one regex (one fullmatch a path, not one per glob); `**` matches all
        self._patterns = None if _ANY_PATH & set(patterns) else compile_any(patterns)
        self._none = not patterns
        self._ignore = compile_any(list(ignore))
        self._default_ignore = compile_any(list(default_ignore))
        # the same globs as plain truth tests (`Glob.tester`): a call less each
        self._ignored_name = self._default_ignore.tester() if self._default_ignore else None
        self._ignored = self._ignore.tester() if self._ignore else None
        self._wanted = self._patterns.tester() if self._patterns else None

    def ignored_name(self, name: str) -> bool:
        return self._ignored_name is not None and self._ignored_name(name)

    def wanted(self, rel: str, *, names_checked: bool = False) -> bool:
        """True when the root-relative path `rel` is watched. `names_checked`: the walk
        already skipped ignored names on the way down, the file's own included."""
        ignored_name = self._ignored_name
        if not names_checked and ignored_name is not None:
            for part in rel.split("/"):
                if ignored_name(part):
                    return False
        if self._ignored is not None and self._ignored(rel):
            return False
        if self._wanted is None:
            return not self._none
        return self._wanted(rel)


class Known:
    """The file table in memory: path -> (size, mtime_ns, inode) packed in 24 bytes, and the
    known paths of each directory (so a walk finds what is gone below it without a pass over
    every file). ~100 bytes a file with its path; 100,000 files ~10 MB."""

    def __init__(self) -> None:
        self._sigs: dict[str, bytes] = {}
        self._by_dir: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sigs)

    def __contains__(self, path: object) -> bool:
        return path in self._sigs

    def packed(self, path: str) -> bytes | None:
        return self._sigs.get(path)

    def sig(self, path: str) -> Sig | None:
        packed = self._sigs.get(path)
        return None if packed is None else unpack(packed)

    def put(self, path: str, sig: Sig) -> None:
        if path not in self._sigs:
            self._by_dir.setdefault(os.path.dirname(path), set()).add(path)
        self._sigs[path] = pack(sig)

    def fill(self, rows: Iterable[tuple[str, int, int, int]],
             decode: Callable[[str], str]) -> None:
        """Add stored rows (path as stored, size, mtime_ns, inode) in bulk: the start-up load
        of 100,000 rows, a tight loop (a `put` per row took twice as long)."""
        sigs, by_dir, pk = self._sigs, self._by_dir, _SIG.pack
        for stored_path, size, mtime_ns, inode in rows:
            path = decode(stored_path)
            if path not in sigs:
                directory = path[:path.rfind("/")] or "/"  # os.path.dirname, absolute paths
                paths = by_dir.get(directory)
                if paths is None:
                    paths = by_dir[directory] = set()
                paths.add(path)
            sigs[path] = pk(size, mtime_ns, inode)

    def drop(self, path: str) -> None:
        if self._sigs.pop(path, None) is None:
            return
        directory = os.path.dirname(path)
        paths = self._by_dir.get(directory)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_dir[directory]

    def in_dir(self, directory: str) -> set[str]:
        """A copy of the known paths directly in `directory` (safe from a walk thread)."""
        return set(self._by_dir.get(directory, ()))

    def dirs_below(self, start: str) -> Iterator[str]:
        """Known directories at or below `start` (on the loop)."""
        below = start.rstrip("/") + "/"
        return (d for d in list(self._by_dir) if d == start or d.startswith(below))


def pack(sig: Sig) -> bytes:
    return _SIG.pack(*sig)


def unpack(packed: bytes) -> Sig:
    size, mtime_ns, inode = _SIG.unpack(packed)
    return (size, mtime_ns, inode)


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def through_link(directory: str, root: Root) -> bool:
    """Blocking: True when `directory` (at or below `root.path`) is, or lies below, a symlink
    below the root, i.e. its real path is not the root's real path plus its relative path."""
    rel = root.rel(directory)
    expected = root.real if rel is None else os.path.join(root.real, rel)
    return os.path.realpath(directory) != os.path.normpath(expected)


@dataclass
class Walked:
    changed: list[str] = field(default_factory=list)  # new, or (size, mtime, inode) differs
    gone: list[str] = field(default_factory=list)  # known, missing from a listed directory
    listed: set[str] = field(default_factory=set)  # directories read
    special: list[str] = field(default_factory=list)  # wanted names that are FIFOs, sockets...


class Halted(Exception):
    """The source stopped while a walk or a look was under way (see the module doc)."""


def _never() -> bool:
    return False


def walk(root: Root, start: str, matcher: Matcher, known: Known,
         on_denied: OnDenied, halted: Halt = _never) -> Walked | None:
    """Blocking: compare the wanted regular files below `start` with `known`, a directory at a
    time (memory stays flat however big the tree). None when the root itself is gone.
    Symlinked directories are not followed; symlinked files count only when they resolve
    inside the root. Wanted names that are FIFOs, sockets or devices are listed in `special`
    (the source counts them: one made in place has no close-write to be noticed by, and a
    user must see why "the file" never became an event)."""
    out = Walked()
    # A directory link reported as a directory (watchdog walks links) is not followed:
    # it may lead outside the root, or back into it and alias every file below.
    if start != root.path and through_link(start, root):
        return out
    stack = [start]
    while stack:
        if halted():
            raise Halted
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except FileNotFoundError:
            if directory == root.path:
                return None
            continue
        except OSError as exc:
            on_denied(directory, exc)
            continue
        out.listed.add(directory)
        here: set[str] = set()
        for entry in entries:
            if matcher.ignored_name(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                if entry.is_symlink():
                    if not inside(os.path.realpath(entry.path), root.real):
                        continue
                    st = os.stat(entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile, or a dangling link
            path = entry.path
            rel = root.rel(path)
            if not rel or not matcher.wanted(rel, names_checked=True):
                continue
            if not stat.S_ISREG(st.st_mode):
                if not stat.S_ISDIR(st.st_mode):  # (a symlink to a directory is not followed)
                    out.special.append(path)
                continue
            here.add(path)
            if known.packed(path) != pack((st.st_size, st.st_mtime_ns, st.st_ino)):
                out.changed.append(path)
        out.gone.extend(p for p in known.in_dir(directory) - here if root.rel(p))
    return out


@dataclass(frozen=True, slots=True)
class Look:
    verdict: Literal["gone", "same", "skip", "special", "changing", "settled"]
    sig: Sig | None = None
    content: str = ""  # the content/stat fingerprint of a settled file
    sha256: str | None = None
    mode: int = 0  # "special": the st_mode found where a regular file was expected


def look(path: str, root: Root, prev: Sig | None, known: Sig | None, now_ns: int,
         settle: float, by_content: bool, on_denied: OnDenied,
         linked: dict[str, bool] | None = None, halted: Halt = _never) -> Look:
    """Blocking: stat (and, `by_content`, hash) one file to see whether it has settled: its
    (size, mtime_ns, inode) equal `prev`, the previous look's, or, on a first look, its mtime
    is already `settle` old. `linked` remembers `through_link` per directory across one batch
    of looks (a realpath per file was a fifth of a look). A FIFO, socket or device (or one
    swapped in before the open) is "special"; see the module doc."""
    try:
        return _look(path, root, prev, known, now_ns, settle, by_content,
                     {} if linked is None else linked, halted)
    except FileNotFoundError:
        return Look("gone")
    except OSError as exc:
        on_denied(path, exc)
        return Look("skip")


def _sig(st: os.stat_result) -> Sig:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _not_a_file(mode: int) -> Look:
    """A directory now stands at the path: the file is gone (the directory is walked on its
    own notification). Anything else that is not a regular file is special."""
    return Look("gone") if stat.S_ISDIR(mode) else Look("special", mode=mode)


def _look(path: str, root: Root, prev: Sig | None, known: Sig | None, now_ns: int,
          settle: float, by_content: bool, linked: dict[str, bool], halted: Halt) -> Look:
    # A path through a symlinked directory (watchdog reports files below a directory link it
    # walked) is not the root's: skipped, as `walk` does not follow such links.
    directory = os.path.dirname(path)
    through = linked.get(directory)
    if through is None:
        through = linked[directory] = through_link(directory, root)
    if through:
        return Look("skip")
    target = path
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if not inside(target, root.real):
            return Look("skip")  # a symlink leading outside the root
        st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return _not_a_file(st.st_mode)
    sig = _sig(st)
    if sig == known:
        return Look("same", sig)
    if sig != prev and not (prev is None and now_ns - st.st_mtime_ns >= settle * 1e9):
        return Look("changing", sig)
    if not by_content:
        return Look("settled", sig, f"{sig[0]}:{sig[1]}:{sig[2]}")
    return _hash(target, st, halted)


def _buffer() -> memoryview:
    """This thread's read buffer: allocating (and zeroing) 1 MiB per hashed file was a large
    share of the throughput bench's time (bench/RESULTS.md, "Design figures")."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(CHUNK))
    return view


def _hash(path: str, st: os.stat_result, halted: Halt) -> Look:
    """Open `path` (the look's own name for the file, symlinks resolved) without blocking or
    following a link, check that it is the regular file `st` describes, and hash it through
    that descriptor."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink swapped in: looked at again, as a symlink
            return Look("changing")
        if exc.errno == errno.ENXIO:  # a socket (or a device without a driver) swapped in
            return Look("special", mode=stat.S_IFSOCK)
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return _not_a_file(opened.st_mode)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return Look("changing", _sig(opened))  # another file took the name meanwhile
        os.set_blocking(fd, True)  # a regular file: reads never wait (some FUSE ones would)
        digest = hashlib.sha256()
        view = _buffer()
        while n := os.readv(fd, [view]):
            digest.update(view[:n])
            if halted():
                raise Halted
        after = os.fstat(fd)
    finally:
        os.close(fd)
    sig = _sig(st)
    if _sig(after) != sig:
        return Look("changing", _sig(after))
    hexdigest = digest.hexdigest()
    return Look("settled", sig, hexdigest, hexdigest)
