# Generated from chapters/01_tokenizer.md — edit the chapter, not this file.

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import sentencepiece as spm
import torch

NUM_SENTINELS = 100  # T5's <extra_id_0> ... <extra_id_99>
PAD_PIECE, EOS_PIECE, UNK_PIECE = "<pad>", "</s>", "<unk>"
# The sentencepiece release that trained the shipped spiece.model (training is deterministic
# for a given release; another release may cut a few pieces differently).
SHIPPED_MODEL_SENTENCEPIECE_VERSION = "0.2.3"


def bundled_corpus() -> Path:
    """Path of the Tiny Shakespeare corpus shipped inside the package."""
    return Path(str(resources.files("t5mini") / "assets" / "tinyshakespeare.txt"))


def shipped_model() -> Path:
    """Path of the SentencePiece model shipped inside the package (``t5mini/assets/spiece.model``)."""
    return Path(str(resources.files("t5mini") / "assets" / "spiece.model"))


def _corpus_lines(paths: Sequence[Path]) -> Iterator[str]:
    """The non-empty lines of the corpus files, in order: one training sentence each."""
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    yield line.rstrip("\n")


def train_tokenizer(
    corpus: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model_file: str | os.PathLike = "spiece.model",
    vocab_size: int = 8000,
    character_coverage: float = 1.0,
    normalization_rule_name: str = "nmt_nfkc",
) -> Path:
    """Train a T5-style SentencePiece unigram model (pad 0, eos 1, unk 2, no bos); return its path."""
    if corpus is None:
        paths = [bundled_corpus()]
    elif isinstance(corpus, (str, os.PathLike)):
        paths = [Path(corpus)]
    else:
        paths = [Path(p) for p in corpus]
    if not paths:
        raise ValueError("corpus=[]; expected a text file, a list of text files, or None")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(
            f"vocab_size={vocab_size!r}; expected an int >= 4 (3 special pieces + text)"
        )
    model_file = Path(model_file)
    with open(model_file, "wb") as writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_corpus_lines(paths),  # no file name is stored in the model
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
    return model_file


class Tokenizer:
    """T5's tokenizer: a SentencePiece model plus ``extra_ids`` sentinel ids above its vocabulary."""

    def __init__(self, model_file: str | os.PathLike | None = None, extra_ids: int = NUM_SENTINELS):
        """Load ``model_file`` (default: the model shipped with t5mini) and add ``extra_ids`` sentinels."""
        path = shipped_model() if model_file is None else Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model file not found: {path}")
        if isinstance(extra_ids, bool) or not isinstance(extra_ids, int) or extra_ids < 0:
            raise ValueError(f"extra_ids={extra_ids!r}; expected an int >= 0")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
        except RuntimeError as error:
            raise ValueError(f"{path} is not a SentencePiece model: {error}") from None
        self.model_file = path
        self.extra_ids = extra_ids
        self.num_pieces = self.sp.get_piece_size()
        for name in ("pad", "eos", "unk"):
            if getattr(self.sp, f"{name}_id")() < 0:
                raise ValueError(f"{path} defines no {name} piece; T5 needs pad, eos and unk")
        self.pad_id, self.eos_id, self.unk_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()
        # strings that stand for one id wherever they occur in the text
        specials = {self.sp.id_to_piece(i): i for i in (self.pad_id, self.eos_id, self.unk_id)}
        specials |= {f"<extra_id_{i}>": self.sentinel_id(i) for i in range(extra_ids)}
        self._special_ids = specials
        alternatives = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
        self._special_pattern = re.compile(f"({alternatives})")

    @property
    def vocab_size(self) -> int:
        """Number of ids: SentencePiece pieces plus sentinels."""
        return self.num_pieces + self.extra_ids

    def __len__(self) -> int:
        """Number of ids, the same as ``vocab_size``."""
        return self.vocab_size

    def __repr__(self) -> str:
        """Where the model came from and how many ids it has."""
        return (
            f"Tokenizer({str(self.model_file)!r}, pieces={self.num_pieces}, "
            f"sentinels={self.extra_ids}, vocab_size={self.vocab_size})"
        )

    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_i>``: ``<extra_id_0>`` is the highest id, and they count down."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.extra_ids:
            raise ValueError(f"sentinel index i={i!r}; expected an int in [0, {self.extra_ids})")
        return self.vocab_size - 1 - i

    def is_special(self, token_id: int) -> bool:
        """True for pad, eos, unk and the sentinels: what ``skip_special_tokens`` drops."""
        self._check_id(token_id)
        return (
            token_id >= self.num_pieces
            or self.sp.is_control(token_id)
            or self.sp.is_unknown(token_id)
        )

    def id_to_piece(self, token_id: int) -> str:
        """The piece (or ``<extra_id_N>``) that ``token_id`` stands for."""
        self._check_id(token_id)
        if token_id >= self.num_pieces:
            return f"<extra_id_{self.vocab_size - 1 - token_id}>"
        return self.sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of ``piece``; ``unk_id`` when the vocabulary has no such piece."""
        if not isinstance(piece, str):
            raise TypeError(f"piece_to_id() expects piece: str, got {type(piece).__name__}")
        if piece in self._special_ids:
            return self._special_ids[piece]
        return self.sp.piece_to_id(piece)

    def tokenize(self, text: str) -> list[str]:
        """The pieces that ``text`` is cut into (no ``</s>``)."""
        return [self.id_to_piece(i) for i in self.encode(text, add_eos=False)]

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, ``</s>`` appended; ``<extra_id_N>`` in the text maps to its sentinel."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects text: str, got {type(text).__name__}")
        ids: list[int] = []
        # split with a capture group: even parts are plain text, odd parts special tokens
        for index, part in enumerate(self._special_pattern.split(text)):
            if index % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self.sp.encode(part))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def __call__(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = False,
        add_eos: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, torch.Tensor | list[list[int]]]:
        """Encode a batch into ``input_ids`` and ``attention_mask``, right-padded with ``pad_id``."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts: expected a str or a list of str, got {type(texts).__name__}")
        if not texts:
            raise ValueError("texts is empty; expected at least one string")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(
                f"padding={padding!r}; expected True, False, 'longest', 'max_length' or 'do_not_pad'"
            )
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length={max_length!r}; expected a positive int or None")
        if truncation and max_length is None:
            raise ValueError("truncation=True needs a max_length; got max_length=None")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs a max_length; got max_length=None")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}; expected 'pt' or None")

        batch = [self.encode(text, add_eos=add_eos) for text in texts]
        if truncation:
            # as in transformers: cut the text, then put the </s> back at the end
            eos = [self.eos_id] if add_eos else []
            keep = max_length - len(eos)
            batch = [ids if len(ids) <= max_length else ids[:keep] + eos for ids in batch]
        lengths = [len(ids) for ids in batch]
        if padding in (True, "longest"):
            width = max(lengths, default=0)
        elif padding == "max_length":
            width = max([max_length, *lengths])  # longer rows stay longer when not truncated
        else:
            width = None
        if width is not None:
            batch = [ids + [self.pad_id] * (width - len(ids)) for ids in batch]
        mask = [[1] * n + [0] * (len(ids) - n) for ids, n in zip(batch, lengths)]
        if return_tensors is None:
            return {"input_ids": batch, "attention_mask": mask}
        if len({len(ids) for ids in batch}) > 1:
            raise ValueError(
                "padding=False gives rows of different lengths, which cannot form a tensor; "
                "use padding=True or return_tensors=None"
            )
        return {
            "input_ids": torch.tensor(batch, dtype=torch.long),  # (batch, seq_len)
            "attention_mask": torch.tensor(mask, dtype=torch.long),  # (batch, seq_len)
        }

    def _check_id(self, token_id: int) -> None:
        """Raise ``ValueError`` unless ``token_id`` is a valid id."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is out of range: valid ids are 0..{self.vocab_size - 1}"
                + (
                    " (-100 marks ignored labels; replace it before decoding)"
                    if token_id == -100
                    else ""
                )
            )

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``: pieces joined, ``▁`` read as a space, the leading one dropped."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"decode() expects one sequence (1-D), got a tensor of shape {tuple(ids.shape)}; "
                    "use batch_decode for a batch"
                )
            ids = ids.tolist()
        pieces = []
        for token_id in ids:
            token_id = int(token_id)
            if not (skip_special_tokens and self.is_special(token_id)):
                pieces.append(self.id_to_piece(token_id))
        text = "".join(pieces).replace("\u2581", " ")
        # SentencePiece put a "▁" before the first word (its dummy prefix): take it back out
        return text[1:] if pieces and pieces[0].startswith("\u2581") else text

    def batch_decode(
        self, sequences: Iterable[Iterable[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """``decode`` each sequence of a batch (a 2-D tensor or a list of lists)."""
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]
