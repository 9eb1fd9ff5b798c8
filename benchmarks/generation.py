"""Tokens per second of t5mini's `generate` against transformers' `generate`, same weights, CPU.

Both sides decode greedily, batch 1, a 64-token source, 128 new tokens, with and without
the KV cache, for the `tiny` preset's shape and for t5-small's. Both must do the same work,
so the EOS row of the head is zeroed on both (its logit is then 0, below the maximum of
thousands of random logits), every run is checked to produce all 128 tokens, and the two
outputs are checked to be identical. Prints JSON; the goal (t5mini at least 3x transformers
with the cache, tiny shape) is a ratio measured in the same run.

    python benchmarks/generation.py [--repeats 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers

from t5mini.convert import from_hf

SHAPES = {
    "tiny": dict(
        vocab_size=8192, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
    "t5-small": dict(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
        feed_forward_proj="relu", tie_word_embeddings=True,
    ),
}  # fmt: skip
GOAL = 3.0


def build(shape: str, seed: int = 0):
    """A random transformers T5 of the given shape (EOS unreachable) and its t5mini copy."""
    config = transformers.T5Config(
        **SHAPES[shape], dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1
    )
    torch.manual_seed(seed)
    reference = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        reference.get_output_embeddings().weight[config.eos_token_id] = 0.0
    return reference, from_hf(reference).eval()


def tokens_per_second(run, new_tokens: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Best-of-`repeats` tokens/s of `run()` (after one warm-up run), and its output."""
    out = run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    assert out.shape[1] == 1 + new_tokens, f"stopped early: {tuple(out.shape)}"
    return new_tokens / min(times), out


def decoder_weights(model) -> list[torch.Tensor]:
    """The weight matrices one cached decoding step multiplies by, in order (head last)."""
    weights = []
    for block in model.decoder.blocks:
        self_attention, cross = block.self_attention, block.cross_attention
        weights += [self_attention.q.weight, self_attention.k.weight, self_attention.v.weight]
        weights += [self_attention.o.weight, cross.q.weight, cross.o.weight]
        weights += [p for n, p in block.feed_forward.named_parameters() if n.startswith("w")]
    head = model.lm_head if model.lm_head is not None else model.embedding
    return weights + [head.weight]


def matmul_floor(model, new_tokens: int, repeats: int, transposed: bool) -> float:
    """Tokens/s of a loop doing only a step's matrix-vector products (the memory-bound floor).

    `transposed=False` multiplies as `nn.Linear` does, by the (out, in) weights; `True` by
    contiguous (in, out) copies, a layout that this CPU's BLAS streams faster for one row.
    """
    weights = decoder_weights(model)
    if transposed:
        weights = [w.t().contiguous() for w in weights]
    inputs = [torch.randn(1, w.shape[0] if transposed else w.shape[1]) for w in weights]

    def run() -> torch.Tensor:
        for _ in range(new_tokens):
            for x, w in zip(inputs, weights):
                _ = x @ w if transposed else torch.nn.functional.linear(x, w)
        return torch.zeros(1, 1 + new_tokens)

    with torch.inference_mode():
        return tokens_per_second(run, new_tokens, repeats)[0]


def measure(shape: str, src_len: int, new_tokens: int, repeats: int) -> dict:
    """t5mini and transformers tokens/s, with and without the cache, and their ratios."""
    reference, model = build(shape)
    input_ids = torch.randint(2, SHAPES[shape]["vocab_size"], (1, src_len),
                              generator=torch.Generator().manual_seed(1))  # fmt: skip
    result: dict = {}
    for use_cache in (True, False):
        tag = "cache" if use_cache else "no_cache"
        n = repeats if use_cache else max(1, repeats // 2)
        with torch.inference_mode():
            ours, our_ids = tokens_per_second(
                lambda use_cache=use_cache: model.generate(
                    input_ids, max_new_tokens=new_tokens, use_cache=use_cache
                ),
                new_tokens,
                n,
            )
            theirs, their_ids = tokens_per_second(
                lambda use_cache=use_cache: reference.generate(
                    input_ids, max_new_tokens=new_tokens, use_cache=use_cache
                ),
                new_tokens,
                n,
            )
        if not torch.equal(our_ids, their_ids):
            raise AssertionError(f"{shape}, use_cache={use_cache}: outputs differ")
        result[f"t5mini_{tag}_tok_s"] = round(ours, 1)
        result[f"transformers_{tag}_tok_s"] = round(theirs, 1)
        result[f"ratio_{tag}"] = round(ours / theirs, 3)
    # What no loop can beat: the step's matrix-vector products alone (weights streamed from
    # memory once per token), as nn.Linear lays them out and transposed.
    floor = matmul_floor(model, new_tokens, repeats, transposed=False)
    floor_transposed = matmul_floor(model, new_tokens, repeats, transposed=True)
    result["matmul_floor_tok_s"] = round(floor, 1)
    result["matmul_floor_transposed_tok_s"] = round(floor_transposed, 1)
    result["best_possible_ratio_cache"] = round(floor / result["transformers_cache_tok_s"], 3)
    result["best_possible_ratio_cache_transposed"] = round(
        floor_transposed / result["transformers_cache_tok_s"], 3
    )
    result["t5mini_cache_speedup_over_no_cache"] = round(
        result["t5mini_cache_tok_s"] / result["t5mini_no_cache_tok_s"], 2
    )
    return result


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shape only, 3 repeats")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = ["tiny"] if args.quick else list(SHAPES)
    repeats = 3 if args.quick else args.repeats
    report: dict = {
        "setting": "CPU, greedy, batch 1, 64 source tokens, 128 new tokens (all forced)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    for shape in shapes:
        report[shape] = measure(shape, src_len=64, new_tokens=128, repeats=repeats)
    ratio = report["tiny"]["ratio_cache"]
    report["goal"] = {
        "metric": "tiny, with cache: t5mini tok/s / transformers tok/s",
        "ratio": ratio,
        "target": GOAL,
        "met": ratio >= GOAL,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
