# Generated from chapters/08_kv_cache.md — edit the chapter, not this file.

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from t5mini.attention import causal_bias, padding_bias
from t5mini.checks import check_bool, check_choice, check_float, check_int


def allocate(shape: tuple[int, ...], like: Tensor, fill: float = 0) -> Tensor:
    """A tensor of ``shape`` filled with ``fill``, on ``like``'s device and of its dtype."""
    try:
        return like.new_full(shape, fill)
    except RuntimeError as error:  # the allocator's failure (torch.OutOfMemoryError on a GPU)
        size = math.prod(shape) * like.element_size() / 2**30
        raise MemoryError(f"cannot allocate {size:.2f} GiB, shape {tuple(shape)}") from error


def widen(tensor: Tensor, width: int, dim: int = -1, fill: float = 0) -> Tensor:
    """``tensor`` extended along ``dim`` to ``width`` entries, the new ones set to ``fill``."""
    shape = list(tensor.shape)
    shape[dim] = width
    wider = allocate(tuple(shape), tensor, fill)
    wider.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    return wider


CACHE_CHUNK = 64  # positions a growing buffer starts with; it doubles when full


class KVCache:
    """One self-attention layer's keys and values, grown in chunks up to ``max_length``."""

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_length: int,
        d_kv: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        reserve: int = CACHE_CHUNK,
    ) -> None:
        """Zeroed keys and values for ``min(reserve, max_length)`` positions; more on demand."""
        self.max_length = check_int("max_length", max_length, 1)
        shape = (batch_size, num_heads, min(check_int("reserve", reserve, 1), max_length), d_kv)
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions [0, length) hold keys and values

    @property
    def capacity(self) -> int:
        """How many positions the cache holds room for now."""
        return self.key.shape[2]

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write new ``(batch, heads, new_len, d_kv)`` keys/values in place; return all so far."""
        start, end = self.length, self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds max_length={self.max_length} positions; cannot add "
                f"{key.shape[2]} after {start}"
            )
        if end > self.capacity:  # full: twice the room (at least `end`, at most max_length)
            capacity = min(self.max_length, max(end, 2 * self.capacity))
            self.key, self.value = widen(self.key, capacity, 2), widen(self.value, capacity, 2)
        self.key[:, :, start:end] = key
        self.value[:, :, start:end] = value
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end]  # (batch, heads, end, d_kv)


class DecoderCache:
    """What incremental decoding keeps between steps: self K/V, cross K/V and the biases."""

    def __init__(
        self,
        self_attention: list[KVCache],
        cross_attention: list[tuple[Tensor, Tensor]],
        cross_bias: Tensor | None,
        position_bias: torch.nn.Module,
        max_length: int,
    ) -> None:
        """Hold what ``init_cache`` prepared; nothing is cached yet (``length == 0``)."""
        self.self_attention = self_attention  # one KVCache per decoder layer
        self.cross_attention = cross_attention  # per layer: (batch, heads, src_len, d_kv) x2
        self.cross_bias = cross_bias  # (batch, 1, 1, src_len) or None
        self.position_bias = position_bias  # the decoder's RelativePositionBias (chapter 3)
        self.max_length = max_length
        self.bias_by_key = self.bias_row(self_attention[0].capacity)  # (num_heads, capacity)
        self.length = 0  # decoder positions already in the cache

    def bias_row(self, capacity: int) -> Tensor:
        """Entry ``j`` is the bias of distance ``capacity - 1 - j``: (num_heads, capacity)."""
        last = capacity - 1  # one query at the last position sees every distance once
        return self.position_bias(1, capacity, query_offset=last)[0, :, 0]

    def self_bias(self, new_len: int) -> Tensor:
        """Position bias (and causal mask) of ``new_len`` new queries: (1, heads, new_len, end)."""
        start, end = self.length, self.length + new_len
        if end > self.max_length:
            raise ValueError(
                f"the decoder cache holds max_length={self.max_length} positions; cannot add "
                f"{new_len} after {start}"
            )
        capacity = self.bias_by_key.shape[-1]
        if new_len == 1 and end <= capacity:  # distances start, ..., 0: the last end entries
            return self.bias_by_key[None, :, None, capacity - end :]
        if new_len == 1:  # the row grows with the cache
            self.bias_by_key = self.bias_row(min(self.max_length, max(end, 2 * capacity)))
            return self.self_bias(new_len)
        bias = self.position_bias(new_len, end, query_offset=start)
        return bias + causal_bias(new_len, end, bias.dtype, bias.device, query_offset=start)


def keep_rows(self: KVCache, index: Tensor) -> None:
    """Keep the batch rows ``index`` (beam search); in place when the batch size is kept."""
    if index.numel() == self.key.shape[0]:
        self.key.copy_(self.key.index_select(0, index))
        self.value.copy_(self.value.index_select(0, index))
    else:
        self.key = self.key.index_select(0, index)
        self.value = self.value.index_select(0, index)


def keep_cache_rows(self: DecoderCache, index: Tensor) -> None:
    """Keep the batch rows ``index`` of everything batched (beam search), in place."""
    for layer in self.self_attention:
        layer.reorder(index)
    self.cross_attention = [
        (key.index_select(0, index), value.index_select(0, index))
        for key, value in self.cross_attention
    ]
    if self.cross_bias is not None:
        self.cross_bias = self.cross_bias.index_select(0, index)


KVCache.reorder = keep_rows
DecoderCache.reorder = keep_cache_rows


@torch.no_grad()
def init_cache(
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    max_length: int = 20,
    reserve: int = CACHE_CHUNK,
) -> DecoderCache:
    """Cross K/V of every decoder layer (computed once); self K/V slots that grow as needed."""
    check_int("max_length", max_length, 1)
    batch, src_len, _ = encoder_hidden_states.shape
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, src_len):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the encoder "
            f"states are {(batch, src_len)} (batch, src_len)"
        )
    config, decoder = model.config, model.decoder
    weight = decoder.blocks[0].self_attention.k.weight
    self_attention = [
        KVCache(
            batch, config.num_heads, max_length, config.d_kv, weight.dtype, weight.device, reserve
        )
        for _ in decoder.blocks
    ]
    cross = [block.cross_attention.key_value(encoder_hidden_states) for block in decoder.blocks]
    cross_bias = None if attention_mask is None else padding_bias(attention_mask, weight.dtype)
    position_bias = decoder.relative_position_bias
    return DecoderCache(self_attention, cross, cross_bias, position_bias, max_length)


@dataclass(frozen=True)
class GenerationSettings:
    """The search settings of `generate`, validated once before the loop starts."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    length_penalty_style: str = "transformers"  # |y|^α; "gnmt": ((5 + |y|) / 6)^α
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    use_cache: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        """Raise a `TypeError` or `ValueError` naming the first invalid setting."""
        check_generation_settings(self)


MIN_TEMPERATURE = 1e-4  # scores / temperature stays finite for any sane logit
MAX_LENGTH_PENALTY = 10.0  # |y| ** 10 is finite in float32 up to several thousand tokens


def check_generation_settings(settings: GenerationSettings) -> None:
    """Raise a `TypeError` or `ValueError` naming the first invalid setting."""
    s = settings
    for name, low in (
        ("max_new_tokens", 0),
        ("min_new_tokens", 0),
        ("top_k", 0),
        ("num_beams", 1),
        ("num_return_sequences", 1),
    ):
        check_int(name, getattr(s, name), low)
    for name in ("do_sample", "use_cache", "compile"):
        check_bool(name, getattr(s, name))
    check_float("temperature", s.temperature, MIN_TEMPERATURE if s.do_sample else None)
    check_float("top_p", s.top_p, 0.0, 1.0, low_open=True)
    check_float("repetition_penalty", s.repetition_penalty, 0.0, low_open=True)
    check_float("length_penalty", s.length_penalty, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY)
    check_choice("length_penalty_style", s.length_penalty_style, ("transformers", "gnmt"))
    check_choice("early_stopping", s.early_stopping, (True, False, "never"))
    if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
        raise ValueError(
            f"num_return_sequences must be <= num_beams ({s.num_beams}) in beam "
            f"search, got {s.num_return_sequences}"
        )
    if s.num_beams == 1 and not s.do_sample and s.num_return_sequences != 1:
        raise ValueError(
            f"num_return_sequences must be 1 for greedy search, got "
            f"{s.num_return_sequences}; use do_sample=True or num_beams > 1"
        )
    if s.compile and not s.use_cache:
        raise ValueError("compile=True decodes over the static KV cache; it needs use_cache=True")


def apply_repetition_penalty(scores: Tensor, sequences: Tensor, penalty: float) -> Tensor:
    """Lower the score of every token in `sequences`: divide positive scores, multiply negative."""
    seen = scores.gather(1, sequences)  # (batch, cur_len): the score of each token so far
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, sequences, seen)  # (batch, vocab); repeats are penalised once


def process_scores(
    scores: Tensor, sequences: Tensor, settings: GenerationSettings, eos_token_id: int
) -> Tensor:
    """The penalties of every search: repetition penalty, no EOS before `min_new_tokens`."""
    if settings.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, sequences, settings.repetition_penalty)
    if sequences.shape[1] - 1 < settings.min_new_tokens:  # the start token is not new
        scores = scores.clone()
        scores[:, eos_token_id] = float("-inf")
    return scores


def top_k_filter(scores: Tensor, top_k: int, min_tokens_to_keep: int = 1) -> Tensor:
    """Keep each row's `top_k` highest scores (ties with the k-th included); the rest -> -inf."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth_best = torch.topk(scores, k).values[..., -1:]  # (batch, 1)
    return scores.masked_fill(scores < kth_best, float("-inf"))


def top_p_filter(scores: Tensor, top_p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the fewest most likely tokens whose probability reaches `top_p`; the rest -> -inf."""
    sorted_scores, order = torch.sort(scores, descending=False)  # the unlikely tail first
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)  # the tail that holds at most 1 - top_p of the mass
    remove[..., -min_tokens_to_keep:] = False
    remove = remove.scatter(1, order, remove)  # back to vocabulary order
    return scores.masked_fill(remove, float("-inf"))


def warp_scores(
    scores: Tensor, settings: GenerationSettings, min_tokens_to_keep: int = 1
) -> Tensor:
    """Reshape scores for sampling: temperature, then top-k, then top-p."""
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if settings.top_k != 0:
        scores = top_k_filter(scores, settings.top_k, min_tokens_to_keep)
    if settings.top_p < 1.0:
        scores = top_p_filter(scores, settings.top_p, min_tokens_to_keep)
    return scores


class DecoderStepper:
    """Next-token logits for a batch of growing decoder sequences, with the KV cache or without."""

    def __init__(
        self,
        model: Any,
        encoder_hidden_states: Tensor,
        attention_mask: Tensor | None,
        max_length: int,
        use_cache: bool = True,
    ) -> None:
        """Hold the encoder output; with `use_cache`, build the cache for `max_length` positions."""
        self.model = model
        self.encoder_hidden_states = encoder_hidden_states  # (batch, src_len, d_model)
        self.attention_mask = attention_mask  # (batch, src_len) or None
        self.cache = None
        if use_cache:
            self.cache = init_cache(model, encoder_hidden_states, attention_mask, max_length)

    def __call__(self, sequences: Tensor) -> Tensor:
        """Float logits `(batch, vocab)` for the token after `sequences` `(batch, cur_len)`."""
        if self.cache is None:  # the whole prefix again, every layer, every position
            logits = self.model.decode(sequences, self.encoder_hidden_states, self.attention_mask)
        else:  # only what the cache has not seen; attention still reads the whole cache
            logits = self.model.decode(
                sequences[:, self.cache.length :],
                self.encoder_hidden_states,
                self.attention_mask,
                cache=self.cache,
            )
        return logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search): the cache, or the encoder output and mask."""
        if self.cache is not None:
            self.cache.reorder(index)
        else:
            self.encoder_hidden_states = self.encoder_hidden_states.index_select(0, index)
            if self.attention_mask is not None:
                self.attention_mask = self.attention_mask.index_select(0, index)


def finish_rows(
    next_tokens: Tensor, unfinished: Tensor, eos_token_id: int, pad_token_id: int
) -> Tensor:
    """`next_tokens` (batch,) with pad for finished rows; rows now at EOS marked finished."""
    next_tokens = torch.where(unfinished, next_tokens, pad_token_id)  # finished: pad
    unfinished &= next_tokens != eos_token_id  # in place: the caller's mask
    return next_tokens


def sample_search(
    step: DecoderStepper,
    sequences: Tensor,
    settings: GenerationSettings,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Greedy search (`do_sample=False`) or sampling from `(batch, 1)` start tokens."""
    max_length = 1 + settings.max_new_tokens
    out = widen(sequences, min(max_length, CACHE_CHUNK), fill=pad_token_id)  # (batch, room)
    unfinished = torch.ones(sequences.shape[0], dtype=torch.bool, device=sequences.device)
    penalties = settings.repetition_penalty != 1.0 or settings.min_new_tokens > 0
    length = 1
    for cur_len in range(1, max_length):
        scores = step(out[:, :cur_len])  # (batch, vocab)
        if penalties:
            scores = process_scores(scores, out[:, :cur_len], settings, eos_token_id)
        if settings.do_sample:
            probs = warp_scores(scores, settings).softmax(dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)  # (batch,)
        if cur_len == out.shape[1]:  # full: twice the room
            out = widen(out, min(max_length, 2 * cur_len), fill=pad_token_id)
        out[:, cur_len] = finish_rows(next_tokens, unfinished, eos_token_id, pad_token_id)
        length = cur_len + 1
        if not unfinished.any():  # the one host sync per step
            break
    return out[:, :length]
