"""The tokenizer: T5's special ids and sentinels, round trips, batches, errors, and parity
with transformers' T5Tokenizer loading the same spiece.model."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

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
    for bad in (-1, NUM_SENTINELS, 2.0, True):
        with pytest.raises(ValueError, match="sentinel index"):
            tok.sentinel_id(bad)


def test_extra_ids_argument(small_model: Path) -> None:
    none = Tokenizer(small_model, extra_ids=0)
    assert none.vocab_size == SMALL_VOCAB
    assert SMALL_VOCAB - 1 not in none.encode("<extra_id_0>")  # plain text now
    ten = Tokenizer(small_model, extra_ids=10)
    assert ten.sentinel_id(0) == SMALL_VOCAB + 9 and ten.sentinel_id(9) == SMALL_VOCAB
    with pytest.raises(ValueError, match="sentinel index"):
        ten.sentinel_id(10)
    with pytest.raises(ValueError, match="extra_ids"):
        Tokenizer(small_model, extra_ids=-1)


def test_piece_lookup(tokenizer: Tokenizer) -> None:
    the = tokenizer.piece_to_id("\u2581the")
    assert the > 2 and tokenizer.id_to_piece(the) == "\u2581the"
    assert tokenizer.piece_to_id("no-such-piece") == tokenizer.unk_id
    assert tokenizer.piece_to_id("</s>") == 1
    with pytest.raises(TypeError, match="str"):
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
    with pytest.raises(TypeError, match="expects text: str, got int"):
        tokenizer.encode(5)
    with pytest.raises(TypeError, match="expects text: str, got list"):
        tokenizer.encode(["a"])
    with pytest.raises(TypeError, match="list of str"):
        tokenizer(["a", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        tokenizer([])
    with pytest.raises(ValueError, match="padding='left'"):
        tokenizer(TEXTS, padding="left")
    with pytest.raises(ValueError, match="truncation=True needs a max_length"):
        tokenizer(TEXTS, truncation=True)
    with pytest.raises(ValueError, match="padding='max_length' needs a max_length"):
        tokenizer(TEXTS, padding="max_length")
    with pytest.raises(ValueError, match="max_length=0"):
        tokenizer(TEXTS, max_length=0)
    with pytest.raises(ValueError, match="return_tensors='np'"):
        tokenizer(TEXTS, return_tensors="np")
    with pytest.raises(ValueError, match=r"token id 8100 is out of range: valid ids are 0\.\.8099"):
        tokenizer.decode([5, 8100])
    with pytest.raises(ValueError, match=r"token id -100 .*ignored labels"):
        tokenizer.decode(torch.tensor([5, -100]))
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.id_to_piece(-1)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*batch_decode"):
        tokenizer.decode(torch.zeros(2, 2, dtype=torch.long))
    missing = tmp_path / "nowhere" / "spiece.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Tokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a SentencePiece model"):
        Tokenizer(garbage)


def test_train_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(tmp_path / "missing.txt", model_file=tmp_path / "m.model")
    with pytest.raises(ValueError, match="corpus=\\[\\]"):
        train_tokenizer([], model_file=tmp_path / "m.model")
    with pytest.raises(ValueError, match="vocab_size=2"):
        train_tokenizer(model_file=tmp_path / "m.model", vocab_size=2)


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
