"""Training speed of t5mini against transformers, same weights, same batch, CPU (or GPU).

Two measurements, each a ratio taken in the same run:

- one full training step (forward, backward, Adafactor update) of the `tiny` preset's
  shape on a span-corruption-sized batch (8 x 128 inputs, 29 targets): t5mini's
  `Trainer.step` with its `Adafactor` against transformers' `T5ForConditionalGeneration`
  with `transformers.optimization.Adafactor`, both in T5's pre-training setting;
- the optimiser update alone, on the same parameters and gradients.

Before timing, both sides take one step from the same weights and must report the same
loss and land on the same weights. The contenders take turns, round after round, and the
best round of each counts, so that other work on the machine disturbs them alike. Prints
JSON; the goal (t5mini's training step no slower than transformers') is a ratio.

    python benchmarks/training.py [--repeats 5] [--threads 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers.optimization import Adafactor as ReferenceAdafactor

from t5mini.config import T5Config
from t5mini.convert import to_hf
from t5mini.model import T5ForConditionalGeneration
from t5mini.training import Adafactor, Trainer

SHAPE = dict(
    vocab_size=8192, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)  # fmt: skip
GOAL = 1.0


def make_batch(batch_size: int, device: str) -> dict[str, torch.Tensor]:
    """Random span-corruption-shaped batch: 128 input tokens, 29 target tokens."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 8000, (batch_size, 128), generator=generator)
    labels = torch.randint(3, 8000, (batch_size, 29), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def build(device: str):
    """A t5mini `tiny`-shaped model (T5's initialisation) and its transformers copy, each
    with its own Adafactor."""
    torch.manual_seed(0)
    ours = T5ForConditionalGeneration(T5Config(**SHAPE, dropout_rate=0.0)).to(device).train()
    reference = to_hf(ours).to(device).train()
    return (
        (reference, ReferenceAdafactor(reference.parameters())),
        (ours, Trainer(ours, Adafactor(ours.parameters()), max_grad_norm=None)),
    )


def reference_step(model, optimizer, batch) -> float:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def best_of(runs: dict, repeats: int) -> dict[str, float]:
    """Best seconds of each run over `repeats` rounds, taking turns within each round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 repeats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size, repeats = (2, 2) if args.quick else (8, args.repeats)
    batch = make_batch(batch_size, device)
    (reference, reference_optimizer), (ours, trainer) = build(device)

    # the same step on both sides: equal loss before, and (nearly) equal loss after, the update
    # (Adafactor's first update is almost sign(g), so float rounding moves single weights)
    reference_loss = reference_step(reference, reference_optimizer, batch)
    our_loss = trainer.step(batch)["loss"]
    assert abs(our_loss - reference_loss) <= 1e-5 * abs(reference_loss), (our_loss, reference_loss)
    with torch.no_grad():
        after = reference(**batch).loss.item(), ours(**batch).loss.item()
    assert abs(after[0] - after[1]) <= 1e-4 * abs(after[0]) and after[0] < reference_loss, after

    step_seconds = best_of(
        {
            "transformers": lambda: reference_step(reference, reference_optimizer, batch),
            "t5mini": lambda: trainer.step(batch),
        },
        repeats,
    )
    for model in (reference, ours):  # gradients for the optimiser-only timing
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    update_seconds = best_of(
        {"transformers": reference_optimizer.step, "t5mini": trainer.optimizer.step}, repeats
    )
    tokens = batch_size * (128 + 29)
    result = {
        "benchmark": "training step (forward + backward + Adafactor), tiny shape",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": [batch_size, 128, 29],
        "step_seconds": step_seconds,
        "tokens_per_s": {k: tokens / v for k, v in step_seconds.items()},
        "step_speedup_vs_transformers": step_seconds["transformers"] / step_seconds["t5mini"],
        "adafactor_update_seconds": update_seconds,
        "adafactor_speedup_vs_transformers": update_seconds["transformers"]
        / update_seconds["t5mini"],
        "goal_step_speedup": GOAL,
    }
    result["goal_met"] = result["step_speedup_vs_transformers"] >= GOAL
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
