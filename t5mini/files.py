# Generated from chapters/13_guard_rails.md — edit the chapter, not this file.

"""Safe files: atomic replacement, stale temporaries of dead writers, text that names bad bytes."""

from __future__ import annotations

import codecs
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import fcntl  # POSIX: advisory locks that the kernel drops when their process dies
except ImportError:  # Windows: without locks no temporary can be known stale, so none is removed
    fcntl = None


def _temporaries(path: Path) -> re.Pattern[str]:
    """The names of the temporaries of ``path``: ``.NAME.<12 hex digits>.tmp``."""
    return re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")


def _try_lock(descriptor: int) -> bool:
    """Lock an open file exclusively without waiting; False if a live process holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def new_temporary(path: Path) -> tuple[Path, IO[bytes]]:
    """Create and lock a new temporary file beside ``path`` (the lock lasts while it is open)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less umask
        if fcntl is not None and not (_try_lock(descriptor) and os.fstat(descriptor).st_nlink):
            os.close(descriptor)  # a clean-up took it between the open and the lock: again
            continue
        if path.is_file() and hasattr(os, "fchmod"):  # a replaced file keeps its permissions
            os.fchmod(descriptor, stat.S_IMODE(path.stat().st_mode))
        return temporary, os.fdopen(descriptor, "wb")


def fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX; Windows cannot open a directory)."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` that no live process holds; return those deleted."""
    path, removed = Path(path), []
    if fcntl is None or not path.parent.is_dir():
        return removed
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    for candidate in sorted(path.parent.iterdir()):
        if not _temporaries(path).fullmatch(candidate.name):
            continue
        try:
            descriptor = os.open(candidate, flags)
        except OSError:  # gone already, a link, or not ours to read
            continue
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode) and _try_lock(descriptor):
                candidate.unlink()  # no live process holds it: its writer died
                removed.append(candidate)
        except OSError:  # not ours to delete
            pass
        finally:
            os.close(descriptor)
    return removed


@contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A new file to write; at the end it replaces ``path`` whole, and on an error it vanishes."""
    path = Path(path)
    remove_stale_temporaries(path)
    temporary, file = new_temporary(path)
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # the bytes are on the disk before a name points at them
            if fcntl is not None:  # rename while the lock is held: no clean-up can take it
                os.replace(temporary, path)  # atomic: the old file or the new one
        if fcntl is None:  # Windows cannot rename an open file
            os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)  # and the rename is on the disk too


def check_existing_files(name: str, value: Any) -> list[Path]:
    """``value`` (a path, or a list of paths) as Paths; raise unless each names an existing file."""
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    elif not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a path or a list of paths, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must name at least one file, got []")
    for index, path in enumerate(value):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{name}[{index}] must be a path, got {type(path).__name__}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name}: file not found: {path}")
    return [Path(path) for path in value]


def check_new_file(name: str, value: Any) -> Path:
    """``value`` as a Path; raise unless it names a file (new or not) in an existing directory."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(value).__name__}")
    path = Path(value)
    if path.is_dir():
        raise IsADirectoryError(f"{name} {str(path)!r} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{name} {str(path)!r}: no directory {str(path.parent)!r}")
    return path


def _first_undecodable(path: Path, encoding: str) -> tuple[int, int]:
    """(byte offset, line number) of the first bytes of ``path`` that ``encoding`` rejects."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, line = 0, 1
    with open(path, "rb") as file:
        while True:
            chunk = file.read(1 << 16)
            pending = decoder.getstate()[0]  # the start of a character cut by the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:  # error.start counts from pending + chunk
                before = chunk[: max(error.start - len(pending), 0)]
                return offset - len(pending) + error.start, line + before.count(b"\n")
            if not chunk:
                return offset, line  # not reached for a file that failed to decode
            offset, line = offset + len(chunk), line + chunk.count(b"\n")


def text_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of a text file; bytes ``encoding`` rejects raise an error naming file and byte."""
    path = Path(path)
    try:
        with open(path, encoding=encoding) as file:
            yield from file
    except UnicodeDecodeError as error:
        offset, line = _first_undecodable(path, encoding)
        raise ValueError(
            f"{path}: the byte at position {offset} (line {line}) is not valid {encoding} "
            f"({error.reason}); expected a text file encoded in {encoding}"
        ) from None
