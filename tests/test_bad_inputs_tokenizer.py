"""Bad inputs and faults around the tokenizer and the shared checks: each gets an error that
names its cause (the argument, the file, the byte), and files are never lost or left behind.

The families: undecodable corpus text, a vocabulary too small for the corpus, lone
surrogates in text, ids that are not ints, temporaries of killed writers, and tensors or
models on the meta device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t5mini.checks import check_hidden_states, check_ids, check_mask
from t5mini.tokenizer import Tokenizer, bundled_corpus, pad_batch, train_tokenizer

GOOD_LINE = "First Citizen: before we proceed any further, hear me speak.\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


SMALL_VOCAB = 100  # what the first 300 lines of Tiny Shakespeare can fill


def small_corpus(path: Path) -> Path:
    """The first 300 lines of the bundled corpus: enough text for a quick training."""
    lines = bundled_corpus().read_text(encoding="utf-8").splitlines(keepends=True)[:300]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def temporaries(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f".{name}.*.tmp"))


# --- undecodable corpus text --------------------------------------------------------------


@pytest.mark.parametrize("good_lines", [0, 3, 2000], ids=["first-line", "early", "past-8KiB"])
@pytest.mark.parametrize("bad", [b"\xff", "caf\u00e9".encode("latin-1"), b"\xe2\x82"])
def test_undecodable_corpus_names_file_position_and_encoding(
    tmp_path: Path, good_lines: int, bad: bytes
) -> None:
    corpus = tmp_path / "corpus.txt"
    prefix = GOOD_LINE.encode() * good_lines + b"Second Citizen: "
    corpus.write_bytes(prefix + bad + b" more\n" + GOOD_LINE.encode() * 10)
    position = len(prefix) + (3 if bad.startswith(b"caf") else 0)  # the first bad byte
    model_file = tmp_path / "spiece.model"
    model_file.write_bytes(b"the previous model")
    with pytest.raises(ValueError) as caught:
        train_tokenizer(corpus, model_file, vocab_size=SMALL_VOCAB)
    message = str(caught.value)
    assert str(corpus) in message
    assert f"position {position} (line {good_lines + 1})" in message
    assert "utf-8" in message.lower()
    assert model_file.read_bytes() == b"the previous model"
    assert temporaries(tmp_path, "spiece.model") == []


def test_undecodable_second_file_is_the_one_named(tmp_path: Path) -> None:
    good = small_corpus(tmp_path / "good.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(GOOD_LINE.encode() + b"\x80\n")
    with pytest.raises(ValueError, match=r"bad\.txt: the byte at position 61 \(line 2\)"):
        train_tokenizer([good, bad], tmp_path / "m.model", vocab_size=SMALL_VOCAB)


def test_truncated_multibyte_character_at_end_of_file(tmp_path: Path) -> None:
    corpus = tmp_path / "cut.txt"
    corpus.write_bytes(GOOD_LINE.encode() * 2 + "é".encode()[:1])  # cut inside a character
    with pytest.raises(ValueError, match=rf"position {len(GOOD_LINE) * 2} \(line 3\)"):
        train_tokenizer(corpus, tmp_path / "m.model", vocab_size=SMALL_VOCAB)


# --- a vocabulary too small for the corpus ------------------------------------------------


def test_vocab_size_below_what_the_corpus_needs_names_the_minimum(tmp_path: Path) -> None:
    corpus = tmp_path / "abc.txt"
    corpus.write_text("abc def\n" * 100, encoding="utf-8")
    model_file = tmp_path / "m.model"
    with pytest.raises(ValueError, match=r"^vocab_size=5 .*at least (\d+)") as caught:
        train_tokenizer(corpus, model_file, vocab_size=5)
    minimum = int(caught.value.args[0].split("at least ")[1].split(",")[0])
    # the number it names is the real minimum: one less fails the same way, it trains
    with pytest.raises(ValueError, match=rf"^vocab_size={minimum - 1} .*at least {minimum}"):
        train_tokenizer(corpus, model_file, vocab_size=minimum - 1)
    train_tokenizer(corpus, model_file, vocab_size=minimum)
    assert len(Tokenizer(model_file).sp) == minimum


def test_vocab_size_twenty_on_the_bundled_corpus_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^vocab_size=20 is too small .*at least \d+"):
        train_tokenizer(model_file=tmp_path / "m.model", vocab_size=20)
    assert temporaries(tmp_path, "m.model") == []


# --- lone surrogates ------------------------------------------------------------------------

SURROGATE = "To be \ud800 or not"


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda t: t.encode(SURROGATE), "text"),
        (lambda t: t.tokenize(SURROGATE), "text"),
        (lambda t: t([SURROGATE]), r"texts\[0\]"),
        (lambda t: t(["fine", SURROGATE]), r"texts\[1\]"),
        (lambda t: t.piece_to_id("\udfff"), "piece"),
    ],
    ids=["encode", "tokenize", "call", "call-second", "piece_to_id"],
)
def test_lone_surrogate_gets_a_clear_error(tokenizer: Tokenizer, call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument} holds a lone surrogate .* at index"):
        call(tokenizer)


def test_text_with_real_non_ascii_characters_still_encodes(tokenizer: Tokenizer) -> None:
    assert tokenizer.decode(tokenizer.encode("ﬁne ＡＢＣ"), skip_special_tokens=True) == "fine ABC"


# --- ids that are not ints ----------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,where",
    [
        ([[1, "2"]], r"batch\[0\]\[1\]"),
        ([[5, 6], [1, 2.5]], r"batch\[1\]\[1\]"),
        ([[1, None]], r"batch\[0\]\[1\]"),
        ([[1, True]], r"batch\[0\]\[1\]"),
        (["12"], r"batch\[0\]"),
    ],
)
def test_pad_batch_refuses_ids_that_are_not_ints(batch, where: str) -> None:
    with pytest.raises(TypeError, match=rf"^{where} must be"):
        pad_batch(batch, pad_id=0)


def test_pad_batch_refuses_negative_ids() -> None:
    with pytest.raises(ValueError, match=r"^batch\[0\]\[0\] is -100, .*ignored labels"):
        pad_batch([[-100, 5]], pad_id=0)


def test_pad_batch_accepts_numpy_and_tensor_rows() -> None:
    import numpy as np

    out = pad_batch([np.array([4, 5, 6]), torch.tensor([7])], pad_id=0)
    assert out["input_ids"].tolist() == [[4, 5, 6], [7, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --- temporaries of killed writers -----------------------------------------------------------


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path / "c.txt")
    stale = tmp_path / ".m.model.0123456789ab.tmp"  # what a killed run left: no one holds it
    stale.write_bytes(b"half a model")
    others = [tmp_path / ".other.model.0123456789ab.tmp", tmp_path / ".m.model.backup.tmp"]
    for path in others:
        path.write_bytes(b"not ours")
    train_tokenizer(corpus, tmp_path / "m.model", vocab_size=SMALL_VOCAB)
    assert not stale.exists()
    assert all(path.read_bytes() == b"not ours" for path in others)
    assert Tokenizer(tmp_path / "m.model").num_pieces == SMALL_VOCAB


@pytest.mark.skipif(os.name != "posix", reason="locks that outlive no process: POSIX flock")
def test_temporary_of_a_live_writer_is_never_removed(tmp_path: Path) -> None:
    from t5mini.files import replaced_atomically

    corpus = small_corpus(tmp_path / "c.txt")
    model_file = tmp_path / "m.model"
    with replaced_atomically(model_file) as live:  # another writer, still writing
        (live_temporary,) = temporaries(tmp_path, "m.model")
        train_tokenizer(corpus, model_file, vocab_size=SMALL_VOCAB)
        assert live_temporary.exists()
        live.write(b"the live writer's model")
    assert model_file.read_bytes() == b"the live writer's model"
    assert temporaries(tmp_path, "m.model") == []


@pytest.mark.skipif(os.name != "posix", reason="a process holding a lock: POSIX flock")
def test_temporary_locked_by_another_process_is_never_removed(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path / "c.txt")
    held = tmp_path / ".m.model.abcdef012345.tmp"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(held)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('holding', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        train_tokenizer(corpus, tmp_path / "m.model", vocab_size=SMALL_VOCAB)
        assert held.exists()
    finally:
        holder.kill()
        holder.wait()
    train_tokenizer(corpus, tmp_path / "m.model", vocab_size=SMALL_VOCAB)  # its holder is dead now
    assert not held.exists()


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_killed_train_tokenizer_leaves_old_model_and_its_temporary_is_cleaned(
    tmp_path: Path,
) -> None:
    model_file = tmp_path / "spiece.model"
    model_file.write_bytes(b"the previous model")
    script = (
        "from t5mini.tokenizer import train_tokenizer; "
        f"train_tokenizer(model_file={str(model_file)!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not temporaries(tmp_path, "spiece.model") and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    left = temporaries(tmp_path, "spiece.model")
    assert model_file.read_bytes() == b"the previous model" and len(left) == 1
    train_tokenizer(small_corpus(tmp_path / "c.txt"), model_file, vocab_size=SMALL_VOCAB)
    assert temporaries(tmp_path, "spiece.model") == []
    assert Tokenizer(model_file).num_pieces == SMALL_VOCAB


# --- the meta device ------------------------------------------------------------------------


def meta_ids() -> torch.Tensor:
    return torch.zeros(2, 3, dtype=torch.long, device="meta")


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: check_ids("input_ids", meta_ids(), 10), "input_ids"),
        (lambda: check_ids("labels", meta_ids(), 10, allow_ignore=True), "labels"),
        (
            lambda: check_mask("attention_mask", meta_ids(), torch.ones(2, 3), "input_ids"),
            "attention_mask",
        ),
        (
            lambda: check_hidden_states("hidden_states", torch.zeros(2, 4, device="meta"), 4),
            "hidden_states",
        ),
    ],
    ids=["ids", "labels", "mask", "hidden_states"],
)
def test_tensors_on_meta_are_refused_by_name(call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument} is on the meta device"):
        call()


def tiny_config():
    from t5mini import T5Config

    return T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2
    )


def test_model_on_meta_is_refused_with_a_message_that_says_so() -> None:
    from t5mini import T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(tiny_config())
    ids = torch.ones(1, 3, dtype=torch.long)
    for call in (lambda: model(ids, labels=ids), lambda: model.generate(ids, max_new_tokens=2)):
        with pytest.raises(ValueError, match=r"meta device") as caught:
            call()
        assert "Tensor.item()" not in str(caught.value)


def test_ids_on_meta_given_to_a_real_model_are_refused_by_name() -> None:
    from t5mini import T5ForConditionalGeneration

    model = T5ForConditionalGeneration(tiny_config())
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^input_ids is on the meta device"):
        model(ids.to("meta"), labels=ids)
    with pytest.raises(ValueError, match=r"^input_ids is on the meta device"):
        model.generate(ids.to("meta"), max_new_tokens=2)


def test_check_not_meta_names_the_first_meta_parameter() -> None:
    from t5mini.checks import check_not_meta

    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(ValueError, match=r"^model\.1\.weight is on the meta device"):
        check_not_meta("model", module)
    check_not_meta("model", torch.nn.Linear(2, 2))  # real weights pass
    check_not_meta("ids", torch.zeros(1))
