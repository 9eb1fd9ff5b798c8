"""t5mini.files: atomic replacement, stale temporaries, file modes, paths and undecodable text."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from t5mini.files import (
    check_existing_files,
    check_new_file,
    new_temporary,
    remove_stale_temporaries,
    replaced_atomically,
    text_lines,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX locks and modes")


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


# --- replaced_atomically ------------------------------------------------------------------


def test_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with replaced_atomically(target) as file:
        file.write(b"new contents")
        assert target.read_bytes() == b"old"  # nothing visible until the end
    assert target.read_bytes() == b"new contents" and temporaries(target) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path, error) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with replaced_atomically(target) as file:
            file.write(b"half")
            raise error
    assert target.read_bytes() == b"old" and temporaries(target) == []


def test_creates_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with replaced_atomically(target) as file:
        file.write(b"x")
    assert target.read_bytes() == b"x"


@posix_only
def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        target = tmp_path / "model.bin"
        with replaced_atomically(target) as file:
            file.write(b"1")
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~0o027
        os.chmod(target, 0o600)
        with replaced_atomically(target) as file:
            file.write(b"2")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(umask)


# --- stale temporaries ----------------------------------------------------------------------


@posix_only
def test_only_unlocked_temporaries_of_the_same_file_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "m.model"
    dead = tmp_path / ".m.model.0123456789ab.tmp"
    dead.write_bytes(b"")
    untouched = [
        tmp_path / ".m.model.backup.tmp",  # not our name pattern
        tmp_path / ".other.0123456789ab.tmp",  # another file's temporary
        tmp_path / ".m.model.0123456789AB.tmp",  # upper-case: not ours
    ]
    for path in untouched:
        path.write_bytes(b"")
    (tmp_path / ".m.model.fedcba987654.tmp").mkdir()  # a directory: never removed
    live_path, live = new_temporary(target)  # locked while open
    try:
        assert remove_stale_temporaries(target) == [dead]
        assert live_path.exists() and all(path.exists() for path in untouched)
    finally:
        live.close()
    assert remove_stale_temporaries(target) == [live_path]  # its writer is gone now
    assert (tmp_path / ".m.model.fedcba987654.tmp").is_dir()


def test_remove_stale_temporaries_in_a_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    assert remove_stale_temporaries(tmp_path / "nowhere" / "m.model") == []


# --- paths ----------------------------------------------------------------------------------


def test_check_existing_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x")
    b.write_text("y")
    assert check_existing_files("corpus", str(a)) == [a]
    assert check_existing_files("corpus", [a, str(b)]) == [a, b]
    with pytest.raises(FileNotFoundError, match=r"^corpus: file not found: .*missing"):
        check_existing_files("corpus", [a, tmp_path / "missing"])
    with pytest.raises(ValueError, match=r"^corpus must name at least one file"):
        check_existing_files("corpus", [])
    with pytest.raises(TypeError, match=r"^corpus\[1\] must be a path"):
        check_existing_files("corpus", [a, 3])
    with pytest.raises(TypeError, match=r"^corpus must be a path or a list of paths"):
        check_existing_files("corpus", 3)


def test_check_new_file(tmp_path: Path) -> None:
    assert check_new_file("model_file", tmp_path / "m.model") == tmp_path / "m.model"
    with pytest.raises(IsADirectoryError, match=r"^model_file .* is a directory"):
        check_new_file("model_file", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^model_file .*: no directory"):
        check_new_file("model_file", tmp_path / "nowhere" / "m.model")
    with pytest.raises(TypeError, match=r"^model_file must be a path"):
        check_new_file("model_file", None)


# --- text_lines -----------------------------------------------------------------------------


def test_text_lines_reads_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("one\ntwo é\n", encoding="utf-8")
    assert list(text_lines(path)) == ["one\n", "two é\n"]


@pytest.mark.parametrize("chunks", [0, 1, 3])
def test_text_lines_names_the_position_in_the_file_across_chunks(tmp_path: Path, chunks) -> None:
    path = tmp_path / "t.txt"
    line = "x" * 1023 + "\n"
    good = (line * 64 * chunks).encode()  # a whole number of the reader's 64 KiB chunks
    # a two-byte character cut by the chunk boundary, then the bad byte
    data = good[:-1] + "é".encode() + b"ok\n" + b"bad \xc3( here\n"
    path.write_bytes(data)
    position = data.index(b"\xc3(")
    line_number = data[:position].count(b"\n") + 1
    with pytest.raises(ValueError) as caught:
        list(text_lines(path))
    message = str(caught.value)
    assert f"{path}: the byte at position {position} (line {line_number})" in message
    assert "utf-8" in message


def test_text_lines_with_another_encoding(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("café\n".encode("utf-16"))
    assert list(text_lines(path, encoding="utf-16")) == ["café\n"]
    with pytest.raises(ValueError, match=r"is not valid ascii .*encoded in ascii"):
        list(text_lines(path, encoding="ascii"))
