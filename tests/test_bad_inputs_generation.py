"""`generate` under hostile requests: huge limits, too little memory, odd grad modes.

- Memory follows the tokens made: `max_new_tokens` is a limit, not an allocation, so a
  million allowed tokens with EOS in the first steps allocate next to nothing.
- An allocation that fails says which request needed it: `max_new_tokens` and the batch.
- `generate` under `torch.inference_mode()`, then a weight update, then `generate` again
  works and follows the new weights (nothing made in inference mode is kept).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from t5mini import T5ForConditionalGeneration
from tests.test_generation import EOS, padded_batch, reference_pair

ROOT = Path(__file__).resolve().parent.parent


class _LargestAllocation(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(num_beams=3), dict(do_sample=True, num_return_sequences=2)],
    ids=["greedy", "beam", "sampling"],
)
def test_a_million_allowed_tokens_with_eos_at_once_allocate_little(settings):
    _, model = reference_pair(1, eos_weight=40.0)  # EOS wins within a step or two
    input_ids, attention_mask = padded_batch(1, batch_size=2)
    audit = _LargestAllocation()
    with audit:
        out = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=10**6,
            generator=torch.Generator().manual_seed(0),
            **settings,
        )
    assert out.shape[1] <= 4 and (out == EOS).any(dim=1).all()  # the premise: EOS at once
    # nothing is sized by max_new_tokens: the largest tensor is far below a million entries
    assert audit.largest < 10**5, audit.largest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, sets RLIMIT_AS")
def test_a_failed_allocation_names_max_new_tokens_and_the_batch():
    """Under a memory limit, a long greedy run of a large batch fails with a clear error."""
    script = textwrap.dedent(
        """
        import resource
        import torch
        from tests.test_generation import reference_pair

        torch.set_num_threads(1)
        _, model = reference_pair(0, eos_weight=-40.0)  # EOS never wins
        input_ids = torch.randint(2, 96, (4096, 3), generator=torch.Generator().manual_seed(0))
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + 768 * 2**20, resource.RLIM_INFINITY))
        try:
            model.generate(input_ids, max_new_tokens=10**6)
        except Exception as error:
            print(type(error).__name__, error)
        else:
            print("no error")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert output.startswith("MemoryError"), output[-2000:]
    assert "max_new_tokens=1000000" in output and "batch of 4096" in output, output[-2000:]


@pytest.mark.parametrize(
    "settings", [dict(), dict(num_beams=3), dict(do_sample=True)], ids=["greedy", "beam", "sample"]
)
def test_generate_in_inference_mode_then_a_weight_update_then_generate(settings):
    _, model = reference_pair(2)
    input_ids, attention_mask = padded_batch(2)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=8, **settings)
    with torch.inference_mode():
        model.generate(input_ids, generator=torch.Generator().manual_seed(0), **kwargs)
    # a training step updates every weight in place
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    labels = torch.randint(2, 96, (5, 4), generator=torch.Generator().manual_seed(1))
    model(input_ids, attention_mask, labels=labels).loss.backward()
    optimizer.step()
    got = model.generate(input_ids, generator=torch.Generator().manual_seed(0), **kwargs)
    fresh = T5ForConditionalGeneration(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    expected = fresh.generate(input_ids, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with torch.inference_mode():  # and inference mode again, after the update
        again = model.generate(input_ids, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
