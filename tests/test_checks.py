"""t5mini.checks: every helper accepts what it should, and its errors name the argument."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from t5mini.checks import (
    check_bool,
    check_choice,
    check_float,
    check_hidden_states,
    check_id_batch,
    check_ids,
    check_int,
    check_mask,
    check_not_meta,
    check_text,
    check_texts,
    check_token_id,
    check_token_ids,
)

# --- check_int --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 5, -3, np.int64(7), np.int32(2), 10**30])
def test_check_int_accepts_integers(value) -> None:
    result = check_int("count", value)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [True, False, 2.0, 2.5, "3", None, [1], torch.tensor(3)])
def test_check_int_rejects_non_integers(value) -> None:
    with pytest.raises(TypeError, match=r"^count must be an int, got"):
        check_int("count", value)


@pytest.mark.parametrize("value,low,high", [(0, 1, None), (11, None, 10), (-1, 0, 5), (6, 0, 5)])
def test_check_int_rejects_out_of_range(value, low, high) -> None:
    with pytest.raises(ValueError, match=rf"^count must be an int in .*got {value}$"):
        check_int("count", value, low, high)


def test_check_int_bounds_are_inclusive() -> None:
    assert check_int("count", 1, 1, 3) == 1 and check_int("count", 3, 1, 3) == 3
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        check_int("count", 4, 1, 3)
    with pytest.raises(ValueError, match=r"\[1, inf\]|\[1, inf\)"):
        check_int("count", 0, 1)


# --- check_float ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.5, 1, np.float32(0.25), np.float64(0.75), Fraction(1, 3)])
def test_check_float_accepts_reals(value) -> None:
    result = check_float("rate", value, 0, 1)
    assert result == pytest.approx(float(value)) and type(result) is float


@pytest.mark.parametrize("value", [True, "0.1", None, 1j, torch.tensor(0.5), [0.5]])
def test_check_float_rejects_non_numbers(value) -> None:
    with pytest.raises(TypeError, match=r"^rate must be a number, got"):
        check_float("rate", value)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, np.float64("nan"), pytest.param(10**400, id="10**400")]
)
def test_check_float_rejects_non_finite(value) -> None:
    with pytest.raises(ValueError, match=r"^rate must be a finite number"):
        check_float("rate", value)


@pytest.mark.parametrize(
    "value,kwargs",
    [
        (-0.1, dict(low=0)),
        (1.5, dict(high=1)),
        (0.0, dict(low=0, low_open=True)),
        (1.0, dict(high=1, high_open=True)),
    ],
)
def test_check_float_rejects_out_of_range(value, kwargs) -> None:
    with pytest.raises(ValueError, match=r"^rate must be a finite number in "):
        check_float("rate", value, **kwargs)


def test_check_float_interval_text() -> None:
    assert check_float("rate", 0.0, 0, 1) == 0.0 and check_float("rate", 1, 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"in \(0, 1\), got 0\.0"):
        check_float("rate", 0.0, 0, 1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"in \[0, inf\), got -1\.0"):
        check_float("rate", -1, 0)


# --- check_bool -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_accepts_bools(value) -> None:
    assert check_bool("flag", value) is value


@pytest.mark.parametrize("value", [0, 1, "no", "True", None, 1.0, np.int64(1), [True]])
def test_check_bool_rejects_others(value) -> None:
    with pytest.raises(TypeError, match=r"^flag must be True or False, got"):
        check_bool("flag", value)


# --- check_choice -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,choices",
    [
        ("relu", ("relu", "gelu")),
        (None, ("pt", None)),
        (True, (True, False, "longest")),
        (False, (True, False, "longest")),
        ("longest", (True, False, "longest")),
        (8, {8, 16}),
        (np.int64(16), (8, 16)),
    ],
)
def test_check_choice_accepts_members(value, choices) -> None:
    assert check_choice("option", value, choices) == value


@pytest.mark.parametrize(
    "value,choices",
    [
        ("swish", ("relu", "gelu")),
        (True, (1, 2)),  # True == 1, but a bool is not the int 1
        (1, (True, False)),  # and 1 is not True
        (0, (True, False, "longest")),
        ([1], ("a", "b")),  # unhashable
        ([1], {"a", "b"}),
        (torch.tensor([1, 2]), (1, 2)),  # == would compare element-wise
        (np.array([8, 8]), (8, 16)),
        ("np", ("pt", None)),
    ],
)
def test_check_choice_rejects_others(value, choices) -> None:
    with pytest.raises(ValueError, match=r"^option must be one of .*, got"):
        check_choice("option", value, choices)


def test_check_choice_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"one of \['gelu', 'relu'\], got 'swish'"):
        check_choice("option", "swish", ["relu", "gelu"])
    with pytest.raises(ValueError, match=r"'pt'.*None|None.*'pt'"):
        check_choice("option", "np", ("pt", None))


# --- check_texts ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [["a", "b"], ("a",), [], ["", " "]])
def test_check_texts_accepts_lists_of_str(value) -> None:
    result = check_texts("texts", value)
    assert result == list(value) and type(result) is list


@pytest.mark.parametrize(
    "value", ["one text", b"bytes", None, 5, {"a": 1}, iter(["a"]), np.array(["a"])]
)
def test_check_texts_rejects_non_lists(value) -> None:
    with pytest.raises(TypeError, match=r"^texts must be a list of strings, got"):
        check_texts("texts", value)


def test_check_texts_hints_at_a_bare_str() -> None:
    with pytest.raises(TypeError, match=r"wrap a single text in a list"):
        check_texts("texts", "hello world")


@pytest.mark.parametrize("value,index", [(["a", 3], 1), ([None], 0), (["a", "b", b"c"], 2)])
def test_check_texts_names_the_bad_element(value, index) -> None:
    with pytest.raises(TypeError, match=rf"^texts\[{index}\] must be a str"):
        check_texts("texts", value)


# --- check_ids --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_check_ids_accepts_id_tensors(dtype) -> None:
    check_ids("input_ids", torch.tensor([[0, 5, 9]], dtype=dtype), vocab_size=10)
    check_ids("labels", torch.tensor([[0, -100, 9]], dtype=dtype), 10, allow_ignore=True)
    check_ids("labels", torch.full((2, 3), -100, dtype=dtype), 10, allow_ignore=True)
    check_ids("input_ids", torch.zeros(0, 3, dtype=dtype), vocab_size=10)  # an empty batch


@pytest.mark.parametrize(
    "ids",
    [
        [[1, 2]],
        np.array([[1, 2]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[1, 2]], dtype=torch.int16),
        torch.tensor([[1, 2]], dtype=torch.uint8),
        torch.tensor([[True, False]]),
    ],
)
def test_check_ids_rejects_wrong_types(ids) -> None:
    with pytest.raises(TypeError, match=r"^input_ids must be a torch.int64 \(or int32\) tensor"):
        check_ids("input_ids", ids, vocab_size=10)


@pytest.mark.parametrize("shape", [(3,), (1, 0), (1, 2, 3), ()])
def test_check_ids_rejects_wrong_shapes(shape) -> None:
    with pytest.raises(ValueError, match=r"^input_ids must have shape \(batch, seq_len > 0\)"):
        check_ids("input_ids", torch.zeros(shape, dtype=torch.long), vocab_size=10)


@pytest.mark.parametrize("bad,allow_ignore", [(10, False), (-1, False), (-100, False), (-5, True)])
def test_check_ids_rejects_out_of_range(bad, allow_ignore) -> None:
    ids = torch.tensor([[1, bad, 2]])
    with pytest.raises(ValueError, match=rf"^labels contains {bad}, outside .*\[0, 10\)"):
        check_ids("labels", ids, 10, allow_ignore=allow_ignore)


# --- check_mask -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask", [None, torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3).bool()]
)
def test_check_mask_accepts_masks(mask) -> None:
    check_mask("attention_mask", mask, torch.zeros(2, 3, dtype=torch.long), "input_ids")


@pytest.mark.parametrize(
    "mask", [[[1, 1, 1]], np.ones((2, 3)), torch.ones(2, 3, dtype=torch.cfloat)]
)
def test_check_mask_rejects_wrong_types(mask) -> None:
    with pytest.raises(TypeError, match=r"^attention_mask must be a tensor"):
        check_mask("attention_mask", mask, torch.zeros(2, 3, dtype=torch.long), "input_ids")


@pytest.mark.parametrize("shape", [(2, 4), (3,), (2, 3, 1), (1, 3)])
def test_check_mask_rejects_wrong_shapes(shape) -> None:
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^attention_mask has shape .* but input_ids has shape"):
        check_mask("attention_mask", torch.ones(shape), ids, "input_ids")


# --- check_hidden_states ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(8,), (2, 8), (2, 3, 8)])
def test_check_hidden_states_accepts_float_tensors(dtype, shape) -> None:
    check_hidden_states("hidden_states", torch.zeros(shape, dtype=dtype), d_model=8)


@pytest.mark.parametrize(
    "value",
    [torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8).bool(), [[0.0] * 8], np.zeros((2, 8))],
)
def test_check_hidden_states_rejects_wrong_types(value) -> None:
    with pytest.raises(TypeError, match=r"^hidden_states must be a floating-point tensor"):
        check_hidden_states("hidden_states", value, d_model=8)


@pytest.mark.parametrize("shape", [(2, 7), (8, 2), ()])
def test_check_hidden_states_rejects_wrong_sizes(shape) -> None:
    with pytest.raises(ValueError, match=r"^hidden_states must have d_model=8 features"):
        check_hidden_states("hidden_states", torch.zeros(shape), d_model=8)


# --- check_text -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "plain", "ﬁne ＡＢＣ café", "emoji \U0001f600"])
def test_check_text_accepts_unicode_text(value) -> None:
    assert check_text("text", value) is value


@pytest.mark.parametrize("value", [b"bytes", 5, None, ["a"]])
def test_check_text_rejects_non_strings(value) -> None:
    with pytest.raises(TypeError, match=r"^text must be a str"):
        check_text("text", value)


@pytest.mark.parametrize("value,index", [("\ud800", 0), ("ab\udfffc", 2), ("é\udc80", 1)])
def test_check_text_rejects_lone_surrogates_naming_the_index(value, index) -> None:
    with pytest.raises(ValueError, match=rf"^text holds a lone surrogate .* at index {index},"):
        check_text("text", value)


def test_check_texts_names_the_element_with_a_surrogate() -> None:
    with pytest.raises(ValueError, match=r"^texts\[2\] holds a lone surrogate"):
        check_texts("texts", ["a", "b", "c\ud800"])


# --- check_token_id, check_token_ids, check_id_batch -------------------------------------


@pytest.mark.parametrize("value", [0, 7, np.int64(3), np.int32(9), torch.tensor(4)])
def test_check_token_id_accepts_ints(value) -> None:
    result = check_token_id("token_id", value, 10)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize("value", [True, 2.0, 5.7, "5", None, torch.tensor(2.0)])
def test_check_token_id_rejects_non_ints(value) -> None:
    with pytest.raises(TypeError, match=r"^token_id must be an int token id"):
        check_token_id("token_id", value, 10)


@pytest.mark.parametrize("value,vocab_size", [(10, 10), (-1, 10), (-1, None), (-100, None)])
def test_check_token_id_rejects_out_of_range(value, vocab_size) -> None:
    with pytest.raises(ValueError, match=rf"^token_id is {value}, outside the vocabulary range"):
        check_token_id("token_id", value, vocab_size)


def test_check_token_id_hints_at_ignored_labels() -> None:
    with pytest.raises(ValueError, match=r"-100 marks ignored labels"):
        check_token_id("ids[0]", -100, 10)
    check_token_id("token_id", 10**9)  # no vocabulary given: any id >= 0


@pytest.mark.parametrize(
    "ids", [[1, 2, 3], (1, 2, 3), np.array([1, 2, 3]), torch.tensor([1, 2, 3]), range(1, 4)]
)
def test_check_token_ids_accepts_sequences(ids) -> None:
    assert check_token_ids("ids", ids, 10) == [1, 2, 3]


@pytest.mark.parametrize(
    "ids,error,match",
    [
        ("56", TypeError, r"^ids must be a sequence of token ids"),
        (5, TypeError, r"^ids must be a sequence of token ids"),
        ([1, "2"], TypeError, r"^ids\[1\] must be an int token id"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, r"^ids must be one sequence \(1-D\)"),
        ([1, 10], ValueError, r"^ids\[1\] is 10, outside"),
    ],
)
def test_check_token_ids_rejects(ids, error, match) -> None:
    with pytest.raises(error, match=match):
        check_token_ids("ids", ids, 10)


def test_check_id_batch() -> None:
    assert check_id_batch("batch", torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert check_id_batch("batch", [[1], (2, 3)]) == [[1], [2, 3]]
    with pytest.raises(ValueError, match=r"^batch must be a batch \(2-D\)"):
        check_id_batch("batch", torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"^batch must be a batch of id sequences"):
        check_id_batch("batch", "12")
    with pytest.raises(TypeError, match=r"^batch\[1\]\[0\] must be an int token id"):
        check_id_batch("batch", [[1], [2.5]])


# --- check_not_meta ---------------------------------------------------------------------


def test_check_not_meta() -> None:
    check_not_meta("ids", torch.zeros(2))
    check_not_meta("model", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"^ids is on the meta device.*\.to\('cpu'\)"):
        check_not_meta("ids", torch.zeros(2, device="meta"))
    module = torch.nn.Module()
    module.register_buffer("scale", torch.ones(1, device="meta"))
    with pytest.raises(ValueError, match=r"^model\.scale is on the meta device.*to_empty"):
        check_not_meta("model", module)
