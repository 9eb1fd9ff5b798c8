"""Bad inputs and faults around training's files: a write that fails names what it was writing.

A full disk (or a file-size limit) during `save_checkpoint` used to surface as torch's
"unexpected pos 704 vs 598" or a bare "No space left on device"; the error now names the
checkpoint that was not written, and the old checkpoint stays as it was.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration
from t5mini.training import Trainer, configure_optimizer, load_checkpoint, save_checkpoint

CONFIG = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)


def small_model(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**CONFIG))


FULL_DISK = """
import os, resource, sys
import torch
from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration
from t5mini.training import save_checkpoint

path = sys.argv[1]
model = T5ForConditionalGeneration(T5Config(**{config!r}))
save_checkpoint(path, model, step=1)  # a good checkpoint first
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) // 2, hard))
try:
    save_checkpoint(path, model, step=2)
except Exception as error:
    print(type(error).__name__)
    print(error)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX resource limits")
def test_a_file_size_limit_during_save_names_the_checkpoint(tmp_path: Path) -> None:
    """The real thing, in a child process: the kernel refuses to let the file grow."""
    path = tmp_path / "run" / "checkpoint.pt"
    script = textwrap.dedent(FULL_DISK.format(config=CONFIG))
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    kind, _, message = result.stdout.partition("\n")
    assert kind == "OSError", result.stdout
    assert str(path) in message and "not written" in message, message
    assert load_checkpoint(path, small_model())["step"] == 1  # the old one is intact
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def failing_save(error: BaseException):
    """A torch.save that writes half of the file, then fails with `error`."""
    real_save = torch.save

    def save(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.seek(file.tell() // 2)
        file.truncate()
        raise error

    return save


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EFBIG, "File too large"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    ],
    ids=["ENOSPC", "EFBIG", "torch-writer"],
)
def test_a_full_disk_during_save_checkpoint_names_the_path(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, small_model(), step=1)
    old = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save(error))
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, small_model(1), step=2)
    monkeypatch.undo()
    assert str(path) in str(raised.value) and "not written" in str(raised.value)
    if isinstance(error, OSError):
        assert raised.value.errno == error.errno  # the cause is kept
    assert raised.value.__cause__ is error
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_full_disk_during_trainer_save_names_the_path(tmp_path, monkeypatch):
    model = small_model()
    trainer = Trainer(model, configure_optimizer(model, lr=1e-3))
    path = tmp_path / "nested" / "checkpoint.pt"
    monkeypatch.setattr(torch, "save", failing_save(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match=r"checkpoint\.pt was not written: No space left"):
        trainer.save(path)
    monkeypatch.undo()
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_a_bug_inside_torch_save_keeps_its_own_type(tmp_path, monkeypatch):
    """Only failed writes become an OSError; any other error passes through as it is."""
    monkeypatch.setattr(torch, "save", failing_save(TypeError("cannot pickle 'generator'")))
    with pytest.raises(TypeError, match="cannot pickle"):
        save_checkpoint(tmp_path / "checkpoint.pt", small_model())
