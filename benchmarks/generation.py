"""Tokens per second of t5mini's `generate` against transformers' `generate`, same weights, CPU.

Both sides decode greedily, batch 1, a 64-token source, 128 new tokens, with and without
the KV cache, for the `tiny` preset's shape and for t5-small's. t5mini also decodes with
`compile=True` (t5mini.compiled's static-shape step through torch.compile, which on the
CPU at batch 1 multiplies the matrices with more outputs than inputs through (in, out)
copies: the `weight_layout="auto"` rule); the seconds it spends compiling are reported.
Both must do the same work, so the EOS row of the head is zeroed on both (its logit is then
0, below the maximum of thousands of random logits), every run is checked to produce all
128 tokens, and the two outputs are checked to be identical. The contenders take turns,
round after round, and the best round of each counts, so that other work on the machine
disturbs them alike.

Also timed: the floor that no decoding loop can beat, a loop doing nothing but each step's
matrix-vector products with the model's weights (at batch 1 a step streams every decoder
weight from memory once), three times: in nn.Linear's (out, in) layout, every matrix
transposed to (in, out), and each in the layout the compiled step's rule chose. Every contender
is reported as a ratio to transformers (with the cache) and as the fraction of each floor
it reaches. Prints JSON; the goals (tiny shape: compiled at least 2.5x transformers, eager
at least 1.2x) are ratios measured in the same run.

    python benchmarks/generation.py [--repeats 5] [--threads 1] [--quick]

`--quick` (tiny shape, 32 tokens, 3 rounds, no cache-off runs) checks that it works.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers

from t5mini.compiled import _compiled_steps, step_matrices, transposed_copy
from t5mini.config import T5Config
from t5mini.convert import config_to_hf, from_hf

SHAPES = ("tiny", "t5-small")  # t5mini presets, so the benchmark follows their shapes
GOALS = {"t5mini_compiled": 2.5, "t5mini_eager": 1.2}  # tok/s over transformers', tiny


def build(shape: str, seed: int = 0):
    """A random transformers T5 of the given shape (EOS unreachable) and its t5mini copy."""
    config = config_to_hf(T5Config.preset(shape, dropout_rate=0.0))  # start = pad = 0, EOS 1
    torch.manual_seed(seed)
    reference = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        reference.get_output_embeddings().weight[config.eos_token_id] = 0.0
    return reference, from_hf(reference).eval()


def interleaved_best(runs: dict, repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Best seconds of each run over `repeats` rounds, the runs taking turns within a round.

    Taking turns means a burst of other work on the machine slows every contender in its
    round alike, and the best round of each is the one least disturbed.
    """
    if warm_up:
        for run in runs.values():
            run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def matmul_floor(model, new_tokens: int, layout: str):
    """A loop doing only each step's matrix-vector products: the memory-bound floor.

    The matrices are those a cached step multiplies by (`step_matrices`), stored as
    `layout` says: "out_in" as `nn.Linear` keeps them; "in_out" every one as a contiguous
    (in, out) copy; "compiled_step" as the model's compiled step holds them, each matrix in
    the layout its rule chose (`transposed_matrices`).
    """
    names = step_matrices(model)
    weights = [model.get_parameter(name).detach() for name in names]
    if layout == "in_out":
        weights = [transposed_copy(w) for w in weights]
    elif layout == "compiled_step":
        step = next(reversed(_compiled_steps[model].values()))  # the one just compiled
        weights = [step.static.weights.get(name, w) for name, w in zip(names, weights)]
    inputs = [torch.randn(1, w.shape[1]) for w in weights]

    def run() -> None:
        for _ in range(new_tokens):
            for x, w in zip(inputs, weights):
                _ = torch.nn.functional.linear(x, w)

    return run


def compile_and_time(model, input_ids, new_tokens: int) -> float:
    """Seconds of the first `compile=True` call (compilation and warm-up)."""
    started = time.perf_counter()
    model.generate(input_ids, max_new_tokens=new_tokens, compile=True)
    return time.perf_counter() - started


def measure(shape: str, src_len: int, new_tokens: int, repeats: int, no_cache: bool) -> dict:
    """tokens/s of every contender, its ratio to transformers and its fraction of each floor."""
    reference, model = build(shape)
    input_ids = torch.randint(2, T5Config.preset(shape).vocab_size, (1, src_len),
                              generator=torch.Generator().manual_seed(1))  # fmt: skip
    outputs: dict = {}

    def generate(name: str, owner, **kwargs):
        def run() -> None:
            outputs[name] = owner.generate(input_ids, max_new_tokens=new_tokens, **kwargs)

        return run

    with torch.no_grad():
        warm_up_s = {"t5mini_compiled": compile_and_time(model, input_ids, new_tokens)}
        seconds = interleaved_best(
            {
                "t5mini_eager": generate("t5mini_eager", model),
                "t5mini_compiled": generate("t5mini_compiled", model, compile=True),
                "transformers": generate("transformers", reference),
                "matmul_floor": matmul_floor(model, new_tokens, "out_in"),
                "matmul_floor_transposed": matmul_floor(model, new_tokens, "in_out"),
                "matmul_floor_compiled_layout": matmul_floor(model, new_tokens, "compiled_step"),
            },
            repeats,
        )
        if no_cache:  # without the cache a run is long (quadratic): fewer rounds, no warm-up
            seconds |= interleaved_best(
                {
                    "t5mini_no_cache": generate("t5mini_no_cache", model, use_cache=False),
                    "transformers_no_cache": generate(
                        "transformers_no_cache", reference, use_cache=False
                    ),
                },
                max(1, repeats // 3),
                warm_up=False,
            )
    for name, ids in outputs.items():
        if ids.shape[1] != 1 + new_tokens or not torch.equal(ids, outputs["transformers"]):
            raise AssertionError(f"{shape}, {name}: outputs differ or stopped early")
    tok_s = {name: new_tokens / s for name, s in seconds.items()}
    result: dict = {"tok_s": {name: round(value, 1) for name, value in tok_s.items()}}
    contenders = ["t5mini_eager", "t5mini_compiled", "transformers"]
    result["ratio_to_transformers"] = {
        name: round(tok_s[name] / tok_s["transformers"], 3) for name in contenders
    }
    for floor in ("matmul_floor", "matmul_floor_transposed", "matmul_floor_compiled_layout"):
        result[f"fraction_of_{floor}"] = {
            name: round(tok_s[name] / tok_s[floor], 3) for name in contenders
        }
    result["warm_up_s"] = {name: round(s, 1) for name, s in warm_up_s.items()}
    if no_cache:
        result["ratio_no_cache"] = round(
            tok_s["t5mini_no_cache"] / tok_s["transformers_no_cache"], 3
        )
        result["t5mini_cache_speedup_over_no_cache"] = round(
            tok_s["t5mini_eager"] / tok_s["t5mini_no_cache"], 2
        )
    return result


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shape only, 32 new tokens, 3 repeats, no no-cache",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = ["tiny"] if args.quick else list(SHAPES)
    repeats = 3 if args.quick else args.repeats
    new_tokens = 32 if args.quick else 128
    report: dict = {
        "setting": f"CPU, greedy, batch 1, 64 source tokens, {new_tokens} new tokens (all forced)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    for shape in shapes:
        report[shape] = measure(shape, 64, new_tokens, repeats, no_cache=not args.quick)
    ratios = report["tiny"]["ratio_to_transformers"]
    report["goals"] = {
        name: {"metric": f"tiny: {name} tok/s / transformers tok/s", "ratio": ratios[name],
               "target": target, "met": ratios[name] >= target}
        for name, target in GOALS.items()
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
