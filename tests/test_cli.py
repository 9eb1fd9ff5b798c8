"""Tests for the command line `t5mini-pretrain` (`t5mini.cli`, `python -m t5mini.pretrain`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t5mini.cli import main
from t5mini.data import read_documents
from t5mini.model import T5ForConditionalGeneration
from tests.tolerance import assert_close_to_truth

SMALL = ["--size", "small", "--batch-size", "4", "--eval-every", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A short .txt corpus: the bundled corpus's first 600 documents (about 25,000 tokens)."""
    documents = [text for _, text in zip(range(600), read_documents())]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def run(*flags: str) -> int:
    return main([str(flag) for flag in flags])


def final_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "final" / "model.safetensors")


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def six_steps(corpus, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("runs") / "six"
    assert run(*SMALL, "--text", corpus, "--num-steps", 6, "--output-dir", directory) == 0
    return directory


def test_writes_checkpoint_log_and_final(six_steps, capsys):
    names = {p.name for p in six_steps.iterdir()}
    assert names == {"checkpoint.pt", "log.jsonl", "final", ".lock"}
    assert {p.name for p in (six_steps / "final").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "spiece.model",
    }
    log = records(six_steps)
    steps = [r["step"] for r in log if "loss" in r]
    evaluations = [r["step"] for r in log if "validation_loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6] and evaluations == [0, 2, 4, 6]
    assert all({"lr", "tokens_per_s"} <= r.keys() for r in log if "loss" in r)
    checkpoint = torch.load(six_steps / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6 and checkpoint["data"]["index"] == 6
    assert checkpoint["run"]["batch_size"] == 4 and checkpoint["run"]["size"] == "small"
    assert not [p for p in six_steps.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_final_loads_in_t5mini_and_transformers(six_steps):
    """Both libraries read final/; t5mini's logits are judged against transformers' float64."""
    transformers = pytest.importorskip("transformers")
    ours = T5ForConditionalGeneration.from_pretrained(six_steps / "final").eval()
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(six_steps / "final").eval()
    assert ours.config.vocab_size == theirs.config.vocab_size == 8192
    torch.manual_seed(0)
    input_ids = torch.randint(3, 8000, (2, 20))
    labels = torch.randint(3, 8000, (2, 7))
    with torch.no_grad():
        mine = ours(input_ids, labels=labels).logits
        reference = theirs(input_ids=input_ids, labels=labels).logits
        truth = theirs.double()(input_ids=input_ids, labels=labels).logits  # the reference's
    assert_close_to_truth(mine, reference, truth, "logits of final/")


def test_resume_is_bitwise(six_steps, corpus, tmp_path):
    """6 steps in one go == 3 steps, then --resume to 6 (every weight, bit for bit)."""
    directory = tmp_path / "stopped"
    assert run(*SMALL, "--text", corpus, "--num-steps", 3, "--output-dir", directory) == 0
    assert records(directory)[-1]["step"] == 3
    assert run("--num-steps", 6, "--resume", "--output-dir", directory) == 0
    straight, resumed = final_weights(six_steps), final_weights(directory)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    timing = ("seconds", "tokens_per_s")
    steps = [{k: v for k, v in r.items() if k not in timing} for r in records(directory)]
    expected = [{k: v for k, v in r.items() if k not in timing} for r in records(six_steps)]
    assert [r for r in steps if "loss" in r] == [r for r in expected if "loss" in r]
    evaluations = {r["step"]: r for r in steps if "validation_loss" in r}
    assert sorted(evaluations) == [0, 2, 3, 4, 6]  # the first run ended at step 3
    assert all(evaluations[r["step"]] == r for r in expected if "validation_loss" in r)


def test_resume_drops_log_records_after_the_checkpoint(corpus, tmp_path):
    directory = tmp_path / "killed"
    run(*SMALL, "--text", corpus, "--num-steps", 2, "--save-every", 2, "--output-dir", directory)
    with (directory / "log.jsonl").open("a") as log:  # steps a killed run logged, unsaved
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    assert run("--num-steps", 3, "--resume", "--output-dir", directory) == 0
    steps = [r["step"] for r in records(directory) if "loss" in r]
    assert steps == [1, 2, 3] and records(directory)[-2]["loss"] != 1.0


def test_jsonl_text(tmp_path):
    rows = [{"text": f"Story {i}. " + "Once upon a time there was a cat. " * 8} for i in range(60)]
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run(*SMALL, "--text", path, "--num-steps", 1, "--output-dir", tmp_path / "out") == 0
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


# --- mistakes: exit code 2, a message naming the problem, nothing in DIR destroyed ----------


def exit_code_and_message(capsys, *flags) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        run(*flags)
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-steps", "0"], "--num-steps"),
        (["--num-steps", "two"], "--num-steps"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--size", "medium"], "--size"),
        (["--precision", "fp8"], "--precision"),
        (["--learning-rate", "1"], "unrecognized arguments"),
    ],
)
def test_bad_flags(capsys, tmp_path, flags, message):
    code, error = exit_code_and_message(capsys, *flags, "--output-dir", tmp_path / "out")
    assert code == 2 and message in error
    assert not (tmp_path / "out").exists()


def test_output_dir_is_required(capsys):
    code, error = exit_code_and_message(capsys, "--num-steps", "1")
    assert code == 2 and "--output-dir" in error


def test_missing_and_empty_text(capsys, tmp_path):
    code, error = exit_code_and_message(
        capsys, "--text", tmp_path / "nowhere.txt", "--output-dir", tmp_path / "a"
    )
    assert code == 2 and "--text" in error and "nowhere.txt" in error
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    code, error = exit_code_and_message(capsys, "--text", empty, "--output-dir", tmp_path / "b")
    assert code == 2 and "--text" in error and "empty.txt" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_tokenizer_and_bad_jsonl(capsys, tmp_path):
    code, error = exit_code_and_message(
        capsys, "--tokenizer", tmp_path / "none.model", "--output-dir", tmp_path / "a"
    )
    assert code == 2 and "--tokenizer" in error and "none.model" in error
    not_a_model = tmp_path / "text.model"
    not_a_model.write_text("not a SentencePiece model")
    code, error = exit_code_and_message(
        capsys, "--tokenizer", not_a_model, "--output-dir", tmp_path / "b"
    )
    assert code == 2 and "text.model" in error
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": unquoted}\n')
    code, error = exit_code_and_message(capsys, "--text", bad, "--output-dir", tmp_path / "c")
    assert code == 2 and "--text" in error
    assert not any((tmp_path / name).exists() for name in "abc")


def test_too_little_text(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n")
    code, error = exit_code_and_message(capsys, "--text", short, "--output-dir", tmp_path / "out")
    assert code == 2 and "batch_size" in error


def test_another_runs_directory_is_not_overwritten(six_steps, corpus, capsys):
    before = snapshot(six_steps)
    code, error = exit_code_and_message(
        capsys, *SMALL, "--text", corpus, "--num-steps", 2, "--output-dir", six_steps
    )
    assert code == 2 and "--resume" in error and "checkpoint.pt" in error
    assert snapshot(six_steps) == before


def test_a_log_without_checkpoint_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 0, "validation_loss": 9.0}\n')
    code, error = exit_code_and_message(capsys, "--num-steps", "1", "--output-dir", tmp_path)
    assert code == 2 and "log.jsonl" in error
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 0, "validation_loss": 9.0}\n'


def test_resume_errors(six_steps, capsys, tmp_path):
    code, error = exit_code_and_message(capsys, "--resume", "--output-dir", tmp_path / "none")
    assert code == 2 and "--resume" in error
    before = snapshot(six_steps)
    code, error = exit_code_and_message(
        capsys, "--resume", "--batch-size", "8", "--output-dir", six_steps
    )
    assert code == 2 and "--batch-size" in error
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, error = exit_code_and_message(capsys, "--resume", "--output-dir", broken)
    assert code == 2 and "checkpoint.pt" in error
    assert snapshot(six_steps) == before


def test_resume_with_changed_text(six_steps, corpus, capsys, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(six_steps, directory)
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus.read_text() + "\n\nOne more document.\n")
    code, error = exit_code_and_message(
        capsys, "--resume", "--text", changed, "--num-steps", 7, "--output-dir", directory
    )
    assert code == 2 and "--text" in error


# --- the program, and several processes ----------------------------------------------------


def test_module_and_console_script_run(tmp_path):
    """`python -m t5mini.pretrain`, `python -m t5mini.cli` and the installed command."""
    for module in ("t5mini.pretrain", "t5mini.cli"):
        help_text = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True
        )
        assert help_text.returncode == 0 and "--output-dir" in help_text.stdout, module
    # `pip install -e .` puts the command beside the interpreter (in .venv/bin)
    script = Path(sys.executable).with_name("t5mini-pretrain")
    if not script.exists():
        found = shutil.which("t5mini-pretrain")
        if found is None:
            pytest.fail(
                f"the command t5mini-pretrain is neither beside {sys.executable} nor on PATH: "
                "install the package (pip install -e .) to test it"
            )
        script = Path(found)
    usage = subprocess.run([script], capture_output=True, text=True)
    assert usage.returncode == 2 and "--output-dir" in usage.stderr
    assert "usage: t5mini-pretrain" in usage.stderr


def test_torchrun_two_processes_equal_one(corpus, tmp_path):
    """DDP over 2 CPU processes (gloo) trains the 1-process run's global batch."""
    flags = [*SMALL, "--text", str(corpus), "--num-steps", "3"]
    assert run(*flags, "--output-dir", tmp_path / "one") == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "t5mini.pretrain", *flags,
               "--output-dir", str(tmp_path / "two")]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("t5mini-pretrain:") == 1  # only rank 0 prints
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        relative = ((two[name] - one[name]).norm() / one[name].norm()).item()
        assert relative <= 1e-5, name
    log_one, log_two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two]
    for a, b in zip(log_one, log_two):
        key = "loss" if "loss" in a else "validation_loss"
        assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key])
