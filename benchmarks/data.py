"""Throughput of t5mini's span-corruption collator, in raw tokens per second, on one CPU core.

Prints one JSON object. Three measurements at T5's standard setting (inputs of 512 tokens,
raw chunks of 568, noise density 0.15, mean span length 3), batches of 64 rows:

- ``collate``: `SpanCorruptionCollator.__call__` on ready (batch, raw_length) chunks: noise
  masks, sentinels, EOS, padding; what a DataLoader's collate_fn costs per step.
- ``pack_and_collate``: `SpanCorruptionCollator.batches` on a stream of tokenised documents
  (joining with EOS, cutting chunks, then the above).
- ``per_row_baseline``: the same corruption done one row at a time with the same functions
  (no batching), to show what vectorising over the batch buys.

The goal is >= 500,000 raw tokens/s for ``collate`` (``meets_target``). Tokenisation is
SentencePiece's and is not counted; chapter 9 times the whole pipeline with it.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from t5mini.data import SpanCorruptionCollator, noise_span_to_sentinel, random_spans_noise_mask

TARGET_TOKENS_PER_SECOND = 500_000
INPUT_LENGTH, BATCH_SIZE, VOCAB = 512, 64, 8192


def best_rate(run, tokens: int, repeats: int = 7) -> float:
    """Median tokens/s over `repeats` timed runs of `run`, after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    collator = SpanCorruptionCollator(
        INPUT_LENGTH, eos_id=1, pad_id=0, first_sentinel_id=VOCAB - 1, seed=0
    )
    generator = torch.Generator().manual_seed(0)
    steps = 20
    chunks = torch.randint(
        3, VOCAB - 100, (steps, BATCH_SIZE, collator.raw_length), generator=generator
    )

    def collate() -> None:
        for step in range(steps):
            collator(chunks[step])

    lengths = torch.randint(20, 600, (4000,), generator=generator).tolist()
    documents = [torch.randint(3, VOCAB - 100, (n,), generator=generator).tolist() for n in lengths]
    stream_tokens = sum(n + 1 for n in lengths)  # each document gets its EOS
    packed_tokens = (
        stream_tokens // (BATCH_SIZE * collator.raw_length) * BATCH_SIZE * collator.raw_length
    )

    def pack_and_collate() -> None:
        for _ in collator.batches(documents, BATCH_SIZE):
            pass

    eos = torch.ones(1, dtype=torch.long)

    def per_row() -> None:
        for row in chunks[0]:
            mask = random_spans_noise_mask(collator.raw_length, generator=generator)
            torch.cat([noise_span_to_sentinel(row, mask, VOCAB - 1), eos])
            torch.cat([noise_span_to_sentinel(row, ~mask, VOCAB - 1), eos])

    collate_rate = best_rate(collate, steps * BATCH_SIZE * collator.raw_length)
    pack_rate = best_rate(pack_and_collate, packed_tokens, repeats=3)
    per_row_rate = best_rate(per_row, BATCH_SIZE * collator.raw_length)
    result = {
        "benchmark": "span-corruption collator throughput, raw tokens/s, 1 CPU thread",
        "input_length": INPUT_LENGTH,
        "raw_length": collator.raw_length,
        "target_length": collator.target_length,
        "batch_size": BATCH_SIZE,
        "collate_tokens_per_s": round(collate_rate),
        "pack_and_collate_tokens_per_s": round(pack_rate),
        "per_row_baseline_tokens_per_s": round(per_row_rate),
        "batching_speedup": round(collate_rate / per_row_rate, 2),
        "target_tokens_per_s": TARGET_TOKENS_PER_SECOND,
        "collate_over_target": round(collate_rate / TARGET_TOKENS_PER_SECOND, 2),
        "meets_target": collate_rate >= TARGET_TOKENS_PER_SECOND,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
