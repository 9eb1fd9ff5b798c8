"""The float64-truth rule itself: it accepts rounding and refuses a real difference."""

from __future__ import annotations

import pytest
import torch

from tests.tolerance import assert_close_to_truth


def test_rounding_passes_and_a_wrong_result_fails():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=generator), torch.randn(64, 64, generator=generator)
    truth = a.double() @ b.double()
    reference = a @ b  # fp32: off the truth by rounding
    other_order = (a.t().contiguous().t() @ b.t().contiguous().t()).contiguous()
    assert_close_to_truth(other_order, reference, truth)
    wrong = reference.clone()
    wrong[3, 5] += 1e-3 * truth.abs().max().item()  # far above fp32 rounding
    with pytest.raises(AssertionError, match="product"):
        assert_close_to_truth(wrong, reference, truth, "product")
