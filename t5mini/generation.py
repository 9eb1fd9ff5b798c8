# Generated from chapters/08_generation.md — edit the chapter, not this file.

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from t5mini.attention import causal_bias, padding_bias
from t5mini.checks import check_int


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


def _is_finite_number(value: Any) -> bool:
    """A finite real number (int or float, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    use_cache: bool = True

    def __post_init__(self) -> None:
        """Raise a `ValueError` naming the first invalid setting."""
        for name, low in (("max_new_tokens", 0), ("min_new_tokens", 0), ("top_k", 0),
                          ("num_beams", 1), ("num_return_sequences", 1)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("do_sample", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.do_sample and not (_is_finite_number(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"temperature must be a finite number > 0 when do_sample=True, "
                f"got {self.temperature!r}"
            )
        if not (_is_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (_is_finite_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(
                f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}"
            )
        if not _is_finite_number(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences must be <= num_beams ({self.num_beams}) in beam search, "
                f"got {self.num_return_sequences}"
            )
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences != 1:
            raise ValueError(
                f"num_return_sequences must be 1 for greedy search, got "
                f"{self.num_return_sequences}; use do_sample=True or num_beams > 1"
            )


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
        if self.cache is None:  # the whole prefix again: O(cur_len) per step
            logits = self.model.decode(sequences, self.encoder_hidden_states, self.attention_mask)
        else:  # only what the cache has not seen: O(1) per step
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
        next_tokens = torch.where(unfinished, next_tokens, pad_token_id)  # finished: pad
        out[:, cur_len] = next_tokens
        unfinished &= next_tokens != eos_token_id
        length = cur_len + 1
        if not unfinished.any():  # the one host sync per step
            break
    return out[:, :length]


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
    batch_size = sequences.shape[0] // num_beams
    max_length = 1 + settings.max_new_tokens
    num_candidates = 2 * num_beams
    never = -1.0e9  # the score that keeps a slot out of every top-k
    fill = pad_token_id or eos_token_id  # as transformers: EOS when pad is 0
    running = torch.full((batch_size, num_beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :1] = sequences.view(batch_size, num_beams, 1)
    running_scores = torch.zeros(batch_size, num_beams, device=device)
    running_scores[:, 1:] = never  # identical beams at the start: only the first expands
    finished = running.clone()  # (batch, num_beams, max_length)
    finished_scores = torch.full((batch_size, num_beams), never, device=device)
    finished_lengths = torch.zeros(batch_size, num_beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
    in_top_beams = torch.arange(num_candidates, device=device) < num_beams
    batch_offset = torch.arange(batch_size, device=device)[:, None] * num_beams  # (batch, 1)
    cur_len = 1
    while True:
        flat = running[:, :, :cur_len].reshape(batch_size * num_beams, cur_len)
        log_probs = F.log_softmax(step(flat), dim=-1)  # (batch * num_beams, vocab)
        log_probs = process_scores(log_probs, flat, settings, eos_token_id)
        if settings.do_sample:
            log_probs = warp_scores(log_probs, settings, min_tokens_to_keep=2)
        vocab_size = log_probs.shape[-1]
        scores = log_probs.view(batch_size, num_beams, vocab_size) + running_scores[:, :, None]
        scores = scores.view(batch_size, num_beams * vocab_size)
        # 1. the best 2 * num_beams continuations over all beams of an example
        if settings.do_sample:
            picked = torch.multinomial(scores.softmax(dim=-1), num_candidates, generator=generator)
            cand_scores = scores.gather(1, picked)
        else:
            cand_scores, picked = torch.topk(scores, num_candidates)  # (batch, num_candidates)
        cand_parent, cand_token = picked // vocab_size, picked % vocab_size
        candidates = running.take_along_dim(cand_parent[:, :, None], dim=1)
        candidates[:, :, cur_len] = cand_token  # (batch, num_candidates, max_length)
        done = (cand_token == eos_token_id) | (cur_len + 1 >= max_length)
        # 2. the best num_beams unfinished continuations run on
        cand_running = cand_scores + done.float() * never
        keep = torch.topk(cand_running, num_beams).indices  # (batch, num_beams)
        running = candidates.take_along_dim(keep[:, :, None], dim=1)
        running_scores = cand_running.gather(1, keep)
        parents = cand_parent.gather(1, keep)
        # 3. finished continuations (among the top num_beams) compete, length-normalised,
        #    with the hypotheses finished before; the best num_beams are kept
        new_length = cur_len  # tokens generated by this continuation, EOS included
        cand_final = cand_scores / (new_length**settings.length_penalty)
        example_full = is_finished.all(dim=-1, keepdim=True) & (settings.early_stopping is True)
        cand_final += example_full.float() * never
        cand_final += (~can_improve).float() * never
        cand_final += ~(done & in_top_beams) * never
        merged_scores = torch.cat([finished_scores, cand_final], dim=1)
        best = torch.topk(merged_scores, num_beams).indices
        finished_scores = merged_scores.gather(1, best)
        finished = torch.cat([finished, candidates], dim=1).take_along_dim(best[:, :, None], dim=1)
        lengths = torch.full_like(cand_token, new_length)
        finished_lengths = torch.cat([finished_lengths, lengths], dim=1).gather(1, best)
        is_finished = torch.cat([is_finished, done & in_top_beams], dim=1).gather(1, best)
        if on_step is not None:
            on_step(BeamStep(cur_len, running[:, :, : cur_len + 1], running_scores, parents,
                             finished, finished_scores, finished_lengths, is_finished))  # fmt: skip
        cur_len += 1
        # 4. can a running beam still beat the worst finished hypothesis?
        if settings.early_stopping == "never" and settings.length_penalty > 0:
            best_length = max_length - 1
        else:
            best_length = cur_len - 1
        best_possible = running_scores[:, :1] / (best_length**settings.length_penalty)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, never)
        can_improve = can_improve & (best_possible > worst).any(dim=-1, keepdim=True)
        all_full = is_finished.all() & (settings.early_stopping is True)
        if not (can_improve.any() & ~all_full & ~done.all()):
            break
        step.reorder((parents + batch_offset).view(-1))  # the cache follows the beams
    num_return = settings.num_return_sequences
    finished = finished[:, :num_return].reshape(batch_size * num_return, max_length)
    return finished[:, : 1 + int(finished_lengths[:, :num_return].max())]


@torch.inference_mode()
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
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Output ids `(batch * num_return_sequences, 1 + new_len)`, each row led by the start token."""
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        do_sample=do_sample,
        temperature=temperature,
        top_k=0 if top_k is None else top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        use_cache=use_cache,
    )
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be an integer tensor (batch, src_len), got {got}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
    config = model.config
    start = input_ids.new_full((input_ids.shape[0], 1), config.decoder_start_token_id)
    if settings.max_new_tokens == 0:
        return start.repeat_interleave(settings.num_return_sequences, dim=0)
    encoder_hidden_states = model.encode(input_ids, attention_mask)  # (batch, src_len, d_model)
    copies = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
    if copies > 1:  # (batch * copies, ...): beams of one example sit next to each other
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(copies, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        start = start.repeat_interleave(copies, dim=0)
    step = DecoderStepper(
        model, encoder_hidden_states, attention_mask, 1 + settings.max_new_tokens, use_cache
    )
    search = beam_search if settings.num_beams > 1 else sample_search
    return search(step, start, settings, config.eos_token_id, config.pad_token_id, generator)
