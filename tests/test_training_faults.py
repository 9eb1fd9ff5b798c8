"""Fault tests for the file training writes, the checkpoint: a crash at any point of a save
leaves the previous checkpoint intact and no temporary file behind, a process killed while
saving leaves nothing the next save does not clean up, and a load that fails half way
changes nothing."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import t5mini.files as files
import t5mini.scale as scale
from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration
from t5mini.scale import Trainer, load_checkpoint
from t5mini.training import configure_optimizer

VOCAB = 64


def make_trainer(seed: int = 0, steps: int = 1) -> Trainer:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0
    )
    model = T5ForConditionalGeneration(config)
    trainer = Trainer(model, configure_optimizer(model, lr=1e-2))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        trainer.step(
            {
                "input_ids": torch.randint(3, VOCAB, (2, 6), generator=generator),
                "labels": torch.randint(3, VOCAB, (2, 4), generator=generator),
            }
        )
    return trainer


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [t.clone() for t in trainer.model.state_dict().values()]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    """A good checkpoint on disk (after one step), and its bytes."""
    path = make_trainer(steps=1).save(tmp_path / "ckpt.pt")
    return path, path.read_bytes()


def assert_intact(path: Path, old_bytes: bytes) -> None:
    """The old checkpoint is there, byte for byte, alone, and it loads."""
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert load_checkpoint(path, make_trainer(seed=5, steps=0).model)["step"] == 1


def half_write_then(error: BaseException):
    """A torch.save that writes half a checkpoint, then fails with `error`."""
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
        KeyboardInterrupt("interrupted while writing"),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("a bug inside torch.save"),
    ],
)
def test_a_save_that_dies_mid_write_leaves_the_old_checkpoint(saved, monkeypatch, error):
    path, old_bytes = saved
    new = make_trainer(seed=1, steps=3)
    monkeypatch.setattr(scale.torch, "save", half_write_then(error))
    with pytest.raises(type(error)):
        new.save(path)
    monkeypatch.undo()
    assert_intact(path, old_bytes)
    new.save(path)  # and the next save goes through
    assert load_checkpoint(path, make_trainer(seed=5, steps=0).model)["step"] == 3


@pytest.mark.parametrize("function", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_leaves_the_old_checkpoint(saved, monkeypatch, function):
    path, old_bytes = saved
    new = make_trainer(seed=1, steps=2)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, f"{function} failed")

    monkeypatch.setattr(scale.os, function, fail)
    with pytest.raises(OSError, match=f"{function} failed"):
        new.save(path)
    monkeypatch.undo()
    assert_intact(path, old_bytes)


def test_a_failing_directory_sync_after_the_rename_leaves_the_new_checkpoint(saved, monkeypatch):
    path, _ = saved
    new = make_trainer(seed=1, steps=2)

    def fail(directory):
        raise OSError(errno.EIO, "directory fsync failed")

    monkeypatch.setattr(files, "fsync_directory", fail)
    with pytest.raises(OSError, match="directory fsync failed") as raised:
        new.save(path)
    monkeypatch.undo()
    assert "not written" not in str(raised.value)  # it was written
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert load_checkpoint(path, make_trainer(seed=5, steps=0).model)["step"] == 2  # the new one


KILLED_SAVE = """
import os, signal, sys, torch
import t5mini.scale as scale
sys.path.insert(0, {tests!r})
from test_training_faults import make_trainer

trainer = make_trainer(seed=1, steps=2)
real_save = torch.save

def save_and_die(obj, file, *args, **kwargs):
    real_save(obj, file, *args, **kwargs)
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no exception handler runs

scale.torch.save = save_and_die
trainer.save({path!r})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_killed_save_leaves_the_old_checkpoint_and_the_next_save_cleans_up(saved):
    path, old_bytes = saved
    script = KILLED_SAVE.format(tests=str(Path(__file__).parent), path=str(path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == old_bytes  # the old checkpoint survived ...
    orphans = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1  # ... and the killed process left its temporary file
    make_trainer(seed=2, steps=3).save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # cleaned up
    assert load_checkpoint(path, make_trainer(seed=5, steps=0).model)["step"] == 3


# --- a load that fails half way ------------------------------------------------------------


def state_of(trainer: Trainer) -> tuple:
    optimizer = trainer.optimizer.state_dict()["state"]
    return (
        weights(trainer),
        [torch.as_tensor(v).clone() for _, s in sorted(optimizer.items()) for v in s.values()],
        trainer.global_step,
        len(trainer.history),
        torch.get_rng_state(),
    )


def assert_same_state(a: tuple, b: tuple) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and len(a[0]) == len(b[0])
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1])) and len(a[1]) == len(b[1])
    assert a[2:4] == b[2:4] and torch.equal(a[4], b[4])


def test_a_load_whose_read_fails_changes_nothing(saved, monkeypatch):
    path, _ = saved
    trainer = make_trainer(seed=3, steps=2)
    before = state_of(trainer)

    def broken_load(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading file data/3")

    monkeypatch.setattr(scale.torch, "load", broken_load)
    with pytest.raises(ValueError, match="not a readable t5mini checkpoint"):
        trainer.load(path)
    assert_same_state(state_of(trainer), before)


def fail_first_call(function, message):
    """`function`, except that its first call raises a RuntimeError with `message`."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError(message)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("target", ["optimizer", "rng", "model"])
def test_a_load_that_fails_while_restoring_changes_nothing(saved, monkeypatch, target):
    """Past every check, a failure while restoring still puts back what was restored."""
    path, _ = saved
    trainer = make_trainer(seed=3, steps=2)
    torch.manual_seed(42)
    before = state_of(trainer)
    message = f"{target} could not be restored"
    if target == "optimizer":  # the first call loads the checkpoint; the second undoes
        load = trainer.optimizer.load_state_dict
        monkeypatch.setattr(trainer.optimizer, "load_state_dict", fail_first_call(load, message))
    elif target == "rng":
        monkeypatch.setattr(scale, "set_rng_state", fail_first_call(scale.set_rng_state, message))
    else:  # the weights come last: the optimiser and generators were restored, and are undone
        monkeypatch.setattr(trainer.model, "load_state_dict", fail_first_call(None, message))
    with pytest.raises(RuntimeError, match=message):
        trainer.load(path)
    assert_same_state(state_of(trainer), before)
