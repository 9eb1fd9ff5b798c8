"""Training speed of t5mini against transformers, same weights, same batch, CPU (or GPU).

Measurements, each a ratio taken in the same run:

- one full training step (forward, backward, Adafactor update) of the `tiny` preset's
  shape on a span-corruption-sized batch (8 x 128 inputs, 29 targets), three contenders:
  transformers' `T5ForConditionalGeneration` with `transformers.optimization.Adafactor`,
  t5mini's eager `Trainer.step` with its `Adafactor`, and the same with
  `Trainer(..., compile=True)` (torch.compile of the forward pass and loss), all in T5's
  pre-training setting;
- the optimiser update alone, on the same parameters and gradients.

Before timing, every contender takes one step from the same weights and must report the
same loss; transformers and eager t5mini must also land on the same weights. The compiled
step's first call compiles; its warm-up seconds are reported, not hidden. The contenders
take turns, round after round, and the best round of each counts, so that other work on
the machine disturbs them alike. Prints JSON with the ratios; the goals are ratios too:
eager t5mini no slower than transformers, the compiled step at least 1.3 times faster.
Also printed: the seconds a step (the compiled one, if any) spends in matrix products,
profiled, and transformers' step over them: the speed-up a step would reach if nothing but
its matrix products were left, the ceiling that no implementation can pass. Next to them,
the step's other seconds (norms, activations, softmax, loss, the optimiser, Python) and
the other seconds the compiled goal would allow.

    python benchmarks/training.py [--repeats 5] [--threads 0] [--quick] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
from transformers.optimization import Adafactor as ReferenceAdafactor

from t5mini.config import T5Config
from t5mini.convert import to_hf
from t5mini.model import T5ForConditionalGeneration
from t5mini.scale import Trainer
from t5mini.training import Adafactor

SHAPE = dict(
    vocab_size=8192,
    d_model=256,
    d_kv=32,
    d_ff=1024,
    num_layers=4,
    num_heads=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
GOAL = 1.0  # eager t5mini's step against transformers'
GOAL_COMPILED = 1.3  # the compiled step against transformers' eager step


def make_batch(batch_size: int, device: str) -> dict[str, torch.Tensor]:
    """Random span-corruption-shaped batch: 128 input tokens, 29 target tokens."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 8000, (batch_size, 128), generator=generator)
    labels = torch.randint(3, 8000, (batch_size, 29), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def build(device: str, compile: bool):
    """A t5mini `tiny`-shaped model (T5's initialisation), its transformers copy, and (when
    asked) a second t5mini copy with a compiled step, each with its own Adafactor."""
    torch.manual_seed(0)
    ours = T5ForConditionalGeneration(T5Config(**SHAPE, dropout_rate=0.0)).to(device).train()
    reference = to_hf(ours).to(device).train()
    contenders = {
        "transformers": (reference, ReferenceAdafactor(reference.parameters())),
        "t5mini": (ours, Trainer(ours, Adafactor(ours.parameters()), max_grad_norm=None)),
    }
    if compile:
        twin = copy.deepcopy(ours)
        trainer = Trainer(twin, Adafactor(twin.parameters()), max_grad_norm=None, compile=True)
        contenders["t5mini_compiled"] = (twin, trainer)
    return contenders


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


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def matmul_seconds(step) -> float:
    """Seconds one call of `step` spends in matrix products (profiled): the step's floor.

    At this size the products are compute-bound BLAS calls that every implementation makes
    alike; what is left of a step above them (elementwise kernels, the optimiser, Python)
    is what an implementation can still win.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    events = profile.key_averages()
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 repeats")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size, repeats = (2, 2) if args.quick else (8, args.repeats)
    batch = make_batch(batch_size, device)
    contenders = build(device, compile=not args.no_compile)
    reference, reference_optimizer = contenders["transformers"]
    ours, trainer = contenders["t5mini"]

    # the same step on every side: equal loss before, and (nearly) equal loss after, the update
    # (Adafactor's first update is almost sign(g), so float rounding moves single weights)
    reference_loss = reference_step(reference, reference_optimizer, batch)
    our_loss = trainer.step(batch)["loss"]
    assert abs(our_loss - reference_loss) <= 1e-5 * abs(reference_loss), (our_loss, reference_loss)
    with torch.no_grad():
        after = reference(**batch).loss.item(), ours(**batch).loss.item()
    assert abs(after[0] - after[1]) <= 1e-4 * abs(after[0]) and after[0] < reference_loss, after
    warmup_seconds = {}
    if "t5mini_compiled" in contenders:
        start = time.perf_counter()
        compiled_loss = contenders["t5mini_compiled"][1].step(batch)["loss"]  # compiles
        warmup_seconds["t5mini_compiled"] = time.perf_counter() - start
        assert abs(compiled_loss - reference_loss) <= 1e-5 * abs(reference_loss), compiled_loss

    runs = {
        "transformers": lambda: reference_step(reference, reference_optimizer, batch),
        "t5mini": lambda: trainer.step(batch),
    }
    if "t5mini_compiled" in contenders:
        runs["t5mini_compiled"] = lambda: contenders["t5mini_compiled"][1].step(batch)
    step_seconds = best_of(runs, repeats)
    for model in (reference, ours):  # gradients for the optimiser-only timing
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    update_seconds = best_of(
        {"transformers": reference_optimizer.step, "t5mini": trainer.optimizer.step}, repeats
    )
    floor_name = "t5mini_compiled" if "t5mini_compiled" in runs else "t5mini"
    floor_step = runs[floor_name]
    matmuls = min(matmul_seconds(floor_step) for _ in range(3))
    tokens = batch_size * (128 + 29)
    speedups = {
        name: step_seconds["transformers"] / seconds
        for name, seconds in step_seconds.items()
        if name != "transformers"
    }
    result = {
        "benchmark": "training step (forward + backward + Adafactor), tiny shape",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": [batch_size, 128, 29],
        "repeats": repeats,
        "step_seconds": step_seconds,
        "tokens_per_s": {k: tokens / v for k, v in step_seconds.items()},
        "step_speedup_vs_transformers": speedups,
        "warmup_seconds": warmup_seconds,
        "adafactor_update_seconds": update_seconds,
        "adafactor_speedup_vs_transformers": update_seconds["transformers"]
        / update_seconds["t5mini"],
        "matmul_seconds_of_a_step": matmuls,
        "ceiling_speedup_if_only_matmuls_remained": step_seconds["transformers"] / matmuls,
        # what the step spends besides its matrix products, and what the compiled goal leaves
        # for it: the step must fit in transformers' seconds / GOAL_COMPILED
        "other_seconds_of_a_step": step_seconds[floor_name] - matmuls,
        "other_seconds_the_compiled_goal_allows": step_seconds["transformers"] / GOAL_COMPILED
        - matmuls,
        "goal_step_speedup": GOAL,
        "goal_compiled_step_speedup": GOAL_COMPILED,
    }
    result["goal_met"] = speedups["t5mini"] >= GOAL
    if "t5mini_compiled" in speedups:
        result["goal_compiled_met"] = speedups["t5mini_compiled"] >= GOAL_COMPILED
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
