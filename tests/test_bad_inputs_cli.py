"""Bad inputs and faults for `t5mini-pretrain`: no lost runs, runs that can always continue,
and errors that name the cause.

- Lost runs: a run holds its --output-dir; a second run (started with it, or a --resume into
  it) is refused with a message naming the holder, and touches nothing there; a run killed
  with SIGKILL leaves no stuck lock. Other programs' files with the names of temporaries are
  not deleted, and a user's own `final` is never renamed or replaced.
- A run can always continue: stopped (Ctrl-C or SIGKILL) before its first --save-every
  checkpoint, it resumes and ends bit for bit where an uninterrupted run ends; a damaged
  last line of log.jsonl, or bytes in it that are not UTF-8, do not stop --resume.
- Errors that name the cause: --text that is not UTF-8 is a usage error (exit code 2)
  naming the file, the byte offset, the line and the encoding expected.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t5mini import cli
from t5mini.data import read_documents
from t5mini.training import Trainer

SMALL = ["--size", "small", "--batch-size", "4", "--eval-every", "2"]

# A run in another process that stops when it reaches step AT: "pause" sleeps (a live run),
# "kill" sends itself SIGKILL (a crash, or `kill -9`). MARKER appears when it gets there.
STOPPING_RUN = """
import os, signal, sys, time
from pathlib import Path
from t5mini.training import Trainer
from t5mini.cli import main
action, at, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
step = Trainer.step
def stopping_step(self, batch):
    if self.global_step == at:
        marker.touch()
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(900)
    return step(self, batch)
Trainer.step = stopping_step
sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A short .txt corpus: the bundled corpus's first 300 documents."""
    documents = [text for _, text in zip(range(300), read_documents())]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def run(*flags) -> int:
    return cli.main([str(flag) for flag in flags])


def refused(capsys, *flags) -> tuple[int, str]:
    """Exit code and message of a run that must stop with a usage error."""
    with pytest.raises(SystemExit) as stopped:
        run(*flags)
    return stopped.value.code, capsys.readouterr().err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def steps_and_losses(directory: Path) -> list[tuple[int, float]]:
    lines = (directory / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def same_weights(a: Path, b: Path) -> bool:
    first, second = (
        load_file(a / "final" / "model.safetensors"),
        load_file(b / "final" / "model.safetensors"),
    )
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def start_stopping_run(action: str, at: int, marker: Path, *flags) -> subprocess.Popen:
    command = [sys.executable, "-c", STOPPING_RUN, action, str(at), str(marker)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, *map(str, flags)], env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the run did not reach its step in time"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def four_steps(corpus, tmp_path_factory) -> Path:
    """An uninterrupted run of 4 steps (no checkpoint before the end)."""
    directory = tmp_path_factory.mktemp("runs") / "four"
    assert run(*SMALL, "--text", corpus, "--num-steps", 4, "--output-dir", directory) == 0
    return directory


@pytest.fixture(scope="module")
def two_steps(corpus, tmp_path_factory) -> Path:
    """A finished run of 2 steps, copied by the tests that damage it."""
    directory = tmp_path_factory.mktemp("runs") / "two"
    assert run(*SMALL, "--text", corpus, "--num-steps", 2, "--output-dir", directory) == 0
    return directory


# --- lost runs --------------------------------------------------------------------------------


def test_a_held_directory_is_refused_and_a_killed_holder_frees_it(corpus, tmp_path, capsys):
    """A live run holds its directory: a second run, even with --resume, is refused and
    changes nothing (not even stale-looking temporaries); once the holder is killed with
    SIGKILL, --resume continues at once."""
    directory, marker = tmp_path / "held", tmp_path / "paused"
    flags = [*SMALL, "--text", corpus, "--num-steps", 4, "--save-every", 1]
    holder = start_stopping_run("pause", 2, marker, *flags, "--output-dir", directory)
    try:
        wait_for(marker, holder)
        # a temporary of the live run, as a killed run would leave one: it must survive
        (directory / ".log.jsonl.abcd1234.tmp").write_text("the live run's\n")
        before = snapshot(directory)
        for extra in (["--resume"], [*SMALL, "--text", corpus]):
            code, message = refused(capsys, *extra, "--num-steps", 4, "--output-dir", directory)
            assert code == 2 and "in use" in message and str(holder.pid) in message, message
            assert snapshot(directory) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert run("--resume", "--output-dir", directory) == 0  # no stuck lock
    assert [step for step, _ in steps_and_losses(directory)] == [1, 2, 3, 4]


def test_two_runs_started_together(corpus, tmp_path):
    """Two runs started at once into one new directory: one runs, the other is refused."""
    directory = tmp_path / "together"
    flags = [*SMALL, "--text", corpus, "--num-steps", 2, "--output-dir", directory]
    processes = [
        start_stopping_run("pause", 10**6, tmp_path / f"never{i}", *flags) for i in range(2)
    ]
    results = [(p.communicate(timeout=900)[1], p.returncode) for p in processes]
    results = [(code, error) for error, code in results]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    message = next(error for code, error in results if code == 2)
    assert "--output-dir" in message


def test_users_final_is_never_renamed_or_replaced(two_steps, tmp_path, capsys):
    for kind in ("file", "directory"):
        directory = tmp_path / kind
        shutil.copytree(two_steps, directory)
        shutil.rmtree(directory / "final")
        if kind == "file":
            (directory / "final").write_text("my notes, not a model\n")
        else:
            shutil.copytree(two_steps / "final", directory / "final")
            (directory / "final" / "README.md").write_text("my model card\n")
        before = snapshot(directory)
        code, message = refused(capsys, "--resume", "--num-steps", 3, "--output-dir", directory)
        assert code == 2 and "final" in message, message
        assert snapshot(directory) == before
        assert not [p for p in directory.iterdir() if p.name.startswith(".final")]


def test_other_files_with_temporary_names_are_kept(two_steps, tmp_path):
    """Fixed names such as .final.new are not the run's: a resume leaves them alone, while
    the uniquely named temporaries a killed run left are cleared."""
    directory = tmp_path / "run"
    shutil.copytree(two_steps, directory)
    (directory / ".final.new").mkdir()
    (directory / ".final.new" / "keep.txt").write_text("another program's\n")
    (directory / ".log.jsonl.tmp").write_text("another program's\n")
    (directory / ".final.k3j9x2ab.new").mkdir()  # as a run killed while saving leaves it
    assert run("--resume", "--num-steps", 3, "--output-dir", directory) == 0
    assert (directory / ".final.new" / "keep.txt").read_text() == "another program's\n"
    assert (directory / ".log.jsonl.tmp").read_text() == "another program's\n"
    assert not (directory / ".final.k3j9x2ab.new").exists()


# --- a run can always continue ------------------------------------------------------------------


def test_killed_before_its_first_checkpoint_continues(four_steps, corpus, tmp_path):
    """SIGKILL at step 2 of a run that saves every 100 steps: --resume still continues it,
    and it ends bit for bit where the uninterrupted run ends."""
    directory, marker = tmp_path / "killed", tmp_path / "killed-marker"
    flags = [*SMALL, "--text", corpus, "--num-steps", 4, "--output-dir", directory]
    killed = start_stopping_run("kill", 2, marker, *flags)
    killed.communicate(timeout=900)
    assert killed.returncode == -signal.SIGKILL and marker.exists()
    assert run("--resume", "--output-dir", directory) == 0
    assert same_weights(directory, four_steps)
    assert steps_and_losses(directory) == steps_and_losses(four_steps)


def test_interrupted_before_its_first_checkpoint_continues(
    four_steps, corpus, tmp_path, monkeypatch
):
    """Ctrl-C (KeyboardInterrupt) at step 2: the directory is not a dead end."""
    directory = tmp_path / "interrupted"
    step = Trainer.step

    def interrupted_step(self, batch):
        if self.global_step == 2:
            raise KeyboardInterrupt
        return step(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "step", interrupted_step)
        with contextlib.suppress(KeyboardInterrupt):
            assert run(*SMALL, "--text", corpus, "--num-steps", 4, "--output-dir", directory) != 0
    assert run("--resume", "--output-dir", directory) == 0
    assert same_weights(directory, four_steps)
    assert steps_and_losses(directory) == steps_and_losses(four_steps)


@pytest.mark.parametrize(
    "damage",
    [
        b'{"step": 3, "loss": 7.1, "lr"',  # a write cut short by a crash, no newline
        b"\xff\xfe\x00 not text\n",  # bytes that are not UTF-8
        b'{"step": "three"}\n[1, 2]\n',  # JSON, but not a record
    ],
)
def test_damaged_log_does_not_stop_resume(two_steps, tmp_path, capsys, damage):
    directory = tmp_path / "run"
    shutil.copytree(two_steps, directory)
    with (directory / "log.jsonl").open("ab") as log:
        log.write(damage)
    assert run("--resume", "--num-steps", 3, "--output-dir", directory) == 0
    assert [step for step, _ in steps_and_losses(directory)] == [1, 2, 3]
    assert steps_and_losses(directory)[:2] == steps_and_losses(two_steps)
    assert "damaged" in capsys.readouterr().err


# --- errors that name the cause ---------------------------------------------------------------


def bad_text(path: Path, bad: bytes) -> tuple[int, int]:
    """Write stories, one a line, with `bad` on the third line; the bad byte's offset and line."""
    stories = [f"Story {i}. " + "Once upon a time there was a cat. " * 8 for i in range(50)]
    if ".jsonl" in path.suffixes:
        lines = [json.dumps({"text": story}).encode() for story in stories]
        lines[2] = lines[2].replace(b"cat", b"c" + bad + b"t", 1)
        data = b"\n".join(lines) + b"\n"
    else:  # a blank line between documents: story 1 is on line 3
        lines = [story.encode() for story in stories]
        lines[1] = lines[1].replace(b"cat", b"c" + bad + b"t", 1)
        data = b"\n\n".join(lines) + b"\n"
    offset = data.index(bad)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as file:
        file.write(data)
    return offset, data[:offset].count(b"\n") + 1


@pytest.mark.parametrize(
    "name, bad",
    [
        ("latin1.txt", b"\xe9"),  # é in Latin-1
        ("stories.jsonl", b"\x80"),  # a continuation byte with nothing before it
        ("latin1.txt.gz", b"\xe9"),  # in the decompressed text
    ],
)
def test_text_that_is_not_utf8(capsys, tmp_path, corpus, name, bad):
    path = tmp_path / name
    offset, line = bad_text(path, bad)
    code, message = refused(capsys, "--text", corpus, path, "--output-dir", tmp_path / "out")
    assert code == 2 and str(path) in message and "UTF-8" in message, message
    assert f"byte {offset:,}" in message and f"line {line}" in message, message
    assert "Traceback" not in message and not (tmp_path / "out").exists()


def test_text_cut_in_the_middle_of_a_character(capsys, tmp_path):
    path = tmp_path / "cut.txt"
    text = "\n\n".join("Once upon a time there was a café. " * 8 for _ in range(50))
    path.write_bytes(text.encode() + b"\n\ncaf\xc3")  # é cut after its first byte
    code, message = refused(capsys, "--text", path, "--output-dir", tmp_path / "out")
    assert code == 2 and str(path) in message and "UTF-8" in message, message
    assert f"byte {len(text.encode()) + 5:,}" in message, message
