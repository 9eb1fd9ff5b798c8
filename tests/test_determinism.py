"""Plain `generate` (no `compile`) is simple and deterministic.

- Two fresh processes give bitwise the same tokens for greedy, beam and sampling (with a
  seeded generator).
- It reads no clock and calls no private PyTorch API: nothing it does can hang on a timing.
- It always decodes with the model's current weights, however they were changed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from t5mini import T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "beam": dict(max_new_tokens=12, num_beams=4, length_penalty=0.6, num_return_sequences=2),
    "sampling": dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
}


def lively_model(seed: int = 3) -> T5ForConditionalGeneration:
    """A small T5 with large random weights and a likely EOS (no transformers needed)."""
    config = T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 1.0)
        model.decoder.final_norm.weight[0] = 5.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[1, 0] = 1.5
    return model


def decode_all(model) -> dict[str, torch.Tensor]:
    """Greedy, beam and sampled outputs of `model` on a fixed padded batch."""
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(2, 96, (5, 9), generator=gen)
    lengths = torch.tensor([9, 7, 3, 5, 1])
    attention_mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    return {
        name: model.generate(
            input_ids,
            attention_mask=attention_mask,
            generator=torch.Generator().manual_seed(5),
            **settings,
        )  # fmt: skip
        for name, settings in SETTINGS.items()
    }


def test_two_fresh_processes_give_bitwise_equal_outputs():
    script = textwrap.dedent(
        """
        import torch
        from tests.test_determinism import decode_all, lively_model

        model = lively_model()
        for name, ids in decode_all(model).items():
            print(name, ids.tolist())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
            check=True,
        ).stdout  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    lines = runs[0].splitlines()
    assert [line.split()[0] for line in lines] == list(SETTINGS)
    # and the same as this process
    model = lively_model()
    here = [f"{name} {ids.tolist()}" for name, ids in decode_all(model).items()]
    assert lines == here


class Forbidden(AssertionError):
    """Raised by a clock or a private API that plain `generate` must never call."""


def forbidden(name: str):
    """A stand-in that fails the test when called."""

    def call(*args, **kwargs):
        raise Forbidden(f"plain generate called {name}")

    return call


@contextlib.contextmanager
def no_clocks_no_private_api(monkeypatch):
    """While active, every clock and `_reparametrize_module` raise `Forbidden`."""
    with monkeypatch.context() as patch:
        for name in ("perf_counter", "monotonic", "time", "process_time"):
            patch.setattr(time, name, forbidden(f"time.{name}"))
        patch.setattr(
            torch.nn.utils.stateless,
            "_reparametrize_module",
            forbidden("torch.nn.utils.stateless._reparametrize_module"),
        )
        yield


def test_the_stand_ins_do_fail(monkeypatch):
    """The check below can fail: a clock read while it is active raises."""
    with no_clocks_no_private_api(monkeypatch), pytest.raises(Forbidden):
        time.perf_counter()


def test_plain_generate_reads_no_clock_and_calls_no_private_api(monkeypatch):
    model = lively_model()
    expected = decode_all(model)
    fresh_model = lively_model()  # no state left from an earlier call
    with no_clocks_no_private_api(monkeypatch):
        got = decode_all(fresh_model)
        again = decode_all(model)
    for name in SETTINGS:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
        torch.testing.assert_close(again[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("edit", ["mul_(-1)", "copy_(noise)", "no_grad add_"])
def test_generate_follows_weights_edited_in_place(edit):
    model = lively_model()
    before = decode_all(model)  # a first call: anything it might keep is kept now
    noise = torch.Generator().manual_seed(9)
    for param in model.parameters():
        if edit == "mul_(-1)":
            param.data.mul_(-1)
        elif edit == "copy_(noise)":
            param.data.copy_(torch.randn(param.shape, generator=noise))
        else:
            with torch.no_grad():
                param.add_(torch.randn(param.shape, generator=noise))
    after = decode_all(model)
    fresh = T5ForConditionalGeneration(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    expected = decode_all(fresh)
    for name in SETTINGS:
        torch.testing.assert_close(after[name], expected[name], rtol=0, atol=0)
    assert any(not torch.equal(before[n], after[n]) for n in SETTINGS)  # the edit mattered
