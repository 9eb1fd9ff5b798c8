# Generated from chapters/01_tokenizer.md — edit the chapter, not this file.

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from t5mini.checks import (
    check_bool,
    check_choice,
    check_float,
    check_id_batch,
    check_int,
    check_text,
    check_texts,
    check_token_id,
    check_token_ids,
)
from t5mini.files import check_existing_files, check_new_file, replaced_atomically, text_lines


def bundled_corpus() -> Path:
    """Path of the Tiny Shakespeare corpus shipped inside the package."""
    return Path(str(resources.files("t5mini") / "assets" / "tinyshakespeare.txt"))


def shipped_model() -> Path:
    """Path of the SentencePiece model shipped inside the package (``assets/spiece.model``)."""
    return Path(str(resources.files("t5mini") / "assets" / "spiece.model"))


NUM_SENTINELS = 100  # T5's <extra_id_0> ... <extra_id_99>
PAD_PIECE, EOS_PIECE, UNK_PIECE = "<pad>", "</s>", "<unk>"
# The sentencepiece release that trained the shipped spiece.model (training is deterministic
# for a given release; another release may cut a few pieces differently).
SHIPPED_MODEL_SENTENCEPIECE_VERSION = "0.2.3"


NORMALIZATION_RULES = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")  # SentencePiece's


def _corpus_paths(corpus: Any) -> list[Path]:
    """The corpus files as paths (default: the bundled corpus); raise unless they hold text."""
    paths = [bundled_corpus()] if corpus is None else check_existing_files("corpus", corpus)
    if next(_corpus_lines(paths), None) is None:
        raise ValueError(f"corpus {[str(p) for p in paths]} has no text, only empty lines")
    return paths


def _corpus_lines(paths: Sequence[Path], errors: list[ValueError] | None = None) -> Iterator[str]:
    """The non-empty lines of the corpus files, in order; a read error also goes to ``errors``."""
    try:
        for path in paths:
            for line in text_lines(path):  # undecodable bytes: an error naming file and position
                if line.strip():
                    yield line.rstrip("\n")
    except ValueError as error:  # the trainer turns it into a bare RuntimeError: keep it
        if errors is not None:
            errors.append(error)
        raise


def _training_error(
    error: RuntimeError, vocab_size: int, corpus_errors: list[ValueError]
) -> Exception:
    """The error to raise for a failed training: one that names its cause."""
    message = str(error)
    if corpus_errors:
        return corpus_errors[0]
    if "Vocabulary size too high" in message:
        reason = message.split("] ")[-1]  # "Vocabulary size too high (...). Please set ..."
        return ValueError(f"vocab_size={vocab_size} is too large for this corpus: {reason}")
    if needed := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: it needs at least "
            f"{needed.group(1)}, a piece for each character it keeps and <pad>, </s>, <unk> "
            "(a lower character_coverage keeps fewer characters)"
        )
    return error


def train_tokenizer(
    corpus: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model_file: str | os.PathLike = "spiece.model",
    vocab_size: int = 8000,
    character_coverage: float = 1.0,
    normalization_rule_name: str = "nmt_nfkc",
) -> Path:
    """Train a T5-style SentencePiece unigram model (pad 0, eos 1, unk 2, no bos); return it."""
    paths, model_file = _corpus_paths(corpus), check_new_file("model_file", model_file)
    check_int("vocab_size", vocab_size, 4)  # the 3 special pieces and at least one more
    check_float("character_coverage", character_coverage, 0, 1, low_open=True)
    check_choice("normalization_rule_name", normalization_rule_name, NORMALIZATION_RULES)
    corpus_errors: list[ValueError] = []  # what reading the corpus raised inside the trainer
    try:
        with replaced_atomically(model_file) as writer:  # a failed training keeps the old file
            spm.SentencePieceTrainer.train(
                sentence_iterator=_corpus_lines(paths, corpus_errors),  # no path in the model
                model_writer=writer,
                model_type="unigram",
                vocab_size=vocab_size,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,  # T5 has no beginning-of-sequence token
                pad_piece=PAD_PIECE,
                eos_piece=EOS_PIECE,
                unk_piece=UNK_PIECE,
                normalization_rule_name=normalization_rule_name,
                character_coverage=character_coverage,
                byte_fallback=False,
                input_sentence_size=0,  # every line, no random sample
                num_threads=1,  # one thread: the same corpus always gives the same model
                minloglevel=2,  # keep the trainer's log quiet
            )
    except RuntimeError as error:  # sentencepiece's errors, made to name their cause
        raise _training_error(error, vocab_size, corpus_errors) from None
    return model_file


def _load_sentencepiece(model_file: Any) -> tuple[Path, spm.SentencePieceProcessor]:
    """Read a SentencePiece model; raise unless the file exists and defines pad, eos and unk."""
    if model_file is not None and not isinstance(model_file, (str, os.PathLike)):
        raise TypeError(f"model_file must be a path or None, got {type(model_file).__name__}")
    path = shipped_model() if model_file is None else Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"model_file: SentencePiece model not found: {path}")
    try:
        proto = path.read_bytes()
        if not proto:  # an empty protocol buffer parses, as a model with no pieces
            raise RuntimeError("the file is empty (0 bytes)")
        sp = spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as error:
        message = f"model_file {str(path)!r} is not a SentencePiece model: {error}"
        raise ValueError(message) from None
    for name in ("pad", "eos", "unk"):
        if getattr(sp, f"{name}_id")() < 0:
            message = f"model_file {str(path)!r} defines no {name} piece; T5 needs all three"
            raise ValueError(message)
    return path, sp


def _special_pattern(specials: dict[str, int]) -> re.Pattern[str]:
    """A regular expression that finds the special strings in a text, longest first."""
    return re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")


class SentencePieceVocabulary:
    """T5's ids: the pieces of a SentencePiece model, then ``extra_ids`` sentinels above them."""

    def __init__(self, model_file: str | os.PathLike | None = None, extra_ids: int = NUM_SENTINELS):
        """Load ``model_file`` (default: t5mini's shipped model); add ``extra_ids`` sentinels."""
        self.model_file, self.sp = _load_sentencepiece(model_file)
        self.extra_ids, self.num_pieces = check_int("extra_ids", extra_ids, 0), len(self.sp)
        self.pad_id, self.eos_id, self.unk_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()
        specials = {self.sp.id_to_piece(i): i for i in (self.pad_id, self.eos_id, self.unk_id)}
        specials |= {f"<extra_id_{i}>": self.sentinel_id(i) for i in range(self.extra_ids)}
        self.special_ids = specials  # the strings that stand for one id wherever they occur
        self.special_pattern = _special_pattern(specials)

    @property
    def vocab_size(self) -> int:
        """Number of ids: SentencePiece pieces plus sentinels."""
        return self.num_pieces + self.extra_ids

    def __len__(self) -> int:
        """Number of ids, the same as ``vocab_size``."""
        return self.vocab_size

    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_i>``: ``<extra_id_0>`` is the highest id, and they count down."""
        return self.vocab_size - 1 - check_int("i", i, 0, self.extra_ids - 1)

    def id_to_piece(self, token_id: int) -> str:
        """The piece (or ``<extra_id_N>``) that ``token_id`` stands for."""
        token_id = check_token_id("token_id", token_id, self.vocab_size)
        if token_id >= self.num_pieces:  # a sentinel
            return f"<extra_id_{self.vocab_size - 1 - token_id}>"
        return self.sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of ``piece``; ``unk_id`` when the vocabulary has no such piece."""
        special = self.special_ids.get(check_text("piece", piece))
        return self.sp.piece_to_id(piece) if special is None else special

    def is_special(self, token_id: int) -> bool:
        """True for pad, eos, unk and the sentinels: what ``skip_special_tokens`` drops."""
        i = check_token_id("token_id", token_id, self.vocab_size)
        return i >= self.num_pieces or self.sp.is_control(i) or self.sp.is_unknown(i)

    def __repr__(self) -> str:
        """Where the model came from and how many ids it has."""
        counts = f"pieces={self.num_pieces}, sentinels={self.extra_ids}"
        return f"{type(self).__name__}({str(self.model_file)!r}, {counts}, vocab_size={len(self)})"


class Tokenizer(SentencePieceVocabulary):
    """T5's tokenizer: text to ids and back, for one text or a padded batch."""

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, ``</s>`` appended; ``<extra_id_N>`` in it maps to its sentinel."""
        ids: list[int] = []
        # even parts are plain text, odd parts the special strings between them
        for index, part in enumerate(self.special_pattern.split(check_text("text", text))):
            if index % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids + [self.eos_id] if check_bool("add_eos", add_eos) else ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces that ``text`` is cut into (no ``</s>``)."""
        return [self.id_to_piece(i) for i in self.encode(text, add_eos=False)]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``: pieces joined, ``▁`` read as a space, the leading one dropped."""
        ids = check_token_ids("ids", ids, self.vocab_size)
        if check_bool("skip_special_tokens", skip_special_tokens):
            ids = [i for i in ids if not self.is_special(i)]
        text = "".join(map(self.id_to_piece, ids)).replace("\u2581", " ")
        return text.removeprefix(" ")  # the "▁" SentencePiece put before the first word

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = False,
        add_eos: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, torch.Tensor | list[list[int]]]:
        """Encode a batch into ``input_ids`` and ``attention_mask``, right-padded with pad_id."""
        texts = [texts] if isinstance(texts, str) else check_texts("texts", texts)  # str: one text
        if not texts:
            raise ValueError("texts is empty; expected at least one string")
        batch = [self.encode(text, add_eos) for text in texts]
        eos_id = self.eos_id if add_eos else None
        return pad_batch(
            batch, self.pad_id, max_length, padding, truncation, eos_id, return_tensors
        )

    def batch_decode(
        self, sequences: Iterable[Iterable[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """``decode`` each sequence of a batch (a 2-D tensor or a list of lists)."""
        batch = check_id_batch("sequences", sequences, self.vocab_size)
        return [self.decode(ids, skip_special_tokens) for ids in batch]


PADDING = (True, False, "longest", "max_length", "do_not_pad")  # as transformers names them


def _check_padding(
    batch: Any,
    pad_id: Any,
    max_length: Any,
    padding: Any,
    truncation: Any,
    eos_id: Any,
    return_tensors: Any,
) -> list[list[int]]:
    """The rows of ``batch`` as lists of ints; raise unless the arguments make sense together."""
    rows = check_id_batch("batch", batch)  # a str or a float where an id belongs is refused
    if not rows:
        raise ValueError("batch is empty; expected at least one row of token ids")
    check_int("pad_id", pad_id, 0)
    if eos_id is not None:
        check_int("eos_id", eos_id, 0)
    if max_length is not None:
        check_int("max_length", max_length, 1)
    check_choice("padding", padding, PADDING)
    check_bool("truncation", truncation)
    check_choice("return_tensors", return_tensors, ("pt", None))
    for needs_length, setting in (
        (truncation, "truncation=True"),
        (padding == "max_length", "padding='max_length'"),
    ):
        if needs_length and max_length is None:
            raise ValueError(f"max_length=None, but {setting} needs a max_length")
    return rows


def pad_batch(
    batch: Sequence[Sequence[int]],
    pad_id: int,
    max_length: int | None = None,
    padding: bool | str = True,
    truncation: bool = False,
    eos_id: int | None = None,
    return_tensors: str | None = "pt",
) -> dict[str, torch.Tensor | list[list[int]]]:
    """Cut rows to ``max_length`` (``eos_id`` kept last), right-pad them; mask 1 = token."""
    rows = _check_padding(batch, pad_id, max_length, padding, truncation, eos_id, return_tensors)
    if truncation:  # as in transformers: cut the text, then put the </s> back at the end
        end = [] if eos_id is None else [eos_id]
        keep = max_length - len(end)
        rows = [ids if len(ids) <= max_length else ids[:keep] + end for ids in rows]
    lengths = [len(ids) for ids in rows]
    if padding in (True, "longest", "max_length"):
        width = max([max_length, *lengths]) if padding == "max_length" else max(lengths)
        rows = [ids + [pad_id] * (width - len(ids)) for ids in rows]
    mask = [[1] * n + [0] * (len(ids) - n) for ids, n in zip(rows, lengths)]
    if return_tensors is None:
        return {"input_ids": rows, "attention_mask": mask}
    if len(set(map(len, rows))) > 1:
        raise ValueError(
            f"padding={padding!r} leaves rows of different lengths, which make no tensor; "
            "use padding=True or return_tensors=None"
        )
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long),  # (batch, seq_len)
        "attention_mask": torch.tensor(mask, dtype=torch.long),  # (batch, seq_len)
    }
