# Generated from chapters/08_generation.md — edit the chapter, not this file.

from __future__ import annotations

import contextlib
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5mini.attention import causal_bias, mask_value, padding_bias
from t5mini.checks import check_bool, check_choice, check_float, check_ids, check_int, check_mask


class KVCache:
    """One self-attention layer's keys and values, preallocated for ``max_length`` positions."""

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_length: int,
        d_kv: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """Allocate zeroed keys and values of shape ``(batch_size, num_heads, max_length, d_kv)``."""
        check_int("max_length", max_length, 1)
        shape = (batch_size, num_heads, max_length, d_kv)
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions [0, length) hold keys and values

    @property
    def max_length(self) -> int:
        """How many positions the cache can hold."""
        return self.key.shape[2]

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write new ``(batch, heads, new_len, d_kv)`` keys/values in place; return all so far."""
        start, end = self.length, self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds max_length={self.max_length} positions; cannot add "
                f"{key.shape[2]} after {start}"
            )
        self.key[:, :, start:end] = key
        self.value[:, :, start:end] = value
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end]  # (batch, heads, end, d_kv)

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` (beam search); in place when the batch size is kept."""
        if index.numel() == self.key.shape[0]:
            self.key.copy_(self.key.index_select(0, index))
            self.value.copy_(self.value.index_select(0, index))
        else:
            self.key = self.key.index_select(0, index)
            self.value = self.value.index_select(0, index)


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
        last = max_length - 1  # one query at the last position sees every distance once
        # bias_by_key[:, j] is the bias of distance last - j: (num_heads, max_length)
        self.bias_by_key = position_bias(1, max_length, query_offset=last)[0, :, 0]
        self.length = 0  # decoder positions already in the cache

    @property
    def max_length(self) -> int:
        """How many decoder positions the cache can hold."""
        return self.bias_by_key.shape[-1]

    def self_bias(self, new_len: int) -> Tensor:
        """Position bias (and causal mask) of ``new_len`` new queries: (1, heads, new_len, end)."""
        start, end = self.length, self.length + new_len
        if end > self.max_length:
            raise ValueError(
                f"the decoder cache holds max_length={self.max_length} positions; cannot add "
                f"{new_len} after {start}"
            )
        if new_len == 1:  # distances start, ..., 0 to keys 0, ..., start: the last end entries
            return self.bias_by_key[None, :, None, self.max_length - end :]
        bias = self.position_bias(new_len, end, query_offset=start)
        return bias + causal_bias(new_len, end, bias.dtype, bias.device, query_offset=start)

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` of everything batched (beam search), in place."""
        for layer in self.self_attention:
            layer.reorder(index)
        self.cross_attention = [
            (key.index_select(0, index), value.index_select(0, index))
            for key, value in self.cross_attention
        ]
        if self.cross_bias is not None:
            self.cross_bias = self.cross_bias.index_select(0, index)


@torch.no_grad()
def init_cache(
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    max_length: int = 20,
) -> DecoderCache:
    """Cross K/V of every decoder layer (computed once) and self K/V space for ``max_length``."""
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
        KVCache(batch, config.num_heads, max_length, config.d_kv, weight.dtype, weight.device)
        for _ in decoder.blocks
    ]
    cross_attention = [
        block.cross_attention.key_value(encoder_hidden_states) for block in decoder.blocks
    ]
    cross_bias = None if attention_mask is None else padding_bias(attention_mask, weight.dtype)
    return DecoderCache(
        self_attention, cross_attention, cross_bias, decoder.relative_position_bias, max_length
    )


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
    """The penalties every search applies: repetition penalty, then no EOS before `min_new_tokens`."""
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
    batch_size = sequences.shape[0]
    out = sequences.new_full((batch_size, 1 + settings.max_new_tokens), pad_token_id)
    out[:, :1] = sequences  # (batch, 1 + max_new_tokens), filled in place
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=sequences.device)
    penalties = settings.repetition_penalty != 1.0 or settings.min_new_tokens > 0
    length = 1
    for cur_len in range(1, 1 + settings.max_new_tokens):
        scores = step(out[:, :cur_len])  # (batch, vocab)
        if penalties:
            scores = process_scores(scores, out[:, :cur_len], settings, eos_token_id)
        if settings.do_sample:
            probs = warp_scores(scores, settings).softmax(dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)  # (batch,)
        out[:, cur_len] = finish_rows(next_tokens, unfinished, eos_token_id, pad_token_id)
        length = cur_len + 1
        if not unfinished.any():  # the one host sync per step
            break
    return out[:, :length]


NEVER = -1.0e9  # the score that keeps a slot out of every top-k


def length_penalty_divisor(length: int, settings: GenerationSettings) -> float:
    """What a finished hypothesis' log-probability is divided by: |y|^α or ((5 + |y|) / 6)^α."""
    base = (5 + length) / 6 if settings.length_penalty_style == "gnmt" else length
    return base**settings.length_penalty


def pick_candidates(
    scores: Tensor, num_candidates: int, do_sample: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """The best (or, sampling, drawn) continuations: scores and flat indices, (batch, k) each."""
    if do_sample:
        picked = torch.multinomial(scores.softmax(dim=-1), num_candidates, generator=generator)
        return scores.gather(1, picked), picked
    return tuple(torch.topk(scores, num_candidates))


def start_beams(
    sequences: Tensor, num_beams: int, max_length: int, fill: int
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Running beams (only the first may expand) and an empty finished list, per example."""
    batch_size, device = sequences.shape[0] // num_beams, sequences.device
    running = torch.full((batch_size, num_beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :1] = sequences.view(batch_size, num_beams, 1)
    running_scores = torch.zeros(batch_size, num_beams, device=device)
    running_scores[:, 1:] = NEVER  # identical beams at the start: only the first expands
    empty = torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device)
    finished = (running.clone(), torch.full_like(running_scores, NEVER), empty.long(), empty)
    return running, running_scores, finished  # finished: sequences, scores, lengths, is_finished


def keep_best_finished(
    finished: tuple[Tensor, Tensor, Tensor, Tensor],
    candidates: Tensor,
    candidate_scores: Tensor,
    length: int,
    is_new: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merge new finished hypotheses into (sequences, scores, lengths, is_finished); keep the best."""
    sequences, scores, lengths, is_finished = finished
    num_beams = scores.shape[1]
    merged_scores = torch.cat([scores, candidate_scores], dim=1)
    best = torch.topk(merged_scores, num_beams).indices  # (batch, num_beams)
    new_lengths = torch.full_like(is_new, length, dtype=torch.long)
    return (
        torch.cat([sequences, candidates], dim=1).take_along_dim(best[:, :, None], dim=1),
        merged_scores.gather(1, best),
        torch.cat([lengths, new_lengths], dim=1).gather(1, best),
        torch.cat([is_finished, is_new], dim=1).gather(1, best),
    )


def can_still_improve(
    running_scores: Tensor,
    finished: tuple,
    cur_len: int,
    max_length: int,
    settings: GenerationSettings,
) -> Tensor:
    """(batch, 1): may the best running beam still beat the worst finished hypothesis?"""
    _, scores, _, is_finished = finished
    if settings.early_stopping == "never" and settings.length_penalty > 0:
        best_length = max_length - 1  # the longest it could become: a true bound
    else:
        best_length = cur_len - 1  # its length now: a heuristic when α > 0
    best_possible = running_scores[:, :1] / length_penalty_divisor(best_length, settings)
    worst = torch.where(is_finished, scores.min(dim=1, keepdim=True).values, NEVER)
    return (best_possible > worst).any(dim=-1, keepdim=True)


@dataclass
class BeamStep:
    """What beam search holds after one step, for whoever wants to watch (`on_step`)."""

    step: int  # tokens generated so far
    sequences: Tensor  # (batch, num_beams, 1 + step) running hypotheses
    scores: Tensor  # (batch, num_beams) their total log-probabilities
    parents: Tensor  # (batch, num_beams) the beam each one extended
    finished: Tensor  # (batch, num_beams, max_length) best finished hypotheses so far
    finished_scores: Tensor  # (batch, num_beams) their length-normalised scores
    finished_lengths: Tensor  # (batch, num_beams) their generated lengths, EOS included
    is_finished: Tensor  # (batch, num_beams) False where a slot holds no hypothesis yet
    at_limit: Tensor  # (batch, num_beams) True where a hypothesis was cut by the length limit


def beam_search(
    step: DecoderStepper,
    sequences: Tensor,
    settings: GenerationSettings,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[BeamStep], None] | None = None,
) -> Tensor:
    """Beam search from `(batch * num_beams, 1)` start tokens -> `(batch * num_return_sequences, len)`."""
    num_beams, device = settings.num_beams, sequences.device
    batch_size, max_length = sequences.shape[0] // num_beams, 1 + settings.max_new_tokens
    fill = pad_token_id or eos_token_id  # as transformers: EOS when pad is 0
    running, running_scores, finished = start_beams(sequences, num_beams, max_length, fill)
    can_improve = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
    in_top_beams = torch.arange(2 * num_beams, device=device) < num_beams
    batch_offset = torch.arange(batch_size, device=device)[:, None] * num_beams  # (batch, 1)
    for cur_len in range(1, max_length):
        flat = running[:, :, :cur_len].reshape(batch_size * num_beams, cur_len)
        log_probs = process_scores(F.log_softmax(step(flat), dim=-1), flat, settings, eos_token_id)
        if settings.do_sample:
            log_probs = warp_scores(log_probs, settings, min_tokens_to_keep=2)
        vocab_size = log_probs.shape[-1]
        scores = log_probs.view(batch_size, num_beams, vocab_size) + running_scores[:, :, None]
        # 1. the best 2 * num_beams continuations over all beams of an example
        scores = scores.view(batch_size, num_beams * vocab_size)
        cand_scores, picked = pick_candidates(scores, 2 * num_beams, settings.do_sample, generator)
        cand_parent, cand_token = picked // vocab_size, picked % vocab_size
        candidates = running.take_along_dim(cand_parent[:, :, None], dim=1)
        candidates[:, :, cur_len] = cand_token  # (batch, 2 * num_beams, max_length)
        done = (cand_token == eos_token_id) | (cur_len + 1 >= max_length)
        # 2. the best num_beams unfinished continuations run on
        cand_running = cand_scores + done.float() * NEVER
        keep = torch.topk(cand_running, num_beams).indices  # (batch, num_beams)
        running = candidates.take_along_dim(keep[:, :, None], dim=1)
        running_scores, parents = cand_running.gather(1, keep), cand_parent.gather(1, keep)
        # 3. finished continuations among the top num_beams compete, length-normalised
        cand_final = cand_scores / length_penalty_divisor(cur_len, settings)
        example_full = finished[3].all(dim=-1, keepdim=True) & (settings.early_stopping is True)
        cand_final += example_full.float() * NEVER
        cand_final += (~can_improve).float() * NEVER
        cand_final += ~(done & in_top_beams) * NEVER
        is_new = done & in_top_beams
        finished = keep_best_finished(finished, candidates, cand_final, cur_len, is_new)
        if on_step is not None:
            last_token = finished[0].gather(2, finished[2][:, :, None])[..., 0]  # (batch, beams)
            at_limit = finished[3] & (last_token != eos_token_id)
            running_so_far = running[:, :, : cur_len + 1]
            on_step(BeamStep(cur_len, running_so_far, running_scores, parents, *finished, at_limit))
        # 4. stop when no example can improve, or every example is full (early stopping)
        can_improve &= can_still_improve(
            running_scores, finished, cur_len + 1, max_length, settings
        )
        all_full = finished[3].all() & (settings.early_stopping is True)
        if not (can_improve.any() & ~all_full & ~done.all()):
            break
        step.reorder((parents + batch_offset).view(-1))  # the cache follows the beams
    sequences, _, lengths, _ = finished
    num_return = settings.num_return_sequences
    sequences = sequences[:, :num_return].reshape(batch_size * num_return, max_length)
    return sequences[:, : 1 + int(lengths[:, :num_return].max())]


class StaticKVCache(KVCache):
    """A KVCache written at a position tensor and read whole: the same shapes at every step."""

    position: Tensor  # (1,) int64, set by the StaticDecoderStep that owns the cache

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new (batch, heads, 1, d_kv) key and value at `position`; return every slot."""
        self.key.index_copy_(2, self.position, key)
        self.value.index_copy_(2, self.position, value)
        return self.key, self.value  # (batch, heads, max_length, d_kv): later slots masked


class StaticDecoderStep:
    """Next-token logits over a preallocated cache whose shapes never change, compiled once."""

    def __init__(self, model: Any, batch_size: int, src_len: int, max_length: int) -> None:
        """Allocate every buffer once: self K/V per layer, cross K/V, padding bias, bias row."""
        config, weight = model.config, model.decoder.blocks[0].self_attention.k.weight
        heads, device = config.num_heads, weight.device
        self.model_ref, self.max_length, self.length = weakref.ref(model), max_length, 0
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(max_length, device=device)
        self.input_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.unfinished = torch.ones(batch_size, dtype=torch.bool, device=device)  # greedy_step's
        self.self_attention = [
            StaticKVCache(batch_size, heads, max_length, config.d_kv, weight.dtype, device)
            for _ in model.decoder.blocks
        ]
        for layer in self.self_attention:
            layer.position = self.position
        cross = torch.zeros(
            batch_size, heads, src_len, config.d_kv, dtype=weight.dtype, device=device
        )
        self.cross_attention = [(cross.clone(), cross.clone()) for _ in model.decoder.blocks]
        self.cross_bias = torch.zeros(batch_size, 1, 1, src_len, dtype=weight.dtype, device=device)
        self.bias_by_key = torch.zeros(heads, max_length, dtype=weight.dtype, device=device)
        self.weights: dict[str, Tensor] = {}  # used in place of the model's (`RelaidWeights`)

    def buffers(self) -> list[Tensor]:
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

    def forward(self, model: Any, input_ids: Tensor) -> Tensor:
        """One decoding step at `position`, every shape static: logits (batch, vocab)."""
        decoder = model.decoder
        with swapped_weights(model, self.weights):  # none, or the CPU's copies (see below)
            hidden_states = decoder.dropout(model.embedding(input_ids))  # (batch, 1, d_model)
            bias = self.self_bias()
            for block, layer_cache, cross_key_value in zip(
                decoder.blocks, self.self_attention, self.cross_attention
            ):
                hidden_states = block(
                    hidden_states, bias, None, self.cross_bias, layer_cache, cross_key_value
                )
            hidden_states = decoder.dropout(decoder.final_norm(hidden_states))
            return model.lm_logits(hidden_states)[:, -1].float()


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
    """Names of the matrices a cached step multiplies by: the decoder's (cross K/V aside), the head."""
    cross_key_value = ("cross_attention.k", "cross_attention.v")  # applied once, by `init_cache`
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


def swapped_weights(
    model: nn.Module, weights: dict[str, Tensor]
) -> contextlib.AbstractContextManager:
    """While active, each parameter of `model` named in `weights` is that tensor instead."""
    swap = getattr(torch.nn.utils.stateless, "_reparametrize_module", None)  # private
    return contextlib.nullcontext() if swap is None or not weights else swap(model, weights)


CLEAR_GAIN = 0.9  # a copy is made only if it streams in under this fraction of the time


class RelaidWeights:
    """(in, out) copies of the step's matrices that stream faster so, kept equal to the model's."""

    def __init__(self, model: Any, rows: int) -> None:
        """Time both layouts of every shape (`layout_seconds`) and copy the matrices that gain."""
        names = step_matrices(model)
        weight = model.get_parameter(names[0])
        self.made_for = (weight.dtype, weight.device)
        self.seconds = layout_seconds([model.get_parameter(n).detach() for n in names], rows)
        self.copies: dict[str, Tensor] = {}
        for name in names:
            weight = model.get_parameter(name).detach()
            out_in, in_out = self.seconds[tuple(weight.shape)]
            if in_out < CLEAR_GAIN * out_in:
                self.copies[name] = transposed_copy(weight)
        self.seen: dict[str, tuple[int, int, int]] = {}
        self.refresh(model)

    def refresh(self, model: Any) -> None:
        """Copy again every matrix that the model changed or replaced since the last refresh."""
        for name, copy in self.copies.items():
            weight = model.get_parameter(name)
            seen = (id(weight), weight.data_ptr(), weight._version)
            if self.seen.get(name) != seen:
                copy.copy_(weight.detach())
                self.seen[name] = seen


_relaid: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def relaid_weights(model: Any) -> RelaidWeights:
    """The model's one `RelaidWeights` (remade if its dtype or device changed), refreshed."""
    weight = model.decoder.blocks[0].self_attention.k.weight
    relaid = _relaid.get(model)
    if relaid is None or relaid.made_for != (weight.dtype, weight.device):
        relaid = _relaid[model] = RelaidWeights(model, rows=1)
    relaid.refresh(model)
    return relaid


class CompiledStepper(StaticDecoderStep):
    """`DecoderStepper`'s interface over a `StaticDecoderStep` whose `forward` is compiled."""

    def __init__(self, model: Any, batch_size: int, src_len: int, max_length: int) -> None:
        """Allocate the buffers; compile `forward` and `greedy_step` (each on its first call)."""
        super().__init__(model, batch_size, src_len, max_length)
        self.on_cuda = self.position.device.type == "cuda"
        if self.on_cuda:  # CUDA graphs may then write these buffers in place, not copies
            for buffer in self.buffers():
                torch._dynamo.mark_static_address(buffer)
        self.compiled = compile_step(StaticDecoderStep.forward, self.on_cuda)
        self.compiled_greedy = compile_step(greedy_step, self.on_cuda)
        self.guard_every_step = False  # True: dynamo checks its guards at every call
        self.traced: set[str] = set()

    def run(self, name: str, compiled: Callable, *args: Any) -> Tensor:
        """Call `compiled(self, model, *args)`: guards checked on a search's first call only."""
        if self.on_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        if self.length == 0 and not self.on_cuda:  # a new search: the weights may have changed
            self.weights = relaid_weights(self.model_ref()).copies
        started = time.perf_counter()
        with skip_guards(self.length > 0 and not self.guard_every_step):  # see above
            output = compiled(self, self.model_ref(), *args)
        if name not in self.traced:  # the first call traced and compiled
            self.traced.add(name)
            batch, heads, max_length, _ = self.self_attention[0].key.shape
            print(
                f"t5mini.generation: compiled {name} for batch {batch}, source length "
                f"{self.cross_bias.shape[-1]}, max_length {max_length}, {self.cross_bias.dtype}"
                f" on {self.cross_bias.device} in {time.perf_counter() - started:.1f} s"
            )
        self.length += 1
        return output.clone() if self.on_cuda else output  # a CUDA graph reuses its output

    def __call__(self, sequences: Tensor) -> Tensor:
        """Float logits (batch, vocab) for the token after `sequences`; one new token per call."""
        self.position.fill_(self.length)
        self.input_ids.copy_(sequences[:, -1:])  # a fixed buffer: the same input every step
        return self.run("the decoding step", self.compiled, self.input_ids)

    def greedy(self, eos_token_id: int, pad_token_id: int) -> Tensor:
        """The greedy next tokens (batch,), chosen inside the compiled graph (`greedy_step`)."""
        return self.run("the greedy step", self.compiled_greedy, eos_token_id, pad_token_id)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search) in place: the buffers keep their addresses."""
        for layer in self.self_attention:
            layer.reorder(index)
        for key, value in self.cross_attention:
            key.copy_(key.index_select(0, index))
            value.copy_(value.index_select(0, index))
        self.cross_bias.copy_(self.cross_bias.index_select(0, index))


def reset_static_step(
    step: StaticDecoderStep,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    start: Tensor,
) -> None:
    """Fill the buffers for new encoder states (batch, src_len, d_model) and `start` (batch, 1)."""
    cache = init_cache(step.model_ref(), encoder_hidden_states, attention_mask, step.max_length)
    src_len = encoder_hidden_states.shape[1]  # <= the buffers' source length
    for (key, value), (new_key, new_value) in zip(step.cross_attention, cache.cross_attention):
        key.zero_()[:, :, :src_len] = new_key
        value.zero_()[:, :, :src_len] = new_value
    step.cross_bias.fill_(mask_value(step.cross_bias.dtype))  # keys past the source: masked
    step.cross_bias[..., :src_len] = 0.0 if cache.cross_bias is None else cache.cross_bias
    step.bias_by_key.copy_(cache.bias_by_key)
    for layer in step.self_attention:
        layer.key.zero_()
        layer.value.zero_()
    step.input_ids.copy_(start)
    step.position.zero_()
    step.unfinished.fill_(True)
    step.length = 0


_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_COMPILED_STEPS = 8  # shapes kept per model
SHAPE_MULTIPLE = 16  # source lengths and max_length round up to a multiple of this


def compiled_stepper(
    model: Any,
    encoder_hidden_states: Tensor,
    attention_mask: Tensor | None,
    max_length: int,
    start: Tensor,
) -> CompiledStepper:
    """The model's compiled step for this shape (built on first use), reset for `start`."""
    batch_size, src_len, _ = encoder_hidden_states.shape
    src_len, max_length = (-(-n // SHAPE_MULTIPLE) * SHAPE_MULTIPLE for n in (src_len, max_length))
    weight = model.decoder.blocks[0].self_attention.k.weight
    key = (batch_size, src_len, max_length, weight.dtype, weight.device)
    steps = _compiled_steps.setdefault(model, {})
    if key not in steps:
        steps[key] = CompiledStepper(model, batch_size, src_len, max_length)
        if len(steps) > MAX_COMPILED_STEPS:
            del steps[next(iter(steps))]  # the least recently used shape
    steps[key] = steps.pop(key)  # now the most recently used: last in order
    reset_static_step(steps[key], encoder_hidden_states, attention_mask, start)
    return steps[key]


def greedy_step(
    step: StaticDecoderStep, model: Any, eos_token_id: int, pad_token_id: int
) -> Tensor:
    """A decoding step and greedy search's bookkeeping, to compile whole: next tokens (batch,)."""
    logits = step.forward(model, step.input_ids)  # (batch, vocab)
    next_tokens = finish_rows(logits.argmax(dim=-1), step.unfinished, eos_token_id, pad_token_id)
    step.input_ids.copy_(next_tokens[:, None])  # the next step's input
    step.position.add_(1)
    return next_tokens


def compiled_greedy_search(
    step: CompiledStepper,
    sequences: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
) -> Tensor:
    """`sample_search` without sampling or penalties, one compiled call per token."""
    out = sequences.new_full((sequences.shape[0], 1 + max_new_tokens), pad_token_id)
    out[:, :1] = sequences  # (batch, 1 + max_new_tokens), filled in place
    for cur_len in range(1, 1 + max_new_tokens):
        out[:, cur_len] = step.greedy(eos_token_id, pad_token_id)
        if not step.unfinished.any():  # the one host sync per step
            return out[:, : cur_len + 1]
    return out


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    length_penalty_style: str = "transformers",
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> Tensor:
    """Output ids `(batch * num_return_sequences, 1 + new_len)`, each row led by the start token."""
    settings = GenerationSettings(
        max_new_tokens,
        min_new_tokens,
        num_beams,
        do_sample,
        temperature,
        0 if top_k is None else top_k,
        top_p,
        repetition_penalty,
        length_penalty,
        length_penalty_style,
        early_stopping,
        num_return_sequences,
        use_cache,
        compile,
    )
    check_inputs(model, input_ids, attention_mask, generator)
    config = model.config
    start = input_ids.new_full((input_ids.shape[0], 1), config.decoder_start_token_id)
    if settings.max_new_tokens == 0 or input_ids.shape[0] == 0:  # nothing to generate
        return start.repeat_interleave(settings.num_return_sequences, dim=0)
    encoder_hidden_states = model.encode(input_ids, attention_mask)  # (batch, src_len, d_model)
    copies = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
    if copies > 1:  # (batch * copies, ...): beams of one example sit next to each other
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(copies, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        start = start.repeat_interleave(copies, dim=0)
    max_length = 1 + settings.max_new_tokens
    if settings.compile:
        step = compiled_stepper(model, encoder_hidden_states, attention_mask, max_length, start)
        plain = settings.repetition_penalty == 1.0 and settings.min_new_tokens == 0
        if settings.num_beams == 1 and not settings.do_sample and plain:
            return compiled_greedy_search(
                step, start, settings.max_new_tokens, config.eos_token_id, config.pad_token_id
            )
    else:
        step = DecoderStepper(model, encoder_hidden_states, attention_mask, max_length, use_cache)
    on_cpu = not settings.compile and start.device.type == "cpu"  # compiled: the step swaps
    search = beam_search if settings.num_beams > 1 else sample_search
    with swapped_weights(model, relaid_weights(model).copies if on_cpu else {}):
        return search(step, start, settings, config.eos_token_id, config.pad_token_id, generator)


def check_inputs(
    model: Any, input_ids: Tensor, attention_mask: Tensor | None, generator: Any
) -> None:
    """Raise a `TypeError` or `ValueError` naming the first invalid input of `generate`."""
    check_ids("input_ids", input_ids, model.config.vocab_size)
    check_mask("attention_mask", attention_mask, input_ids, "input_ids")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r:.40}")
