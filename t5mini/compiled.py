# Generated from chapters/14_fast_decoding.md — edit the chapter, not this file.

from __future__ import annotations

import contextlib
import logging
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5mini.attention import mask_value, padding_bias
from t5mini.checks import check_choice
from t5mini.decoding import GenerationSettings, finish_rows, sample_search
from t5mini.generation import beam_search
from t5mini.model import head_logits

logger = logging.getLogger(__name__)


class StaticKVCache:
    """One layer's keys and values, written at a position tensor and read whole."""

    def __init__(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, position: Tensor
    ) -> None:
        """Zeroed keys and values of `shape` (batch, heads, max_length, d_kv)."""
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)
        self.position = position  # (1,) int64, shared by every layer of a step

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new (batch, heads, 1, d_kv) key and value at `position`; return every slot."""
        self.key.index_copy_(2, self.position, key)
        self.value.index_copy_(2, self.position, value)
        return self.key, self.value  # (batch, heads, max_length, d_kv): later slots masked

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search) in place: the buffers keep their addresses."""
        self.key.copy_(self.key.index_select(0, index))
        self.value.copy_(self.value.index_select(0, index))


class StaticDecoderStep(nn.Module):
    """Next-token logits over preallocated buffers whose shapes never change."""

    def __init__(self, model: Any, batch_size: int, src_len: int, max_length: int) -> None:
        """Allocate every buffer once: self K/V per layer, cross K/V, padding bias, bias row."""
        super().__init__()
        self.embedding, self.decoder, self.lm_head = model.embedding, model.decoder, model.lm_head
        config, weight = model.config, model.decoder.blocks[0].self_attention.k.weight
        heads, device, dtype = config.num_heads, weight.device, weight.dtype
        self.batch_size, self.max_length, self.length, self.rows = batch_size, max_length, 0, 0
        self.weights: dict[str, Tensor] = {}  # replacements for the model's (see layouts)
        try:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, always
                self.position = torch.zeros(1, dtype=torch.long, device=device)
                self.key_positions = torch.arange(max_length, device=device)
                self.input_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
                self.unfinished = torch.zeros(batch_size, dtype=torch.bool, device=device)
                shape = (batch_size, heads, max_length, config.d_kv)
                self.self_attention = [
                    StaticKVCache(shape, dtype, device, self.position) for _ in model.decoder.blocks
                ]
                cross = torch.zeros(
                    batch_size, heads, src_len, config.d_kv, dtype=dtype, device=device
                )
                self.cross_attention = [
                    (cross.clone(), cross.clone()) for _ in model.decoder.blocks
                ]
                self.cross_bias = torch.zeros(batch_size, 1, 1, src_len, dtype=dtype, device=device)
                self.bias_by_key = torch.zeros(heads, max_length, dtype=dtype, device=device)
        except RuntimeError as error:  # the allocator's own message names no argument
            raise MemoryError(
                f"compile=True keeps a static KV cache for max_new_tokens + 1 = {max_length} "
                f"positions (rounded up) and a batch of {batch_size}; it does not fit: {error}"
            ) from error

    def static_tensors(self) -> list[Tensor]:
        """Every tensor this step holds and the compiled step reads or writes."""
        caches = [t for layer in self.self_attention for t in (layer.key, layer.value)]
        cross = [t for key_value in self.cross_attention for t in key_value]
        return (
            caches
            + cross
            + [
                self.position,
                self.key_positions,
                self.input_ids,
                self.unfinished,
                self.cross_bias,
                self.bias_by_key,
            ]
        )

    def self_bias(self) -> Tensor:
        """The new query's bias over every slot, later slots masked: (1, heads, 1, max_length)."""
        last = self.max_length - 1
        index = (self.key_positions + last - self.position).clamp(max=last)  # distance t - j
        bias = self.bias_by_key[:, index]  # (heads, max_length)
        future = self.key_positions > self.position
        return bias.masked_fill(future, mask_value(bias.dtype))[None, :, None, :]

    def forward(self, input_ids: Tensor) -> Tensor:
        """One decoding step at `position`, every shape static: logits (batch, vocab)."""
        decoder = self.decoder
        hidden_states = decoder.dropout(self.embedding(input_ids))  # (batch, 1, d_model)
        bias = self.self_bias()
        for block, layer_cache, cross_key_value in zip(
            decoder.blocks, self.self_attention, self.cross_attention
        ):
            hidden_states = block(
                hidden_states, bias, None, self.cross_bias, layer_cache, cross_key_value
            )
        hidden_states = decoder.dropout(decoder.final_norm(hidden_states))
        return head_logits(hidden_states, self.embedding, self.lm_head)[:, -1].float()

    def logits(self, input_ids: Tensor) -> Tensor:
        """`forward`, with the parameters named in `weights` replaced by those tensors."""
        if not self.weights:
            return self(input_ids)
        return torch.func.functional_call(self, self.weights, (input_ids,))

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search) in place; rows past them stay where they are."""
        rest = torch.arange(index.numel(), self.batch_size, device=index.device)
        index = torch.cat([index, rest])  # (batch_size,)
        for layer in self.self_attention:
            layer.reorder(index)
        for key, value in self.cross_attention:
            key.copy_(key.index_select(0, index))
            value.copy_(value.index_select(0, index))
        self.cross_bias.copy_(self.cross_bias.index_select(0, index))


@torch.no_grad()
def reset_static_step(
    step: StaticDecoderStep,
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    start: Tensor,
) -> None:
    """Fill the buffers for encoder states (rows, src_len, d_model) and `start` (rows, 1)."""
    rows, src_len, _ = encoder_hidden_states.shape  # at most the buffers' sizes
    for block, (key, value) in zip(model.decoder.blocks, step.cross_attention):
        new_key, new_value = block.cross_attention.key_value(encoder_hidden_states)
        key.zero_()[:rows, :, :src_len] = new_key  # (rows, heads, src_len, d_kv)
        value.zero_()[:rows, :, :src_len] = new_value
    step.cross_bias.fill_(mask_value(step.cross_bias.dtype))  # keys past the source: masked
    if attention_mask is None:
        step.cross_bias[:rows, ..., :src_len] = 0.0
    else:
        step.cross_bias[:rows, ..., :src_len] = padding_bias(attention_mask, step.cross_bias.dtype)
    step.cross_bias[rows:] = 0.0  # rows past the batch: zero keys, finite, never returned
    last = step.max_length - 1
    position_bias = model.decoder.relative_position_bias(1, step.max_length, query_offset=last)
    step.bias_by_key.copy_(position_bias[0, :, 0])  # column j: the bias of distance last - j
    for layer in step.self_attention:
        layer.key.zero_()
        layer.value.zero_()
    step.input_ids.zero_()[:rows] = start
    step.position.zero_()
    step.unfinished.zero_()[:rows] = True
    step.length, step.rows = 0, rows


def attention_layers(module: nn.Module) -> list[nn.Module]:
    """The attention layers in `module`: those with chapter 4's `implementation` attribute."""
    return [m for m in module.modules() if hasattr(m, "implementation")]


@contextlib.contextmanager
def plain_attention(layers: list[nn.Module]) -> Iterator[None]:
    """While active, the attention `layers` compute with the plain math, not SDPA."""
    saved = [layer.implementation for layer in layers]
    try:
        for layer in layers:
            vars(layer)["implementation"] = "eager"  # a plain attribute: no Module checks
        yield
    finally:
        for layer, implementation in zip(layers, saved):
            vars(layer)["implementation"] = implementation


def own_code(function: Callable) -> Callable:
    """A copy of `function` with a code object of its own, so that dynamo caches it apart."""
    code = function.__code__.replace()  # equal to the original, but a distinct object
    return types.FunctionType(
        code, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )


def skip_guards(skip: bool) -> contextlib.AbstractContextManager:
    """While active, compiled calls skip dynamo's guard checks (if `skip`; torch >= 2.6)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if skip and set_stance is not None:
        return set_stance("default", skip_guard_eval_unsafe=True)
    return contextlib.nullcontext()


def compile_step(function: Callable, on_cuda: bool) -> Callable:
    """`torch.compile` of a copy of `function`, every shape static, as one graph."""
    if on_cuda:  # CUDA graphs: the whole step replayed by one launch
        settings: dict[str, Any] = {"mode": "reduce-overhead"}
    else:  # the generated kernels called from C++, not from a Python wrapper
        settings = {"options": {"cpp_wrapper": True}}
    return torch.compile(own_code(function), fullgraph=True, dynamic=False, **settings)


def step_matrices(model: Any) -> list[str]:
    """Names of the matrices a cached step multiplies by: the decoder's (cross K/V aside), head."""
    cross_key_value = ("cross_attention.k", "cross_attention.v")  # applied once per search
    names = [
        f"{name}.weight"
        for name, module in model.decoder.named_modules(prefix="decoder")
        if isinstance(module, nn.Linear) and not name.endswith(cross_key_value)
    ]
    return names + ["embedding.weight" if model.lm_head is None else "lm_head.weight"]


def transposed_copy(weight: Tensor) -> Tensor:
    """`weight`'s values and (out, in) shape, stored as (in, out): `x @ W.T` reads it in order."""
    return weight.new_empty(weight.shape[::-1]).t().copy_(weight)


def layout_seconds(matrices: list[Tensor], rows: int, passes: int = 5) -> dict[tuple, list]:
    """Per shape (out, in): seconds of `rows` rows times W.T, W stored (out, in) and (in, out).

    The best of `passes` passes; each pass streams every matrix once, in order, in one layout.
    """
    layouts = (matrices, [transposed_copy(w) for w in matrices])
    inputs = [torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in matrices]
    best = {tuple(w.shape): [float("inf")] * 2 for w in matrices}
    for _ in range(passes):
        for layout, weights in enumerate(layouts):
            spent = dict.fromkeys(best, 0.0)
            for x, weight in zip(inputs, weights):
                started = time.perf_counter()
                F.linear(x, weight)  # (rows, out)
                spent[tuple(weight.shape)] += time.perf_counter() - started
            for shape, seconds in spent.items():
                best[shape][layout] = min(best[shape][layout], seconds)
    return best


WEIGHT_LAYOUTS = ("auto", "model", "transposed", "autotune")
TRANSPOSED_MAX_ROWS = 2  # "auto" relays weights for steps of at most this many rows
CLEAR_GAIN = 0.9  # "autotune" copies a shape only if it streams in under this fraction


def transposed_matrices(model: Any, rows: int, weight_layout: str = "auto") -> list[str]:
    """The step matrices to multiply through (in, out) copies, for a step of `rows` rows."""
    check_choice("weight_layout", weight_layout, WEIGHT_LAYOUTS)
    names = step_matrices(model)
    weights = {name: model.get_parameter(name).detach() for name in names}
    if weight_layout == "transposed":
        return names
    if weight_layout == "autotune":
        seconds = layout_seconds(list(weights.values()), rows)
        return [
            n
            for n, w in weights.items()
            if seconds[tuple(w.shape)][1] < CLEAR_GAIN * seconds[tuple(w.shape)][0]
        ]
    if weight_layout == "model" or rows > TRANSPOSED_MAX_ROWS:
        return []
    return [n for n, w in weights.items() if w.device.type == "cpu" and w.shape[0] > w.shape[1]]


_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {name: copy}


@torch.no_grad()
def weight_copies(model: Any, names: list[str]) -> dict[str, Tensor]:
    """(in, out) copies of the named matrices, refilled from the model's current weights."""
    copies = _copies.setdefault(model, {})
    chosen = {}
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, always
        for name in names:
            weight, copy = model.get_parameter(name).detach(), copies.get(name)
            same_kind = copy is not None and (copy.shape, copy.dtype, copy.device) == (
                weight.shape,
                weight.dtype,
                weight.device,
            )
            if same_kind:
                copy.copy_(weight)  # every search: the weights may have changed
            else:
                copy = copies[name] = transposed_copy(weight)
            chosen[name] = copy
    return chosen


class CompiledStepper:
    """A search's stepper over a `StaticDecoderStep` whose step is compiled."""

    def __init__(
        self,
        model: Any,
        batch_size: int,
        src_len: int,
        max_length: int,
        weight_layout: str = "auto",
    ) -> None:
        """Allocate the buffers; choose the layouts; compile lazily, on first use."""
        self.static = StaticDecoderStep(model, batch_size, src_len, max_length)
        self.on_cuda = self.static.position.device.type == "cuda"
        if self.on_cuda:  # CUDA graphs may then write these buffers in place, not copies
            for tensor in self.static.static_tensors():
                torch._dynamo.mark_static_address(tensor)
        self.transposed = transposed_matrices(model, batch_size, weight_layout)
        self.compiled = compile_step(StaticDecoderStep.logits, self.on_cuda)
        self.compiled_greedy = compile_step(greedy_step, self.on_cuda)
        self.guard_every_step = False  # True: dynamo checks its guards at every call
        self.attention = attention_layers(self.static.decoder)  # see plain_attention
        self.traced: set[str] = set()

    def run(self, name: str, compiled: Callable, *args: Any) -> Tensor:
        """Call `compiled(static, *args)`: guards checked on a search's first call only."""
        static = self.static
        checking = static.length == 0 or self.guard_every_step
        if self.on_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        started = time.perf_counter()
        plain = contextlib.nullcontext() if self.on_cuda else plain_attention(self.attention)
        with plain, skip_guards(not checking):
            output = compiled(static, *args)
        if name not in self.traced:  # the first call traced and compiled
            self.traced.add(name)
            logger.info(
                "compiled %s for batch %d, source length %d, max_length %d, %s on %s in %.1f s",
                name,
                static.batch_size,
                static.cross_bias.shape[-1],
                static.max_length,
                static.cross_bias.dtype,
                static.cross_bias.device,
                time.perf_counter() - started,
            )
        static.length += 1
        return output.clone() if self.on_cuda else output  # a CUDA graph reuses its output

    def __call__(self, sequences: Tensor) -> Tensor:
        """Float logits (rows, vocab) for the token after `sequences`; one new token per call."""
        rows, static = sequences.shape[0], self.static
        static.position.fill_(static.length)
        static.input_ids[:rows].copy_(sequences[:, -1:])  # a fixed buffer: the same input
        return self.run("the decoding step", self.compiled, static.input_ids)[:rows]

    def greedy(self, eos_token_id: int, pad_token_id: int) -> Tensor:
        """The greedy next tokens (batch,), chosen inside the compiled graph (`greedy_step`)."""
        return self.run("the greedy step", self.compiled_greedy, eos_token_id, pad_token_id)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search) in place: the buffers keep their addresses."""
        self.static.reorder(index)


_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_COMPILED_STEPS = 8  # shapes kept per model
SHAPE_MULTIPLE = 16  # source lengths and max_length round up to a multiple of this


def batch_bucket(rows: int) -> int:
    """The batch size of the compiled step that serves `rows` rows: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


@torch.no_grad()
def compiled_stepper(
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    max_length: int,
    start: Tensor,
    weight_layout: str = "auto",
) -> CompiledStepper:
    """The model's compiled step for this shape (built on first use), reset for `start`."""
    check_choice("weight_layout", weight_layout, WEIGHT_LAYOUTS)
    rows, src_len, _ = encoder_hidden_states.shape
    src_len, max_length = (-(-n // SHAPE_MULTIPLE) * SHAPE_MULTIPLE for n in (src_len, max_length))
    weight = model.decoder.blocks[0].self_attention.k.weight
    key = (batch_bucket(rows), src_len, max_length, weight.dtype, weight.device, weight_layout)
    steps = _compiled_steps.setdefault(model, {})
    if key not in steps:
        steps[key] = CompiledStepper(model, *key[:3], weight_layout)
        if len(steps) > MAX_COMPILED_STEPS:
            del steps[next(iter(steps))]  # the least recently used shape
    step = steps[key] = steps.pop(key)  # now the most recently used: last in order
    static = step.static  # the model's modules now (one may have been replaced), its weights
    static.embedding, static.decoder, static.lm_head = (
        model.embedding,
        model.decoder,
        model.lm_head,
    )
    static.weights = weight_copies(model, step.transposed)
    step.attention = attention_layers(static.decoder)
    reset_static_step(static, model, encoder_hidden_states, attention_mask, start)
    return step


def greedy_step(step: StaticDecoderStep, eos_token_id: int, pad_token_id: int) -> Tensor:
    """A decoding step and greedy search's bookkeeping, to compile whole: next tokens (batch,)."""
    logits = step.logits(step.input_ids)  # (batch, vocab)
    next_tokens = finish_rows(logits.argmax(dim=-1), step.unfinished, eos_token_id, pad_token_id)
    step.input_ids.copy_(next_tokens[:, None])  # the next step's input
    step.position.add_(1)
    return next_tokens


def compiled_greedy_search(
    step: CompiledStepper, start: Tensor, max_new_tokens: int, eos_token_id: int, pad_token_id: int
) -> Tensor:
    """Greedy search without penalties from `start` (rows, 1), one compiled call per token."""
    rows = start.shape[0]
    out = start.new_full((rows, 1 + max_new_tokens), pad_token_id)
    out[:, :1] = start  # (rows, 1 + max_new_tokens), filled in place
    for cur_len in range(1, 1 + max_new_tokens):
        out[:, cur_len] = step.greedy(eos_token_id, pad_token_id)[:rows]
        if not step.static.unfinished.any():  # the one host sync per step
            return out[:, : cur_len + 1]
    return out


@torch.no_grad()
def compiled_generate(
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    start: Tensor,
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
    weight_layout: str = "auto",
) -> Tensor:
    """The search `settings` ask for, over the model's compiled step: output ids (rows, len)."""
    config = model.config
    eos, pad = config.eos_token_id, config.pad_token_id
    max_length = 1 + settings.max_new_tokens
    step = compiled_stepper(
        model, encoder_hidden_states, attention_mask, max_length, start, weight_layout
    )
    plain = settings.repetition_penalty == 1.0 and settings.min_new_tokens == 0
    if settings.num_beams == 1 and not settings.do_sample and plain:
        return compiled_greedy_search(step, start, settings.max_new_tokens, eos, pad)
    search = beam_search if settings.num_beams > 1 else sample_search
    return search(step, start, settings, eos, pad, generator)
