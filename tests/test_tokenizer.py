"""The tokenizer: T5's special ids and sentinels, round trips, batches, errors, and parity
with transformers' T5Tokenizer loading the same spiece.model."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import t5mini
from t5mini.tokenizer import (
    NUM_SENTINELS,
    SHIPPED_MODEL_SENTENCEPIECE_VERSION,
    Tokenizer,
    bundled_corpus,
    shipped_model,
    train_tokenizer,
)

SMALL_VOCAB = 2000

# Strings that exercise the edges: sentinels, special tokens typed as text, whitespace,
# NFKC normalisation, characters outside the vocabulary, empty text.
EDGE_TEXTS = [
    "To be, or <extra_id_0> to be: that is <extra_id_1>",
    "<extra_id_0> not <extra_id_1> the question <extra_id_2>",
    "a<extra_id_99>b<extra_id_50>c",
    "<extra_id_0> <extra_id_1>",
    "<extra_id_100> and <extra_id_01> are plain text",
    "x</s>y",
    "<pad> hi <unk>",
    "  spaced   out  ",
    "tab\there\nnewline",
    "ﬁne ＡＢＣ café",
    "In 1606, {Macbeth} cost $3 & more",
    " . , ; hi .",
    "",
    " ",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "spiece.model"
    return train_tokenizer(model_file=path, vocab_size=SMALL_VOCAB)


@pytest.fixture(scope="module")
def small(small_model: Path) -> Tokenizer:
    return Tokenizer(small_model)


@pytest.fixture(scope="module")
def corpus_lines() -> list[str]:
    text = bundled_corpus().read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


# --- the shipped model and package data ------------------------------------------------


def test_shipped_model_is_package_data(tokenizer: Tokenizer) -> None:
    package_dir = Path(t5mini.__file__).resolve().parent
    assert shipped_model().resolve() == package_dir / "assets" / "spiece.model"
    data = importlib.resources.files("t5mini").joinpath("assets", "spiece.model").read_bytes()
    assert tokenizer.model_file == shipped_model()
    assert tokenizer.sp.serialized_model_proto() == data
    assert t5mini.Tokenizer is Tokenizer


def test_special_ids(tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2)
    assert tokenizer.sp.bos_id() == -1  # T5 has no BOS
    assert [tokenizer.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert tokenizer.num_pieces == 8000
    assert tokenizer.vocab_size == len(tokenizer) == 8100
    assert tokenizer.sp.is_control(0) and tokenizer.sp.is_control(1)
    assert tokenizer.sp.is_unknown(2)
    assert [tokenizer.is_special(i) for i in (0, 1, 2, 3, 8099)] == [True, True, True, False, True]


@pytest.mark.parametrize("which", ["shipped", "small"])
def test_sentinel_ids(which: str, tokenizer: Tokenizer, small: Tokenizer) -> None:
    tok = tokenizer if which == "shipped" else small
    pieces = 8000 if which == "shipped" else SMALL_VOCAB
    assert tok.num_pieces == pieces
    assert tok.vocab_size == pieces + NUM_SENTINELS
    assert tok.sentinel_id(0) == pieces + 99 == tok.vocab_size - 1
    assert tok.sentinel_id(99) == pieces
    ids = [tok.sentinel_id(i) for i in range(NUM_SENTINELS)]
    assert ids == list(range(pieces + 99, pieces - 1, -1))
    for i, token_id in enumerate(ids):
        assert tok.id_to_piece(token_id) == f"<extra_id_{i}>"
        assert tok.piece_to_id(f"<extra_id_{i}>") == token_id
        assert tok.encode(f"<extra_id_{i}>", add_eos=False) == [token_id]
    assert tok.decode(ids) == "".join(f"<extra_id_{i}>" for i in range(NUM_SENTINELS))
    for bad in (-1, NUM_SENTINELS):
        with pytest.raises(ValueError, match=r"^i must be an int in \[0, 99\]"):
            tok.sentinel_id(bad)
    for bad in (2.0, True, "0"):
        with pytest.raises(TypeError, match=r"^i must be an int"):
            tok.sentinel_id(bad)


def test_extra_ids_argument(small_model: Path) -> None:
    none = Tokenizer(small_model, extra_ids=0)
    assert none.vocab_size == SMALL_VOCAB
    assert SMALL_VOCAB - 1 not in none.encode("<extra_id_0>")  # plain text now
    ten = Tokenizer(small_model, extra_ids=10)
    assert ten.sentinel_id(0) == SMALL_VOCAB + 9 and ten.sentinel_id(9) == SMALL_VOCAB
    with pytest.raises(ValueError, match=r"^i must be an int in \[0, 9\]"):
        ten.sentinel_id(10)
    with pytest.raises(ValueError, match="^extra_ids"):
        Tokenizer(small_model, extra_ids=-1)


def test_piece_lookup(tokenizer: Tokenizer) -> None:
    the = tokenizer.piece_to_id("\u2581the")
    assert the > 2 and tokenizer.id_to_piece(the) == "\u2581the"
    assert tokenizer.piece_to_id("no-such-piece") == tokenizer.unk_id
    assert tokenizer.piece_to_id("</s>") == 1
    with pytest.raises(TypeError, match="^piece must be a str"):
        tokenizer.piece_to_id(5)


# --- encoding and decoding --------------------------------------------------------------


def test_encode_appends_eos(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Now is the winter of our discontent")
    assert ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
    assert (
        tokenizer.encode("Now is the winter", add_eos=False)
        == tokenizer.encode("Now is the winter")[:-1]
    )
    assert tokenizer.encode("") == [tokenizer.eos_id]
    assert tokenizer.encode("", add_eos=False) == []
    assert tokenizer.tokenize("the king") == ["\u2581the", "\u2581king"]


def test_special_strings_in_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("To be, or <extra_id_0> to be <extra_id_1>")
    plain = tokenizer.encode("To be, or", add_eos=False)
    assert ids[: len(plain)] == plain
    assert ids[len(plain)] == tokenizer.sentinel_id(0)
    assert ids[-2:] == [tokenizer.sentinel_id(1), tokenizer.eos_id]
    assert tokenizer.encode("x</s>y", add_eos=False)[2] == tokenizer.eos_id
    assert tokenizer.encode("<pad>", add_eos=False) == [tokenizer.pad_id]
    # only the 100 real sentinels are special; <extra_id_100> is text
    assert all(i < tokenizer.num_pieces for i in tokenizer.encode("<extra_id_100>"))


def test_round_trip_corpus_lines(
    tokenizer: Tokenizer, small: Tokenizer, corpus_lines: list[str]
) -> None:
    for tok in (tokenizer, small):
        for line in corpus_lines:
            ids = tok.encode(line)
            assert tok.unk_id not in ids, line
            # nmt_nfkc collapses whitespace; the corpus is ASCII, so nothing else changes
            assert tok.decode(ids, skip_special_tokens=True) == " ".join(line.split())
            assert tok.decode(ids) == " ".join(line.split()) + "</s>"


def test_decode_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a <extra_id_0> b") + [tokenizer.pad_id, tokenizer.pad_id]
    assert tokenizer.decode(ids) == "a<extra_id_0> b</s><pad><pad>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a b"
    unk = tokenizer.encode("{x}", add_eos=False)
    assert tokenizer.unk_id in unk
    assert tokenizer.decode(unk) == "<unk>x<unk>"
    assert tokenizer.decode(unk, skip_special_tokens=True) == "x"
    assert tokenizer.decode([]) == ""


def test_decode_accepts_tensors_and_lists(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("My kingdom for a horse!")
    text = "My kingdom for a horse!</s>"
    assert tokenizer.decode(ids) == tokenizer.decode(tuple(ids)) == text
    assert tokenizer.decode(torch.tensor(ids)) == text
    batch = tokenizer(["My kingdom for a horse!", "A horse!"])
    assert tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) == [
        "My kingdom for a horse!",
        "A horse!",
    ]
    assert tokenizer.batch_decode(batch["input_ids"].tolist())[1] == "A horse!</s>" + "<pad>" * (
        batch["input_ids"].shape[1] - len(tokenizer.encode("A horse!"))
    )


# --- batches ----------------------------------------------------------------------------

TEXTS = ["Now is the winter of our discontent", "A horse!", "My kingdom for a horse!"]


def test_batch_padding_and_mask(tokenizer: Tokenizer) -> None:
    encoded = [tokenizer.encode(t) for t in TEXTS]
    width = max(map(len, encoded))
    batch = tokenizer(TEXTS)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, width)
    for row, mask, ids in zip(
        batch["input_ids"].tolist(), batch["attention_mask"].tolist(), encoded
    ):
        assert row == ids + [tokenizer.pad_id] * (width - len(ids))
        assert mask == [1] * len(ids) + [0] * (width - len(ids))
    # a single string is a batch of one
    single = tokenizer("A horse!")
    assert single["input_ids"].tolist() == [tokenizer.encode("A horse!")]


def test_batch_padding_modes(tokenizer: Tokenizer) -> None:
    encoded = [tokenizer.encode(t) for t in TEXTS]
    lists = tokenizer(TEXTS, padding=False, return_tensors=None)
    assert lists["input_ids"] == encoded
    assert lists["attention_mask"] == [[1] * len(ids) for ids in encoded]
    padded = tokenizer(TEXTS, padding="max_length", max_length=16)
    assert padded["input_ids"].shape == (3, 16)
    assert padded["attention_mask"].sum(dim=1).tolist() == [len(ids) for ids in encoded]
    # max_length without truncation does not cut; padding=True pads to the longest row
    longest = tokenizer(TEXTS, max_length=3)
    assert longest["input_ids"].shape == (3, max(map(len, encoded)))
    same = tokenizer(["a b", "b a"], padding=False)
    assert same["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="padding=False"):
        tokenizer(TEXTS, padding=False)


def test_truncation_keeps_eos(tokenizer: Tokenizer) -> None:
    encoded = [tokenizer.encode(t) for t in TEXTS]
    batch = tokenizer(TEXTS, max_length=5, truncation=True)
    assert batch["input_ids"].shape == (3, 5)
    for row, mask, ids in zip(
        batch["input_ids"].tolist(), batch["attention_mask"].tolist(), encoded
    ):
        n = min(len(ids), 5)
        assert row[:n] == ids[: n - 1] + [tokenizer.eos_id]
        assert row[n:] == [tokenizer.pad_id] * (5 - n)
        assert mask == [1] * n + [0] * (5 - n)
    no_eos = tokenizer(TEXTS, max_length=3, truncation=True, add_eos=False)
    assert no_eos["input_ids"].tolist() == [ids[:3] for ids in encoded]
    one = tokenizer(TEXTS, max_length=1, truncation=True)
    assert one["input_ids"].tolist() == [[tokenizer.eos_id]] * 3


# --- errors -----------------------------------------------------------------------------


def test_bad_input_errors(tokenizer: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="texts is empty"):
        tokenizer([])
    with pytest.raises(ValueError, match=r"^max_length=None.*truncation=True"):
        tokenizer(TEXTS, truncation=True)
    with pytest.raises(ValueError, match=r"^max_length=None.*padding='max_length'"):
        tokenizer(TEXTS, padding="max_length")
    with pytest.raises(
        ValueError, match=r"^ids\[1\] is 8100, outside the vocabulary range \[0, 8100\)"
    ):
        tokenizer.decode([5, 8100])
    with pytest.raises(ValueError, match=r"^ids\[1\] is -100,.*ignored labels"):
        tokenizer.decode(torch.tensor([5, -100]))
    with pytest.raises(ValueError, match=r"^ids must be one sequence \(1-D\).*batch_decode"):
        tokenizer.decode(torch.zeros(2, 2, dtype=torch.long))
    missing = tmp_path / "nowhere" / "spiece.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Tokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="^model_file .* is not a SentencePiece model"):
        Tokenizer(garbage)


# Each public entry point with a bad value for one argument: (call, error type, argument name).
BAD_CALLS = {
    "encode(int)": (lambda t: t.encode(5), TypeError, "text"),
    "encode(list)": (lambda t: t.encode(["a"]), TypeError, "text"),
    "encode(bytes)": (lambda t: t.encode(b"a"), TypeError, "text"),
    "encode add_eos=1": (lambda t: t.encode("a", add_eos=1), TypeError, "add_eos"),
    "tokenize(None)": (lambda t: t.tokenize(None), TypeError, "text"),
    "call(int)": (lambda t: t(5), TypeError, "texts"),
    "call(list with int)": (lambda t: t(["a", 3]), TypeError, r"texts\[1\]"),
    "call(generator)": (lambda t: t(x for x in "ab"), TypeError, "texts"),
    "call max_length=0": (lambda t: t(TEXTS, max_length=0), ValueError, "max_length"),
    "call max_length=2.5": (lambda t: t(TEXTS, max_length=2.5), TypeError, "max_length"),
    "call max_length=True": (lambda t: t(TEXTS, max_length=True), TypeError, "max_length"),
    "call padding='left'": (lambda t: t(TEXTS, padding="left"), ValueError, "padding"),
    "call padding=1": (lambda t: t(TEXTS, padding=1), ValueError, "padding"),
    "call truncation='yes'": (
        lambda t: t(TEXTS, max_length=4, truncation="yes"),
        TypeError,
        "truncation",
    ),
    "call truncation=1": (lambda t: t(TEXTS, max_length=4, truncation=1), TypeError, "truncation"),
    "call truncation=None": (lambda t: t(TEXTS, truncation=None), TypeError, "truncation"),
    "call add_eos=0": (lambda t: t(TEXTS, add_eos=0), TypeError, "add_eos"),
    "call return_tensors='np'": (
        lambda t: t(TEXTS, return_tensors="np"),
        ValueError,
        "return_tensors",
    ),
    "call padding=False ragged": (lambda t: t(TEXTS, padding=False), ValueError, "padding"),
    "decode(str)": (lambda t: t.decode("56"), TypeError, "ids"),
    "decode(bytes)": (lambda t: t.decode(b"56"), TypeError, "ids"),
    "decode(int)": (lambda t: t.decode(5), TypeError, "ids"),
    "decode(None)": (lambda t: t.decode(None), TypeError, "ids"),
    "decode([5.7])": (lambda t: t.decode([5.7]), TypeError, r"ids\[0\]"),
    "decode([5.0])": (lambda t: t.decode([4, 5.0]), TypeError, r"ids\[1\]"),
    "decode([True])": (lambda t: t.decode([True]), TypeError, r"ids\[0\]"),
    "decode(['5'])": (lambda t: t.decode(["5"]), TypeError, r"ids\[0\]"),
    "decode(float tensor)": (lambda t: t.decode(torch.tensor([5.0])), TypeError, "ids"),
    "decode(float array)": (lambda t: t.decode(np.array([5.7])), TypeError, "ids"),
    "decode(0-d tensor)": (lambda t: t.decode(torch.tensor(5)), ValueError, "ids"),
    "decode(2-D array)": (lambda t: t.decode(np.zeros((2, 2), dtype=int)), ValueError, "ids"),
    "decode([[5]])": (lambda t: t.decode([[5, 6]]), TypeError, r"ids\[0\]"),
    "decode skip='no'": (
        lambda t: t.decode([5], skip_special_tokens="no"),
        TypeError,
        "skip_special_tokens",
    ),
    "batch_decode(str)": (lambda t: t.batch_decode("56"), TypeError, "sequences"),
    "batch_decode(flat list)": (lambda t: t.batch_decode([5, 6]), TypeError, r"sequences\[0\]"),
    "batch_decode(1-D tensor)": (
        lambda t: t.batch_decode(torch.tensor([5, 6])),
        ValueError,
        "sequences",
    ),
    "batch_decode(['56'])": (lambda t: t.batch_decode(["56"]), TypeError, r"sequences\[0\]"),
    "batch_decode out of range": (
        lambda t: t.batch_decode([[5], [9000]]),
        ValueError,
        r"sequences\[1\]",
    ),
    "id_to_piece(-1)": (lambda t: t.id_to_piece(-1), ValueError, "token_id"),
    "id_to_piece(8100)": (lambda t: t.id_to_piece(8100), ValueError, "token_id"),
    "id_to_piece(1.0)": (lambda t: t.id_to_piece(1.0), TypeError, "token_id"),
    "id_to_piece(True)": (lambda t: t.id_to_piece(True), TypeError, "token_id"),
    "is_special('1')": (lambda t: t.is_special("1"), TypeError, "token_id"),
    "piece_to_id(None)": (lambda t: t.piece_to_id(None), TypeError, "piece"),
    "sentinel_id(100)": (lambda t: t.sentinel_id(100), ValueError, "i"),
    "sentinel_id(0.0)": (lambda t: t.sentinel_id(0.0), TypeError, "i"),
    "Tokenizer(model_file=5)": (lambda t: Tokenizer(5), TypeError, "model_file"),
    "Tokenizer(extra_ids=1.5)": (lambda t: Tokenizer(extra_ids=1.5), TypeError, "extra_ids"),
    "Tokenizer(extra_ids=True)": (lambda t: Tokenizer(extra_ids=True), TypeError, "extra_ids"),
    "Tokenizer(extra_ids=-1)": (lambda t: Tokenizer(extra_ids=-1), ValueError, "extra_ids"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_inputs_name_the_argument(case: str, tokenizer: Tokenizer) -> None:
    call, error, argument = BAD_CALLS[case]
    with pytest.raises(error, match=rf"^{argument}(?!\w)"):
        call(tokenizer)


def test_ids_of_any_integer_type_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("My kingdom for a horse!")
    text = tokenizer.decode(ids)
    assert tokenizer.decode([np.int64(i) for i in ids]) == text
    assert tokenizer.decode([np.int32(i) for i in ids]) == text
    assert tokenizer.decode(np.array(ids)) == text
    assert tokenizer.decode(np.array(ids, dtype=np.int32)) == text
    assert tokenizer.decode(torch.tensor(ids, dtype=torch.int32)) == text
    assert tokenizer.decode(list(torch.tensor(ids))) == text  # 0-d tensors, one per id
    assert tokenizer.decode(range(3, 6)) == tokenizer.decode([3, 4, 5])
    assert tokenizer.batch_decode(np.array([ids, ids])) == [text, text]
    assert tokenizer.id_to_piece(np.int64(ids[0])) == tokenizer.id_to_piece(ids[0])
    assert tokenizer.is_special(np.int64(1))
    assert tokenizer.sentinel_id(np.int64(0)) == tokenizer.vocab_size - 1


def test_a_bare_string_is_one_text(tokenizer: Tokenizer) -> None:
    # as in transformers: tokenizer("text") encodes one text (a batch of one)
    assert tokenizer("A horse!")["input_ids"].tolist() == [tokenizer.encode("A horse!")]
    assert tokenizer(("A horse!", "A"))["input_ids"].shape[0] == 2  # a tuple is a batch


TRAIN_BAD_CALLS = {
    "vocab_size=2": (dict(vocab_size=2), ValueError, "vocab_size"),
    "vocab_size=2.5": (dict(vocab_size=2.5), TypeError, "vocab_size"),
    "vocab_size=True": (dict(vocab_size=True), TypeError, "vocab_size"),
    "vocab_size='8000'": (dict(vocab_size="8000"), TypeError, "vocab_size"),
    "character_coverage=0": (dict(character_coverage=0), ValueError, "character_coverage"),
    "character_coverage=1.5": (dict(character_coverage=1.5), ValueError, "character_coverage"),
    "character_coverage=nan": (
        dict(character_coverage=float("nan")),
        ValueError,
        "character_coverage",
    ),
    "character_coverage='1'": (dict(character_coverage="1"), TypeError, "character_coverage"),
    "normalization_rule_name='x'": (
        dict(normalization_rule_name="nfkc_x"),
        ValueError,
        "normalization_rule_name",
    ),
    "corpus=5": (dict(corpus=5), TypeError, "corpus"),
    "corpus=[5]": (dict(corpus=[5]), TypeError, r"corpus\[0\]"),
    "corpus=[]": (dict(corpus=[]), ValueError, "corpus"),
    "model_file=5": (dict(model_file=5), TypeError, "model_file"),
    "model_file=None": (dict(model_file=None), TypeError, "model_file"),
}


@pytest.mark.parametrize("case", list(TRAIN_BAD_CALLS))
def test_train_tokenizer_bad_inputs(case: str, tmp_path: Path) -> None:
    kwargs, error, argument = TRAIN_BAD_CALLS[case]
    kwargs = {"model_file": tmp_path / "m.model", **kwargs}
    with pytest.raises(error, match=rf"^{argument}(?!\w)"):
        train_tokenizer(**kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_train_tokenizer_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(tmp_path / "missing.txt", model_file=tmp_path / "m.model")
    with pytest.raises(FileNotFoundError, match=r"^model_file .*nowhere"):
        train_tokenizer(model_file=tmp_path / "nowhere" / "m.model")
    with pytest.raises(IsADirectoryError, match="^model_file"):
        train_tokenizer(model_file=tmp_path)


# --- a failed training loses nothing (issue: it used to truncate the model file first) ---


@pytest.fixture
def existing_model(tmp_path: Path) -> Path:
    """A directory holding a valid model file that a failed training must leave intact."""
    path = tmp_path / "models" / "spiece.model"
    path.parent.mkdir()
    shutil.copyfile(shipped_model(), path)
    return path


def assert_untouched(model_file: Path) -> None:
    assert model_file.read_bytes() == shipped_model().read_bytes()
    assert sorted(p.name for p in model_file.parent.iterdir()) == [model_file.name]  # no temp file


def test_vocabulary_too_large_keeps_the_old_model(existing_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("to be or not to be\nthat is the question\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^vocab_size=500 is too large"):
        train_tokenizer(corpus, model_file=existing_model, vocab_size=500)
    assert_untouched(existing_model)


def test_empty_corpus_keeps_the_old_model(existing_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^corpus .*no text"):
        train_tokenizer([corpus, corpus], model_file=existing_model, vocab_size=100)
    assert_untouched(existing_model)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, MemoryError])
def test_interrupted_training_keeps_the_old_model(
    error: type[BaseException], existing_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_written(**kwargs) -> None:
        kwargs["model_writer"].write(b"half a model")
        raise error("interrupted")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", half_written)
    with pytest.raises(error):
        train_tokenizer(model_file=existing_model, vocab_size=100)
    assert_untouched(existing_model)


def test_training_replaces_the_old_model(
    existing_model: Path, tmp_path: Path, corpus_lines: list[str]
) -> None:
    corpus = tmp_path / "part.txt"
    corpus.write_text("\n".join(corpus_lines[:2000]), encoding="utf-8")
    train_tokenizer(corpus, model_file=existing_model, vocab_size=100)
    assert Tokenizer(existing_model).num_pieces == 100
    assert sorted(p.name for p in existing_model.parent.iterdir()) == [existing_model.name]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_model_file_mode_follows_the_umask(
    umask: int, tmp_path: Path, corpus_lines: list[str]
) -> None:
    corpus = tmp_path / "part.txt"
    corpus.write_text("\n".join(corpus_lines[:2000]), encoding="utf-8")
    previous = os.umask(umask)
    try:
        path = train_tokenizer(corpus, model_file=tmp_path / "m.model", vocab_size=100)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --- training ---------------------------------------------------------------------------


def test_training_is_deterministic(small_model: Path, tmp_path: Path) -> None:
    again = train_tokenizer(model_file=tmp_path / "again.model", vocab_size=SMALL_VOCAB)
    assert again.read_bytes() == small_model.read_bytes()


def test_training_on_several_files(tmp_path: Path, corpus_lines: list[str]) -> None:
    half = len(corpus_lines) // 2
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n".join(corpus_lines[:half]) + "\n", encoding="utf-8")
    second.write_text("\n".join(corpus_lines[half:]) + "\n", encoding="utf-8")
    from_two = train_tokenizer(
        [first, str(second)], model_file=tmp_path / "two.model", vocab_size=4000
    )
    # the two halves hold the bundled corpus's lines: the same model as training on it
    bundled = train_tokenizer(model_file=tmp_path / "bundled.model", vocab_size=4000)
    assert from_two.read_bytes() == bundled.read_bytes()
    assert Tokenizer(from_two).num_pieces == 4000


@pytest.mark.skipif(
    spm.__version__ != SHIPPED_MODEL_SENTENCEPIECE_VERSION,
    reason=f"the shipped model was trained with sentencepiece {SHIPPED_MODEL_SENTENCEPIECE_VERSION}",
)
def test_shipped_model_is_reproduced_by_training(tmp_path: Path) -> None:
    retrained = train_tokenizer(model_file=tmp_path / "spiece.model")
    assert retrained.read_bytes() == shipped_model().read_bytes()


# --- parity with transformers -----------------------------------------------------------


def reference_tokenizer(model_file: Path, directory: Path):
    """transformers' T5Tokenizer reading ``model_file`` the way it reads a released checkpoint."""
    pytest.importorskip(
        "google.protobuf", reason="transformers needs protobuf to read a spiece.model file"
    )
    from transformers import T5Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, directory / "spiece.model")
    return T5Tokenizer.from_pretrained(str(directory), extra_ids=NUM_SENTINELS)


@pytest.mark.parametrize("which", ["shipped", "small"])
def test_parity_with_transformers(
    which: str,
    tokenizer: Tokenizer,
    small: Tokenizer,
    small_model: Path,
    corpus_lines: list[str],
    tmp_path: Path,
) -> None:
    ours = tokenizer if which == "shipped" else small
    ref = reference_tokenizer(ours.model_file, tmp_path / which)
    assert len(ref) == ours.vocab_size
    assert (ref.pad_token_id, ref.eos_token_id, ref.unk_token_id) == (0, 1, 2)
    for i in range(NUM_SENTINELS):
        assert ref.convert_tokens_to_ids(f"<extra_id_{i}>") == ours.sentinel_id(i)
    lines = corpus_lines if which == "shipped" else corpus_lines[::8]
    for text in EDGE_TEXTS + lines:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text
        # ref.tokenize shows the raw text of an unknown piece; the ids are what count
        assert ours.tokenize(text) == ref.convert_ids_to_tokens(ids[:-1]), text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            )


def test_batch_parity_with_transformers(tokenizer: Tokenizer, tmp_path: Path) -> None:
    ref = reference_tokenizer(tokenizer.model_file, tmp_path / "ref")
    texts = TEXTS + EDGE_TEXTS[:4]
    settings = [
        {},
        {"max_length": 6, "truncation": True},
        {"max_length": 40, "padding": "max_length"},
        {"max_length": 7, "padding": "max_length", "truncation": True},
    ]
    for kwargs in settings:
        ours = tokenizer(texts, **kwargs)
        expected = ref(texts, return_tensors="pt", **{"padding": True, **kwargs})
        torch.testing.assert_close(ours["input_ids"], expected["input_ids"], atol=0, rtol=0)
        torch.testing.assert_close(
            ours["attention_mask"], expected["attention_mask"], atol=0, rtol=0
        )
        assert tokenizer.batch_decode(
            ours["input_ids"], skip_special_tokens=True
        ) == ref.batch_decode(expected["input_ids"], skip_special_tokens=True)


# --- properties -------------------------------------------------------------------------

# Every character of the corpus has a piece (character_coverage=1.0), so text made of them
# round-trips exactly, up to the whitespace that SentencePiece strips and collapses.
CORPUS_CHARACTERS = "".join(sorted(set(bundled_corpus().read_text(encoding="utf-8"))))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=CORPUS_CHARACTERS, max_size=60))
def test_round_trip_property(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids[-1] == tokenizer.eos_id and tokenizer.unk_id not in ids
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(text.split())
    assert tokenizer.encode(tokenizer.decode(ids[:-1])) == ids  # decoding loses nothing more


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_any_text_encodes_to_valid_ids(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids[-1] == tokenizer.eos_id and all(0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    batch = tokenizer([text, "A horse!"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][0, : len(ids)].tolist() == ids


FRAGMENTS = st.sampled_from(
    [
        "the",
        " king",
        "  ",
        "\t",
        "\n",
        ",",
        "é",
        "{",
        "ＡＢ",
        "ﬁ",
        "3",
        "<extra_id_0>",
        "<extra_id_42>",
        "<extra_id_100>",
        "</s>",
        "<pad>",
        "<unk>",
        "<",
        ">",
        "▁",
        " x ",
    ]
)


@pytest.fixture(scope="module")
def reference(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory):
    return reference_tokenizer(tokenizer.model_file, tmp_path_factory.mktemp("reference"))


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(FRAGMENTS, max_size=8))
def test_parity_property(tokenizer: Tokenizer, reference, parts: list[str]) -> None:
    text = "".join(parts)
    ids = tokenizer.encode(text)
    assert ids == reference(text).input_ids
    for skip in (False, True):
        assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(
            ids, skip_special_tokens=skip
        )
