"""Tests for t5mini.data: T5's span-corruption noise, lengths, collator and text sources."""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from t5mini.data import (
    SpanCorruptionCollator,
    SpanCorruptionDataset,
    compute_input_and_target_lengths,
    documents_from_rows,
    fill_in_spans,
    load_hf_documents,
    noise_span_counts,
    noise_span_to_sentinel,
    pack_documents,
    random_spans_noise_mask,
    read_documents,
)
from t5mini.tokenizer import Tokenizer

FIRST_SENTINEL = 8191  # an <extra_id_0> id for tests that need no tokenizer


def runs(row: torch.Tensor) -> list[tuple[bool, int]]:
    """Run-length encoding of a 1-D boolean mask: (value, length) pairs, in order."""
    return [(bool(value), len(list(group))) for value, group in itertools.groupby(row.tolist())]


def expected_counts(length: int, density: float, mean: float) -> tuple[int, int]:
    """T5's counts, written out independently of the module."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(int(round(noise / mean)), 1)
    return noise, min(spans, length - noise)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


# --- the noise mask ----------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.05, 0.15, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("mean", [1.0, 2.0, 3.0, 7.5])
def test_mask_has_exact_noise_and_span_counts(density: float, mean: float) -> None:
    generator = torch.Generator().manual_seed(0)
    for length in [2, 3, 5, 10, 17, 50, 101, 141, 568, 1137]:
        num_noise, num_spans = expected_counts(length, density, mean)
        assert noise_span_counts(length, density, mean) == (num_noise, num_spans)
        masks = random_spans_noise_mask(length, density, mean, generator, batch_size=16)
        assert masks.shape == (16, length) and masks.dtype == torch.bool
        for row in masks:
            row_runs = runs(row)
            assert int(row.sum()) == num_noise
            assert sum(1 for noisy, _ in row_runs if noisy) == num_spans
            # kept first, then strictly alternating, ending with noise
            assert [noisy for noisy, _ in row_runs] == [False, True] * num_spans


def test_known_counts() -> None:
    assert noise_span_counts(568) == (85, 28)
    assert noise_span_counts(10) == (2, 1)  # 1.5 -> 2 (half to even)
    assert noise_span_counts(30) == (4, 1)  # 4.5 -> 4 (half to even), 4 / 3 -> 1
    assert noise_span_counts(2) == (1, 1)  # at least one noise and one kept token
    assert noise_span_counts(4, 0.9, 1.0) == (3, 1)  # at most length - 1 noise, 1 kept span


def test_single_mask_is_one_dimensional() -> None:
    mask = random_spans_noise_mask(100, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (100,) and not mask[0] and mask[-1] and mask.sum() == 15


def test_mask_is_uniform_over_t5_segmentations() -> None:
    # length 20, density 0.3: 6 noise tokens in 2 spans, 14 kept tokens in 2 spans. T5 picks
    # the split of each uniformly: C(5, 1) * C(13, 1) = 65 equally likely masks.
    support = set()
    for noise_first in range(1, 6):
        for kept_first in range(1, 14):
            mask = (
                [False] * kept_first
                + [True] * noise_first
                + [False] * (14 - kept_first)
                + [True] * (6 - noise_first)
            )
            support.add(tuple(mask))
    assert len(support) == 65
    draws = 65 * 300
    masks = random_spans_noise_mask(
        20, 0.3, 3.0, torch.Generator().manual_seed(0), batch_size=draws
    )
    counts = Counter(tuple(row) for row in masks.tolist())
    assert set(counts) == support
    # each of the 65 has probability 1/65: 300 expected, standard deviation about 17
    assert min(counts.values()) > 300 - 5 * 17 and max(counts.values()) < 300 + 5 * 17


def test_span_lengths_follow_the_exact_distribution() -> None:
    import math

    num_noise, num_spans = noise_span_counts(568)
    masks = random_spans_noise_mask(
        568, generator=torch.Generator().manual_seed(1), batch_size=2000
    )
    lengths = Counter(n for row in masks for noisy, n in runs(row) if noisy)
    total = sum(lengths.values())
    assert total == 2000 * num_spans
    for j in range(1, 8):
        exact = math.comb(num_noise - j - 1, num_spans - 2) / math.comb(
            num_noise - 1, num_spans - 1
        )
        assert abs(lengths[j] / total - exact) < 0.01


def test_mask_is_deterministic_under_a_seed() -> None:
    a = random_spans_noise_mask(568, generator=torch.Generator().manual_seed(7), batch_size=4)
    b = random_spans_noise_mask(568, generator=torch.Generator().manual_seed(7), batch_size=4)
    c = random_spans_noise_mask(568, generator=torch.Generator().manual_seed(8), batch_size=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- sentinels -----------------------------------------------------------------------------


def test_sentinel_conversion_by_hand() -> None:
    tokens = torch.arange(10, 20)
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=torch.bool)
    s0, s1, s2 = FIRST_SENTINEL, FIRST_SENTINEL - 1, FIRST_SENTINEL - 2
    inputs = noise_span_to_sentinel(tokens, mask, FIRST_SENTINEL)
    targets = noise_span_to_sentinel(tokens, ~mask, FIRST_SENTINEL)
    assert inputs.tolist() == [10, 11, s0, 14, 15, 16, s1, 18, s2]
    assert targets.tolist() == [s0, 12, 13, s1, 17, s2, 19]
    batched = noise_span_to_sentinel(tokens.expand(3, 10), mask.expand(3, 10), FIRST_SENTINEL)
    assert batched.shape == (3, 9) and (batched == inputs).all()


def test_sentinel_conversion_rejects_ragged_rows() -> None:
    tokens = torch.arange(8).view(2, 4)
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="noise_mask"):
        noise_span_to_sentinel(tokens, mask, FIRST_SENTINEL)
    with pytest.raises(ValueError, match="noise_mask"):
        noise_span_to_sentinel(tokens, mask[:, :3], FIRST_SENTINEL)


def test_inputs_and_targets_restore_the_ids() -> None:
    collator = SpanCorruptionCollator(
        512, eos_id=1, pad_id=0, first_sentinel_id=FIRST_SENTINEL, seed=0
    )
    chunks = torch.randint(
        3, 8000, (64, collator.raw_length), generator=torch.Generator().manual_seed(0)
    )
    chunks[:, ::37] = 1  # EOS inside a chunk (document boundaries) is an ordinary token
    batch = collator(chunks)
    for row in range(64):
        restored = fill_in_spans(batch["input_ids"][row], batch["labels"][row], FIRST_SENTINEL)
        assert restored == chunks[row].tolist()


def test_decoded_inputs_and_targets_reconstruct_the_text(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 128, seed=3)
    documents = [tokenizer.encode(text) for text in itertools.islice(read_documents(), 200)]
    chunks = list(
        itertools.islice(pack_documents(documents, collator.raw_length, collator.eos_id), 16)
    )
    batch = collator(torch.stack(chunks))
    sentinel = re.compile(r"(<extra_id_\d+>)")
    for chunk, inputs, labels in zip(chunks, batch["input_ids"], batch["labels"]):
        input_text = tokenizer.decode(inputs)
        target_text = tokenizer.decode(labels)
        assert input_text.endswith("</s>") and target_text.endswith("</s>")
        parts = sentinel.split(target_text.removesuffix("</s>"))
        assert parts[0] == ""  # the targets start with <extra_id_0>
        spans = dict(zip(parts[1::2], parts[2::2]))
        assert list(spans) == [f"<extra_id_{i}>" for i in range(len(spans))]
        restored = sentinel.sub(
            lambda m, spans=spans: spans[m.group(1)], input_text.removesuffix("</s>")
        )
        assert restored == tokenizer.decode(chunk)


def test_sentinels_count_down_from_extra_id_0(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 512, seed=0)
    chunks = torch.randint(3, 8000, (8, collator.raw_length))
    batch = collator(chunks)
    num_spans = noise_span_counts(collator.raw_length)[1]
    sentinels = [tokenizer.sentinel_id(i) for i in range(num_spans)]
    for inputs, labels in zip(batch["input_ids"], batch["labels"]):
        assert [t for t in inputs.tolist() if t >= tokenizer.num_pieces] == sentinels
        assert [t for t in labels.tolist() if t >= tokenizer.num_pieces] == sentinels
        assert labels[0] == tokenizer.sentinel_id(0) == tokenizer.vocab_size - 1


# --- lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs_length, raw_length, targets_length",
    [(512, 568, 114), (256, 284, 58), (128, 141, 29), (1024, 1137, 229)],
)
def test_lengths_table(inputs_length: int, raw_length: int, targets_length: int) -> None:
    assert compute_input_and_target_lengths(inputs_length, 0.15, 3.0) == (
        raw_length,
        targets_length,
    )


@pytest.mark.parametrize("density, mean", [(0.15, 3.0), (0.3, 2.0), (0.5, 3.0), (0.1, 1.0)])
def test_lengths_are_what_corruption_produces(density: float, mean: float) -> None:
    def corrupted(raw: int) -> tuple[int, int]:
        noise, spans = expected_counts(raw, density, mean)
        return raw - noise + spans + 1, noise + spans + 1

    for inputs_length in range(3, 700, 7):
        # brute force: the longest raw length whose inputs fit, searched from the bottom
        raw = max(r for r in range(2, 2 * inputs_length) if corrupted(r)[0] <= inputs_length)
        if density == 0.5 and corrupted(raw)[1] > inputs_length:  # T5's adjustment
            raw -= 1
        assert compute_input_and_target_lengths(inputs_length, density, mean) == (
            raw,
            corrupted(raw)[1],
        )


# --- the collator --------------------------------------------------------------------------


def make_collator(input_length: int = 128, seed: int | None = 0) -> SpanCorruptionCollator:
    return SpanCorruptionCollator(
        input_length, eos_id=1, pad_id=0, first_sentinel_id=FIRST_SENTINEL, seed=seed
    )


def random_documents(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 400, (count,), generator=generator).tolist()
    return [torch.randint(3, 8000, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("input_length", [64, 128, 512])
def test_batch_shapes(input_length: int) -> None:
    collator = make_collator(input_length)
    batch = next(collator.batches(random_documents(300), batch_size=8))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (8, input_length)
    assert batch["attention_mask"].shape == (8, input_length)
    assert batch["labels"].shape == (8, collator.target_length)
    assert all(t.dtype == torch.long for t in batch.values())
    assert (batch["input_ids"][:, -1] == 1).all() and (batch["labels"][:, -1] == 1).all()
    assert batch["attention_mask"].all() and (batch["labels"] != -100).all()


def test_packing_joins_documents_with_eos_and_loses_nothing() -> None:
    collator = make_collator(64)
    documents = random_documents(60)
    documents[3] = documents[3] + [1]  # already ends with EOS: no second one
    stream = [t for d in documents for t in (d if d[-1] == 1 else d + [1])]
    batches = list(collator.batches(documents, batch_size=4, drop_last=False))
    restored = [
        token
        for batch in batches
        for inputs, labels in zip(batch["input_ids"], batch["labels"])
        for token in fill_in_spans(inputs, labels, FIRST_SENTINEL)
    ]
    assert restored == stream
    full = len(stream) // (4 * collator.raw_length)
    assert all(b["input_ids"].shape == (4, 64) for b in batches[:full])
    dropped = list(collator.batches(documents, batch_size=4))
    assert len(dropped) == full


def test_short_chunks_are_padded() -> None:
    collator = make_collator(128)
    batch = collator([list(range(3, 3 + collator.raw_length)), list(range(3, 23))])
    num_noise, num_spans = noise_span_counts(20)
    short_inputs, short_targets = 20 - num_noise + num_spans + 1, num_noise + num_spans + 1
    assert batch["attention_mask"][0].all()
    assert batch["attention_mask"][1].tolist() == [1] * short_inputs + [0] * (128 - short_inputs)
    assert (batch["input_ids"][1, short_inputs:] == 0).all()
    assert (batch["labels"][1, short_targets:] == -100).all()
    assert (batch["labels"][1, :short_targets] != -100).all()
    assert fill_in_spans(batch["input_ids"][1], batch["labels"][1], FIRST_SENTINEL) == list(
        range(3, 23)
    )


def test_tensor_chunks_of_any_width() -> None:
    collator = make_collator(128)
    short = torch.arange(3, 63).view(3, 20)  # three chunks of 20 tokens, as one tensor
    batch = collator(short)
    num_noise, num_spans = noise_span_counts(20)
    assert batch["input_ids"].shape == (3, 128) and batch["labels"].shape == (3, 29)
    assert (batch["attention_mask"].sum(dim=1) == 20 - num_noise + num_spans + 1).all()
    for row in range(3):
        restored = fill_in_spans(batch["input_ids"][row], batch["labels"][row], FIRST_SENTINEL)
        assert restored == short[row].tolist()
    single = collator(torch.arange(3, 3 + collator.raw_length))  # one chunk, 1-D
    assert single["input_ids"].shape == (1, 128) and single["attention_mask"].all()


def test_collator_is_deterministic_under_a_seed() -> None:
    documents = random_documents(200)
    first = list(make_collator(seed=5).batches(documents, batch_size=4))
    again = list(make_collator(seed=5).batches(documents, batch_size=4))
    other = list(make_collator(seed=6).batches(documents, batch_size=4))
    assert len(first) == len(again) > 2
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[0]["input_ids"], other[0]["input_ids"])


def test_batches_train_the_reference_model() -> None:
    """transformers' T5 trains on t5mini's batches (padded labels included), as t5mini does.

    Both start from the same weights and take the same SGD steps on the same batches; the
    losses of every step and the final weights agree, judged against a float64 run.
    """
    from t5mini.config import T5Config
    from t5mini.model import T5ForConditionalGeneration
    from tests.reference import copy_hf_weights, hf_model, hf_name_to_t5mini
    from tests.tolerance import assert_close_to_truth

    config = T5Config(
        vocab_size=FIRST_SENTINEL + 1,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    hf = hf_model(config)
    ours = T5ForConditionalGeneration(config)
    copy_hf_weights(hf, ours)
    models = {"reference": hf, "truth": copy.deepcopy(hf).double(), "t5mini": ours}
    collator = make_collator(64)
    batches = list(itertools.islice(collator.batches(random_documents(30), batch_size=4), 2))
    batches.append(collator([list(range(3, 3 + collator.raw_length)), list(range(3, 23))]))
    assert (batches[-1]["labels"] == -100).any()  # a short chunk: padded labels
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for name, model in models.items():
        optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):  # three passes over the same batches
            for batch in batches:
                loss = model.train()(**batch).loss
                loss.backward()
                optimiser.step()
                optimiser.zero_grad()
                losses[name].append(loss.detach())
    got, reference, truth = (torch.stack(losses[name]) for name in ("t5mini", "reference", "truth"))
    assert_close_to_truth(got, reference, truth, "losses")
    assert reference[-3:].mean() < reference[:3].mean() - 0.5  # the reference model learns
    weights = dict(ours.named_parameters())
    truths = dict(models["truth"].named_parameters())
    for hf_name, param in hf.named_parameters():
        our_name = hf_name_to_t5mini(hf_name)
        if our_name is not None:
            assert_close_to_truth(weights[our_name], param, truths[hf_name], our_name)


@pytest.mark.parametrize("density", [0.0, 1.0, -0.1, 1.5])
def test_noise_density_outside_0_1_is_rejected(density: float) -> None:
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(100, noise_density=density)
    with pytest.raises(ValueError, match="noise_density"):
        compute_input_and_target_lengths(512, noise_density=density)


@pytest.mark.parametrize("mean", [0.5, 0.0, -3.0])
def test_mean_span_length_below_1_is_rejected(mean: float) -> None:
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        random_spans_noise_mask(100, mean_noise_span_length=mean)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        SpanCorruptionCollator(
            128, eos_id=1, pad_id=0, first_sentinel_id=9, mean_noise_span_length=mean
        )


def test_too_short_sequences_are_rejected() -> None:
    with pytest.raises(ValueError, match="length must be an int .*, got 1"):
        random_spans_noise_mask(1)
    with pytest.raises(ValueError, match="length .* got 0"):
        noise_span_counts(0)
    with pytest.raises(ValueError, match="inputs_length .* got 2"):
        compute_input_and_target_lengths(2)
    with pytest.raises(ValueError, match="chunks"):
        make_collator()([[5]])


def test_collator_rejects_bad_batches() -> None:
    collator = make_collator(64)
    with pytest.raises(ValueError, match="chunks"):
        collator([list(range(collator.raw_length + 1))])
    with pytest.raises(ValueError, match="chunks"):
        collator([])
    with pytest.raises(ValueError, match="batch_size"):
        next(collator.batches(random_documents(5), batch_size=0))
    with pytest.raises(ValueError, match="num_sentinels"):
        SpanCorruptionCollator(4096, eos_id=1, pad_id=0, first_sentinel_id=FIRST_SENTINEL)


def test_fill_in_spans_rejects_inconsistent_pairs() -> None:
    with pytest.raises(ValueError, match="target_ids"):
        fill_in_spans([5, FIRST_SENTINEL - 1, 1], [FIRST_SENTINEL, 6, 1], FIRST_SENTINEL)
    with pytest.raises(ValueError, match="input_ids"):
        fill_in_spans([5, FIRST_SENTINEL], [FIRST_SENTINEL, 6, 1], FIRST_SENTINEL)


# --- text sources --------------------------------------------------------------------------


def test_read_documents_from_the_bundled_corpus() -> None:
    documents = list(read_documents())
    assert documents[0] == "First Citizen:\nBefore we proceed any further, hear me speak."
    assert len(documents) > 7000 and all(d.strip() for d in documents)


def test_read_documents_from_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n\n\n\nthree\n")
    rows = [{"text": "a story", "id": 1}, {"text": "  "}, {"text": "another"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as file:
        file.write(json.dumps({"story": "zipped"}) + "\n")
    with gzip.open(tmp_path / "d.txt.gz", "wt") as file:
        file.write("zipped text\n")
    assert list(read_documents(tmp_path / "a.txt")) == ["one\ntwo", "three"]
    assert list(read_documents([tmp_path / "b.jsonl", str(tmp_path / "d.txt.gz")])) == [
        "a story",
        "another",
        "zipped text",
    ]
    assert list(read_documents(tmp_path / "c.jsonl.gz", text_column="story")) == ["zipped"]
    with pytest.raises(ValueError, match="text_column='text'"):
        list(read_documents(tmp_path / "c.jsonl.gz"))
    with pytest.raises(ValueError, match="paths"):
        list(read_documents(tmp_path / "missing.txt"))


def test_load_hf_documents_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_documents("allenai/c4", "en")


def test_load_hf_documents_streams_a_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stand-in for the `datasets` package that serves a local JSON-lines file, as
    # datasets.load_dataset("json", data_files=...) would.
    path = tmp_path / "stories.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["Once.", "", "Twice."]))
    calls = []

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return (json.loads(line) for line in path.read_text().splitlines())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    documents = load_hf_documents("json", data_files=str(path), split="validation")
    assert list(documents) == ["Once.", "Twice."]
    assert calls == [
        ("json", None, {"split": "validation", "streaming": True, "data_files": str(path)})
    ]
    assert list(documents_from_rows([{"body": "x"}], text_column="body")) == ["x"]


def test_dataset_streams_batches_through_a_dataloader(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 128, seed=0)
    dataset = SpanCorruptionDataset(
        lambda: itertools.islice(read_documents(), 400), tokenizer, collator, batch_size=8
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None)
    first = list(loader)
    assert len(first) >= 3
    assert all(b["input_ids"].shape == (8, 128) and b["labels"].shape == (8, 29) for b in first)
    second = list(loader)  # a callable source gives a fresh pass each epoch
    assert len(second) == len(first)
    # the token stream is the documents' in order
    stream = [t for text in itertools.islice(read_documents(), 400) for t in tokenizer.encode(text)]
    restored = [
        token
        for inputs, labels in zip(first[0]["input_ids"], first[0]["labels"])
        for token in fill_in_spans(inputs, labels, tokenizer.sentinel_id(0))
    ]
    assert restored == stream[: len(restored)]


def test_dataloader_workers_share_the_documents(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 64, seed=0)
    texts = [f"document number {i} says {'la ' * (i % 7)}" for i in range(200)]
    dataset = SpanCorruptionDataset(texts, tokenizer, collator, batch_size=2, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    seen = []
    for batch in loader:
        for inputs, labels in zip(batch["input_ids"], batch["labels"]):
            seen.extend(fill_in_spans(inputs, labels, tokenizer.sentinel_id(0)))
    everything = Counter(t for text in texts for t in tokenizer.encode(text))
    # every document once, none twice (each worker may drop a last chunk of one token,
    # which is too short to corrupt)
    assert not Counter(seen) - everything
    assert (everything - Counter(seen)).total() <= 2


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_dataloader_draws_new_noise_every_epoch(tokenizer: Tokenizer, num_workers: int) -> None:
    texts = [f"document number {i} says {'la ' * (i % 7)}" for i in range(120)]

    def two_epochs(seed: int) -> list[list[torch.Tensor]]:
        torch.manual_seed(seed)
        collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 64, seed=0)
        dataset = SpanCorruptionDataset(texts, tokenizer, collator, batch_size=2)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
        return [[batch["input_ids"] for batch in loader] for _ in range(2)]

    first, second = two_epochs(0)
    assert len(first) == len(second) > 2
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # fresh noise
    again = two_epochs(0)  # and repeatable under torch.manual_seed
    assert all(torch.equal(a, b) for a, b in zip(first + second, again[0] + again[1]))


# --- lengths: the search, its speed and its limits -----------------------------------------


def linear_search_lengths(inputs_length: int, density: float, mean: float) -> tuple[int, int]:
    """The lengths as t5mini computed them before the bisection: one raw length at a time."""

    def corrupted(raw: int) -> tuple[int, int]:
        noise, spans = noise_span_counts(raw, density, mean)
        return raw - noise + spans + 1, noise + spans + 1

    raw = inputs_length
    while raw > 2 and corrupted(raw)[0] > inputs_length:
        raw -= 1
    while corrupted(raw + 1)[0] <= inputs_length:
        raw += 1
    targets = corrupted(raw)[1]
    if density == 0.5 and targets > inputs_length:
        raw -= 1
        targets = corrupted(raw)[1]
    return raw, targets


@pytest.mark.parametrize("density", [0.01, 0.1, 0.15, 0.25, 0.5, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("mean", [1.0, 1.5, 3.0, 8.0])
def test_bisection_equals_the_linear_search(density: float, mean: float) -> None:
    for inputs_length in [3, 4, 5, 7, 12, 31, 64, 100, 128, 255, 256, 511, 512, 1024]:
        assert compute_input_and_target_lengths(
            inputs_length, density, mean
        ) == linear_search_lengths(inputs_length, density, mean), (inputs_length, density, mean)


def test_lengths_near_density_one_take_few_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear search counted one raw length at a time: 255 million counts here."""
    import t5mini.data as data

    calls = []
    real = data.noise_span_counts

    def counting(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1000:
            raise AssertionError("more than 1000 counts: the search is not a bisection")
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "noise_span_counts", counting)
    assert compute_input_and_target_lengths(512, 0.999999) == (255_499_999, 255_500_000)
    assert len(calls) < 200


def test_lengths_for_a_density_that_keeps_nothing_are_refused() -> None:
    # in float64, 1 - 1e-15 times any length up to 2**40 rounds to the length itself
    with pytest.raises(ValueError, match="noise_density"):
        compute_input_and_target_lengths(512, 1 - 1e-15)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(noise_density="0.15"), TypeError, "noise_density"),
        (dict(noise_density=float("nan")), ValueError, "noise_density"),
        (dict(mean_noise_span_length=None), TypeError, "mean_noise_span_length"),
        (dict(mean_noise_span_length=float("inf")), ValueError, "mean_noise_span_length"),
    ],
)
def test_noise_settings_of_the_wrong_type_or_value(kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        noise_span_counts(100, **kwargs)
    with pytest.raises(error, match=name):
        compute_input_and_target_lengths(128, **kwargs)


def test_length_arguments_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="inputs_length"):
        compute_input_and_target_lengths(512.0)
    with pytest.raises(TypeError, match="length"):
        random_spans_noise_mask(True)
    with pytest.raises(ValueError, match="batch_size"):
        random_spans_noise_mask(10, batch_size=0)


# --- property tests ------------------------------------------------------------------------

densities = st.floats(min_value=0.01, max_value=0.95)
means = st.floats(min_value=1.0, max_value=12.0)


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(min_value=2, max_value=700),
    density=densities,
    mean=means,
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_mask_properties(length: int, density: float, mean: float, seed: int) -> None:
    """Exactly the noise and span counts, kept tokens first, noise last, in every row."""
    num_noise, num_spans = expected_counts(length, density, mean)
    masks = random_spans_noise_mask(
        length, density, mean, torch.Generator().manual_seed(seed), batch_size=3
    )
    assert (masks.sum(dim=1) == num_noise).all()
    starts = masks & ~torch.nn.functional.pad(masks[:, :-1], (1, 0))
    assert (starts.sum(dim=1) == num_spans).all()
    assert not masks[:, 0].any() and masks[:, -1].all()


@settings(max_examples=300, deadline=None)
@given(inputs_length=st.integers(min_value=3, max_value=5000), density=densities, mean=means)
def test_lengths_are_the_longest_that_fit(inputs_length: int, density: float, mean: float) -> None:
    """The raw length corrupts to at most inputs_length tokens, and one more token would not."""

    def corrupted(raw: int) -> tuple[int, int]:
        noise, spans = expected_counts(raw, density, mean)
        return raw - noise + spans + 1, noise + spans + 1

    raw, targets = compute_input_and_target_lengths(inputs_length, density, mean)
    assert corrupted(raw) == (corrupted(raw)[0], targets)
    assert corrupted(raw)[0] <= inputs_length
    if density == 0.5 and corrupted(raw + 1)[1] > inputs_length:
        return  # T5's adjustment took one token off
    assert corrupted(raw + 1)[0] > inputs_length


@settings(max_examples=40, deadline=None)
@given(inputs_length=st.integers(min_value=3, max_value=400), density=densities, mean=means)
def test_lengths_property_equals_the_linear_search(inputs_length, density, mean) -> None:
    expected = linear_search_lengths(inputs_length, density, mean)
    assert compute_input_and_target_lengths(inputs_length, density, mean) == expected


# --- sentinels that collide, chunks of the wrong type --------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(first_sentinel_id=100), "overlap eos_id=1"),  # ids 1..100
        (dict(first_sentinel_id=99), "overlap eos_id=1 and pad_id=0"),  # ids 0..99
        (dict(first_sentinel_id=50), "go below 0"),
        (dict(first_sentinel_id=8191, num_pieces=8100), "the tokenizer's pieces"),
    ],
)
def test_sentinels_that_collide_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=f"first_sentinel_id=.*{re.escape(message)}"):
        SpanCorruptionCollator(128, eos_id=1, pad_id=0, **kwargs)


def test_sentinels_from_a_tokenizer_are_free(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 128, seed=0)
    lowest = collator.first_sentinel_id - collator.num_sentinels + 1
    assert lowest == tokenizer.num_pieces  # the sentinels sit right above the pieces
    with pytest.raises(ValueError, match="tokenizer's pieces"):
        SpanCorruptionCollator(
            128,
            eos_id=1,
            pad_id=0,
            first_sentinel_id=tokenizer.sentinel_id(0),
            num_sentinels=101,
            num_pieces=tokenizer.num_pieces,
        )


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(eos_id=-1), ValueError, "eos_id"),
        (dict(pad_id=0.0), TypeError, "pad_id"),
        (dict(num_sentinels=0), ValueError, "num_sentinels"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(eos_between_documents=1), TypeError, "eos_between_documents"),
    ],
)
def test_collator_bad_arguments(kwargs, error, name) -> None:
    arguments = dict(eos_id=1, pad_id=0, first_sentinel_id=FIRST_SENTINEL) | kwargs
    with pytest.raises(error, match=name):
        SpanCorruptionCollator(128, **arguments)


def test_float_chunks_are_refused() -> None:
    with pytest.raises(TypeError, match="chunks"):
        make_collator()(torch.rand(2, 20))


# --- packing -------------------------------------------------------------------------------


def test_t5_stream_joins_documents_without_eos() -> None:
    documents = [[5, 6, 1], [7, 8, 9], [10, 1]]  # two end with EOS (1), one does not
    assert [b.tolist() for b in pack_documents(documents, 4, eos_id=1)] == [
        [5, 6, 1, 7],
        [8, 9, 1, 10],
        [1],
    ]
    t5 = pack_documents(documents, 4, eos_id=1, eos_between_documents=False)
    assert [b.tolist() for b in t5] == [[5, 6, 7, 8], [9, 10]]
    tensors = [torch.tensor(d, dtype=torch.int32) for d in documents]
    assert torch.cat(list(pack_documents(tensors, 3, eos_id=1))).tolist() == [
        5,
        6,
        1,
        7,
        8,
        9,
        1,
        10,
        1,
    ]
    collator = SpanCorruptionCollator(
        64,
        eos_id=1,
        pad_id=0,
        first_sentinel_id=FIRST_SENTINEL,
        seed=0,
        eos_between_documents=False,
    )
    documents = [doc + [1] for doc in random_documents(60)]
    stream = [t for doc in documents for t in doc[:-1]]
    batch = next(collator.batches(documents, batch_size=4))
    restored = [
        token
        for inputs, labels in zip(batch["input_ids"], batch["labels"])
        for token in fill_in_spans(inputs, labels, FIRST_SENTINEL)
    ]
    assert restored == stream[: len(restored)] and 1 not in restored


# --- text sources with bad rows ------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "fine"}\n{"text": null}\n', r"bad\.jsonl:2: 'text' is None, expected a str"),
        ('{"text": "fine"}\n\n{"text": 5}\n', r"bad\.jsonl:3: 'text' is 5, expected a str"),
        ('{"text": "fine"}\n{"text": "cut', r"bad\.jsonl:2: not valid JSON"),
        ('["a list"]\n', r"bad\.jsonl:1: text_column='text' is not a field of list"),
        ('{"body": "x"}\n', r"bad\.jsonl:1: text_column='text' is not a field of \['body'\]"),
    ],
)
def test_bad_jsonl_rows_name_the_file_and_line(tmp_path: Path, content: str, message: str):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        list(read_documents(tmp_path / "bad.jsonl"))


def test_bad_dataset_rows_name_the_row() -> None:
    with pytest.raises(ValueError, match=r"row 1: 'text' is None"):
        list(documents_from_rows([{"text": "a"}, {"text": None}]))
    with pytest.raises(ValueError, match=r"row 0: text_column='text' is not a field of str"):
        list(documents_from_rows(["a bare string"]))


def test_dataset_bad_arguments(tokenizer: Tokenizer) -> None:
    collator = SpanCorruptionCollator.from_tokenizer(tokenizer, 64, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        SpanCorruptionDataset(["a"], tokenizer, collator, batch_size=0)
    with pytest.raises(TypeError, match="drop_last"):
        SpanCorruptionDataset(["a"], tokenizer, collator, batch_size=2, drop_last="no")
