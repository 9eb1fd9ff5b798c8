# Generated from chapters/10_span_corruption.md — edit the chapter, not this file.

from __future__ import annotations

import copy
import gzip
import importlib
import importlib.resources
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from t5mini.checks import check_bool, check_float, check_int
from t5mini.tokenizer import bundled_corpus


def noise_span_counts(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """How many tokens of a length-`length` sequence T5 corrupts, and in how many spans."""
    check_int("length", length, 2)  # one noise token and one kept token at least
    check_float("noise_density", noise_density, 0.0, 1.0, low_open=True, high_open=True)
    check_float("mean_noise_span_length", mean_noise_span_length, 1.0)
    num_noise_tokens = round(length * noise_density)  # half to even, like np.round
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(round(num_noise_tokens / mean_noise_span_length), 1)
    # Each noise span needs a non-noise span before it; T5 leaves the extra ones empty,
    # which merges them, so this cap is the number of spans T5 actually produces.
    num_noise_spans = min(num_noise_spans, length - num_noise_tokens)
    return num_noise_tokens, num_noise_spans


def _random_segmentation(
    num_items: int, num_segments: int, batch_size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Split `num_items` into `num_segments` random lengths >= 1, uniformly over all splits."""
    if num_segments == 1:
        return torch.full((batch_size, 1), num_items, dtype=torch.long)
    # A split is a choice of num_segments - 1 cut points among the num_items - 1 gaps
    # (T5 shuffles a boolean vector with that many True values: the same distribution).
    scores = torch.rand(batch_size, num_items - 1, generator=generator, dtype=torch.float64)
    cuts = scores.argsort(dim=1)[:, : num_segments - 1].sort(dim=1).values + 1
    # (batch, num_segments - 1)
    first = torch.zeros(batch_size, 1, dtype=torch.long)
    last = torch.full((batch_size, 1), num_items, dtype=torch.long)
    return torch.cat([first, cuts, last], dim=1).diff(dim=1)  # (batch, num_segments)


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """T5's noise mask: True on the tokens to corrupt, in spans of random length."""
    num_noise_tokens, num_noise_spans = noise_span_counts(
        length, noise_density, mean_noise_span_length
    )
    rows = 1 if batch_size is None else check_int("batch_size", batch_size, 1)
    noise_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rows, generator)
    kept_lengths = _random_segmentation(length - num_noise_tokens, num_noise_spans, rows, generator)
    # (rows, num_noise_spans) each; interleave them, starting with kept (non-noise) tokens
    span_lengths = torch.stack([kept_lengths, noise_lengths], dim=2).view(rows, -1)
    # (rows, 2 * num_noise_spans)
    span_starts = span_lengths.cumsum(dim=1)[:, :-1]  # every span but the first
    starts = torch.zeros(rows, length, dtype=torch.int32)
    starts.scatter_(1, span_starts, 1)
    is_noise = starts.cumsum(dim=1) % 2 == 1  # (rows, length): odd spans are noise
    return is_noise[0] if batch_size is None else is_noise


def noise_span_to_sentinel(
    tokens: torch.Tensor, noise_mask: torch.Tensor, first_sentinel_id: int
) -> torch.Tensor:
    """Replace each span of noise tokens by one sentinel, counting down from `first_sentinel_id`."""
    check_int("first_sentinel_id", first_sentinel_id, 0)
    if tokens.shape != noise_mask.shape:
        raise ValueError(
            f"noise_mask has shape {tuple(noise_mask.shape)}: expected the shape of tokens, "
            f"{tuple(tokens.shape)}"
        )
    previous = torch.nn.functional.pad(noise_mask[..., :-1], (1, 0), value=False)
    span_start = noise_mask & ~previous  # (..., length): the first token of each noise span
    span_index = span_start.cumsum(dim=-1) - 1  # 0 for the first span, 1 for the next ...
    ids = torch.where(span_start, first_sentinel_id - span_index, tokens)
    keep = ~noise_mask | span_start  # kept tokens, and one sentinel per span
    kept_per_row = keep.sum(dim=-1).unique()
    if kept_per_row.numel() > 1:
        raise ValueError(
            "noise_mask: every row must leave the same number of tokens and spans, "
            f"got rows of {kept_per_row.tolist()} tokens; convert such rows one at a time"
        )
    return ids[keep].view(*tokens.shape[:-1], -1)  # (..., kept + spans)


def span_corrupt(
    tokens: torch.Tensor,
    first_sentinel_id: int,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Span-corrupt rows of equal length: (batch, raw) ids -> EOS-ended inputs and targets."""
    batch_size, length = tokens.shape
    noise_mask = random_spans_noise_mask(
        length, noise_density, mean_noise_span_length, generator, batch_size=batch_size
    )  # (batch, length)
    eos = torch.full((batch_size, 1), eos_id, dtype=tokens.dtype)
    inputs = noise_span_to_sentinel(tokens, noise_mask, first_sentinel_id)  # (batch, kept + S)
    targets = noise_span_to_sentinel(tokens, ~noise_mask, first_sentinel_id)  # (batch, noise + S)
    return torch.cat([inputs, eos], dim=1), torch.cat([targets, eos], dim=1)


def fill_in_spans(
    input_ids: Sequence[int] | torch.Tensor,
    target_ids: Sequence[int] | torch.Tensor,
    first_sentinel_id: int,
    num_sentinels: int = 100,
    eos_id: int = 1,
    pad_id: int = 0,
) -> list[int]:
    """Undo span corruption: put each span of the targets back in place of its sentinel."""

    def is_sentinel(token: int) -> bool:
        return first_sentinel_id - num_sentinels < token <= first_sentinel_id

    def body(ids: Sequence[int] | torch.Tensor, name: str) -> list[int]:
        tokens = torch.as_tensor(ids).tolist()
        while tokens and tokens[-1] in (pad_id, -100):  # padding, and -100 in labels
            tokens.pop()
        if not tokens or tokens[-1] != eos_id:
            raise ValueError(f"{name}: expected a sequence that ends with EOS ({eos_id})")
        return tokens[:-1]  # EOS inside is a document boundary; the last one ends the sequence

    spans: dict[int, list[int]] = {}
    current: list[int] = []
    for token in body(target_ids, "target_ids"):
        if is_sentinel(token):
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    original: list[int] = []
    for token in body(input_ids, "input_ids"):
        if is_sentinel(token):
            if token not in spans:
                raise ValueError(f"target_ids: no span for the sentinel {token} of input_ids")
            original.extend(spans[token])
        else:
            original.append(token)
    return original


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """The raw length that corrupts to at most `inputs_length` tokens, and the targets' length."""
    check_int("inputs_length", inputs_length, 3)  # one kept token, one sentinel and EOS

    def corrupted_lengths(raw_length: int) -> tuple[int, int]:
        num_noise, num_spans = noise_span_counts(raw_length, noise_density, mean_noise_span_length)
        # inputs: the kept tokens, a sentinel per span, EOS; targets: the noise, the same
        # sentinels, EOS
        return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    # The inputs never get shorter when the raw length grows, so we bracket the answer by
    # doubling and then halve the bracket: `fits` always fits, `too_long` never does.
    fits, too_long = 2, inputs_length  # 2 raw tokens corrupt to 3: one kept, a sentinel, EOS
    while corrupted_lengths(too_long)[0] <= inputs_length:
        if too_long > 2**40:
            raise ValueError(
                f"noise_density={noise_density!r} keeps so few tokens that no raw length up "
                f"to 2**40 corrupts to more than inputs_length={inputs_length} tokens"
            )
        fits, too_long = too_long, 2 * too_long
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if corrupted_lengths(middle)[0] <= inputs_length:
            fits = middle
        else:
            too_long = middle
    raw_length, targets_length = fits, corrupted_lengths(fits)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        # T5's adjustment: keep the targets within the (usually round) inputs length
        raw_length -= 1
        targets_length = corrupted_lengths(raw_length)[1]
    return raw_length, targets_length


def _open_text(path: Path) -> Any:
    """Open a text file for reading, decompressing `.gz` files on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _row_text(row: Any, text_column: str, where: str) -> str:
    """The text of one dataset row; `where` names the row (a file and line) in errors."""
    if not isinstance(row, Mapping) or text_column not in row:
        fields = sorted(row) if isinstance(row, Mapping) else type(row).__name__
        raise ValueError(f"{where}: text_column={text_column!r} is not a field of {fields}")
    if not isinstance(row[text_column], str):
        raise ValueError(f"{where}: {text_column!r} is {row[text_column]!r}, expected a str")
    return row[text_column]


def _json_lines(lines: Iterable[str], text_column: str, path: Path) -> Iterator[str]:
    """The non-empty texts of a JSON-lines file; errors name the file and line."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            text = _row_text(row, text_column, f"{path}:{number}")
            if text.strip():
                yield text


def read_documents(
    paths: str | Path | Iterable[str | Path] | None = None, text_column: str = "text"
) -> Iterator[str]:
    """Documents from `.txt` files (blank-line separated) or `.jsonl` files (a JSON row a line)."""
    if paths is None:
        paths = [bundled_corpus()]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"paths: {str(path)!r} is not a file")
        kind = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
        with _open_text(path) as lines:
            if kind in (".jsonl", ".json"):
                yield from _json_lines(lines, text_column, path)
                continue
            paragraph: list[str] = []
            for line in itertools.chain(lines, [""]):  # a blank line ends a document
                if line.strip():
                    paragraph.append(line)
                elif paragraph:
                    yield "".join(paragraph).strip("\n")
                    paragraph = []


def documents_from_rows(rows: Iterable[dict[str, Any]], text_column: str = "text") -> Iterator[str]:
    """The texts of dataset rows (dicts, as `datasets` yields them), skipping empty ones."""
    for index, row in enumerate(rows):
        text = _row_text(row, text_column, f"row {index}")
        if text.strip():
            yield text


def load_hf_documents(
    path: str,
    name: str | None = None,
    *,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = True,
    **load_kwargs: Any,
) -> Iterator[str]:
    """The texts of a Hugging Face `datasets` dataset (such as `allenai/c4`), streamed."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as error:
        raise ImportError(
            "load_hf_documents needs the `datasets` package: pip install datasets"
        ) from error
    dataset = datasets.load_dataset(path, name, split=split, streaming=streaming, **load_kwargs)
    return documents_from_rows(dataset, text_column)


def pack_documents(
    documents: Iterable[Sequence[int] | torch.Tensor],
    size: int,
    eos_id: int,
    eos_between_documents: bool = True,
) -> Iterator[torch.Tensor]:
    """One stream of tokenised documents, cut into blocks of `size` (the last may be shorter)."""
    check_int("size", size, 1)
    buffer: list[int] = []
    for document in documents:
        ids = document.tolist() if isinstance(document, torch.Tensor) else list(document)
        ends_with_eos = bool(ids) and ids[-1] == eos_id  # the tokenizer appends EOS
        if eos_between_documents and not ends_with_eos:
            ids.append(eos_id)
        elif not eos_between_documents and ends_with_eos:
            ids.pop()  # T5: documents joined directly
        buffer.extend(ids)
        while len(buffer) >= size:
            yield torch.tensor(buffer[:size], dtype=torch.long)  # (size,)
            del buffer[:size]
    if buffer:
        yield torch.tensor(buffer, dtype=torch.long)  # (< size,)


def _check_sentinels(
    first_sentinel_id: int,
    num_sentinels: int,
    num_spans: int,
    eos_id: int,
    pad_id: int,
    num_pieces: int | None,
) -> None:
    """Raise unless there are sentinels for `num_spans` spans and no other id is among them."""
    ids = {"eos_id": eos_id, "pad_id": pad_id, "first_sentinel_id": first_sentinel_id}
    for name, value in ids.items():
        check_int(name, value, 0)
    check_int("num_sentinels", num_sentinels, 1)
    if num_spans > num_sentinels:
        raise ValueError(
            f"input_length: its {num_spans} noise spans need more than "
            f"num_sentinels={num_sentinels} sentinels; use shorter inputs or longer spans"
        )
    lowest = first_sentinel_id - num_sentinels + 1  # the sentinels count down to this id
    taken = [
        f"{name}={value}"
        for name, value in (("eos_id", eos_id), ("pad_id", pad_id))
        if lowest <= value <= first_sentinel_id
    ]
    if num_pieces is not None and lowest < num_pieces:
        taken.append(f"the tokenizer's pieces (ids below {num_pieces})")
    if lowest < 0 or taken:
        raise ValueError(
            f"first_sentinel_id={first_sentinel_id} with num_sentinels={num_sentinels} puts "
            f"the sentinels at ids {lowest}..{first_sentinel_id}, which "
            + ("go below 0" if lowest < 0 else "overlap " + " and ".join(taken))
            + "; the sentinels must be the highest ids of the vocabulary"
        )


def _equal_length_groups(chunks: Any, raw_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks grouped by length, longest first: [(row indices, (rows, length) ids)], checked."""
    if isinstance(chunks, torch.Tensor):
        if chunks.is_floating_point() or chunks.is_complex() or chunks.dtype == torch.bool:
            raise TypeError(f"chunks must hold integer token ids, got {chunks.dtype}")
        chunks = chunks.long().view(-1, chunks.shape[-1])  # (batch, length)
        lengths = [chunks.shape[1]] * chunks.shape[0]
    else:
        chunks = [torch.as_tensor(chunk, dtype=torch.long) for chunk in chunks]
        lengths = [len(chunk) for chunk in chunks]
    if not lengths or not all(2 <= n <= raw_length for n in lengths):
        raise ValueError(
            f"chunks: expected a non-empty batch of chunks of 2 to {raw_length} tokens "
            f"(raw_length), got lengths {sorted(set(lengths))}"
        )
    groups = []
    for length in sorted(set(lengths), reverse=True):
        rows = [i for i, n in enumerate(lengths) if n == length]
        if isinstance(chunks, torch.Tensor):
            groups.append((torch.tensor(rows), chunks))  # every row has this length
        else:
            groups.append((torch.tensor(rows), torch.stack([chunks[i] for i in rows])))
    return groups


class ChunkCollator:
    """Span-corrupt a batch of raw chunks into padded `input_ids`, `attention_mask`, `labels`."""

    def __init__(
        self,
        input_length: int,
        *,
        eos_id: int,
        pad_id: int,
        first_sentinel_id: int,
        num_sentinels: int = 100,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        seed: int | None = None,
        eos_between_documents: bool = True,
        num_pieces: int | None = None,
    ) -> None:
        """Corrupt to `input_length` tokens; `seed` fixes the noise (default: from torch's RNG)."""
        self.raw_length, self.target_length = compute_input_and_target_lengths(
            input_length, noise_density, mean_noise_span_length
        )
        num_spans = noise_span_counts(self.raw_length, noise_density, mean_noise_span_length)[1]
        _check_sentinels(first_sentinel_id, num_sentinels, num_spans, eos_id, pad_id, num_pieces)
        self.input_length, self.eos_id, self.pad_id = input_length, eos_id, pad_id
        self.first_sentinel_id, self.num_sentinels = first_sentinel_id, num_sentinels
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.eos_between_documents = check_bool("eos_between_documents", eos_between_documents)
        if seed is None:  # drawn from the global RNG, so torch.manual_seed still governs it
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, 0))

    def __call__(self, chunks: torch.Tensor | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Corrupt a batch of raw chunks (at most `raw_length` tokens each) into padded tensors."""
        groups = _equal_length_groups(chunks, self.raw_length)  # [(rows, (group, length) ids)]
        batch_size = sum(len(rows) for rows, _ in groups)
        input_ids = torch.full((batch_size, self.input_length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, self.input_length, dtype=torch.long)
        labels = torch.full((batch_size, self.target_length), -100, dtype=torch.long)
        for rows, tokens in groups:
            inputs, targets = span_corrupt(
                tokens,
                self.first_sentinel_id,
                self.eos_id,
                self.noise_density,
                self.mean_noise_span_length,
                self.generator,
            )
            input_ids[rows, : inputs.shape[1]] = inputs
            attention_mask[rows, : inputs.shape[1]] = 1
            labels[rows, : targets.shape[1]] = targets
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SpanCorruptionCollator(ChunkCollator):
    """Pack token streams into fixed-length chunks and span-corrupt them into T5 batches."""

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, input_length: int, **kwargs: Any
    ) -> SpanCorruptionCollator:
        """A collator that takes EOS, padding and the sentinels from a t5mini `Tokenizer`."""
        return cls(
            input_length,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            first_sentinel_id=tokenizer.sentinel_id(0),
            num_sentinels=tokenizer.extra_ids,
            num_pieces=tokenizer.num_pieces,
            **kwargs,
        )

    def batches(
        self, documents: Iterable[Sequence[int]], batch_size: int, drop_last: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Corrupted batches from a stream of tokenised documents, packed without padding."""
        check_int("batch_size", batch_size, 1)
        size = batch_size * self.raw_length
        for block in pack_documents(documents, size, self.eos_id, self.eos_between_documents):
            if len(block) == size:
                yield self(block.view(batch_size, self.raw_length))
            elif not drop_last:  # the tail: full chunks, then a shorter one if it has 2 tokens
                tail = [chunk for chunk in block.split(self.raw_length) if len(chunk) >= 2]
                if tail:
                    yield self(tail)


class SpanCorruptionDataset(torch.utils.data.IterableDataset):
    """A stream of span-corrupted batches: texts -> tokens -> packed chunks -> T5 batches."""

    def __init__(
        self,
        documents: Iterable[str] | Callable[[], Iterable[str]],
        tokenizer: Any,
        collator: SpanCorruptionCollator,
        batch_size: int,
        drop_last: bool = True,
    ) -> None:
        """`documents` is an iterable of texts, or a function returning one for each pass."""
        self.documents, self.tokenizer, self.collator = documents, tokenizer, collator
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.drop_last = check_bool("drop_last", drop_last)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the documents; DataLoader workers split them and draw their own noise."""
        documents = self.documents() if callable(self.documents) else self.documents
        collator = self.collator
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            if worker.num_workers > 1:
                documents = itertools.islice(documents, worker.id, None, worker.num_workers)
            # A worker's fresh copy of the collator would replay the same noise every epoch:
            # mix in worker.seed, which DataLoader draws anew per epoch and worker.
            collator = copy.copy(collator)
            collator.generator = torch.Generator()
            seed = self.collator.generator.initial_seed() * 1_000_003 + worker.seed
            collator.generator.manual_seed(seed % 2**63)
        tokens = (self.tokenizer.encode(text) for text in documents)
        yield from collator.batches(tokens, self.batch_size, self.drop_last)
