# Generated from chapters/09_beam_search.md — edit the chapter, not this file.

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from t5mini.checks import check_choice, check_ids, check_mask
from t5mini.decoding import (
    CACHE_CHUNK,
    MAX_LENGTH_PENALTY,
    MIN_TEMPERATURE,
    DecoderCache,
    DecoderStepper,
    GenerationSettings,
    KVCache,
    apply_repetition_penalty,
    check_generation_settings,
    finish_rows,
    init_cache,
    process_scores,
    sample_search,
    top_k_filter,
    top_p_filter,
    warp_scores,
    widen,
)

__all__ = [  # chapter 8's names are importable from here too, as they always were
    "CACHE_CHUNK",
    "MAX_LENGTH_PENALTY",
    "MIN_TEMPERATURE",
    "DecoderCache",
    "DecoderStepper",
    "GenerationSettings",
    "KVCache",
    "apply_repetition_penalty",
    "check_generation_settings",
    "finish_rows",
    "init_cache",
    "process_scores",
    "sample_search",
    "top_k_filter",
    "top_p_filter",
    "warp_scores",
    "widen",
    "NEVER",
    "length_penalty_divisor",
    "pick_candidates",
    "start_beams",
    "keep_best_finished",
    "can_still_improve",
    "BeamStep",
    "beam_step",
    "widen_beams",
    "advance_beams",
    "beam_search",
    "generate",
    "check_inputs",
]


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
    sequences: Tensor, num_beams: int, width: int, fill: int
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Running beams (only the first may expand) and an empty finished list, per example."""
    batch_size, device = sequences.shape[0] // num_beams, sequences.device
    running = torch.full((batch_size, num_beams, width), fill, dtype=torch.long, device=device)
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
    """Merge new finished hypotheses into (sequences, scores, lengths, is_finished): the best."""
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
    finished: Tensor  # (batch, num_beams, width) best finished hypotheses so far
    finished_scores: Tensor  # (batch, num_beams) their length-normalised scores
    finished_lengths: Tensor  # (batch, num_beams) their generated lengths, EOS included
    is_finished: Tensor  # (batch, num_beams) False where a slot holds no hypothesis yet
    at_limit: Tensor  # (batch, num_beams) True where a hypothesis was cut by the length limit


def beam_step(
    cur_len: int,
    running: Tensor,
    running_scores: Tensor,
    parents: Tensor,
    finished: tuple[Tensor, Tensor, Tensor, Tensor],
    eos_token_id: int,
) -> BeamStep:
    """The `BeamStep` of the search's state after generating `cur_len` tokens."""
    last_token = finished[0].gather(2, finished[2][:, :, None])[..., 0]  # (batch, beams)
    at_limit = finished[3] & (last_token != eos_token_id)
    return BeamStep(
        cur_len, running[:, :, : cur_len + 1], running_scores, parents, *finished, at_limit
    )


def widen_beams(
    running: Tensor, finished: tuple[Tensor, Tensor, Tensor, Tensor], width: int, fill: int
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Room for `width` tokens in the running and the finished hypotheses."""
    return widen(running, width, fill=fill), (widen(finished[0], width, fill=fill), *finished[1:])


def advance_beams(
    log_probs: Tensor,
    running: Tensor,
    running_scores: Tensor,
    finished: tuple[Tensor, Tensor, Tensor, Tensor],
    cur_len: int,
    max_length: int,
    can_improve: Tensor,
    settings: GenerationSettings,
    eos_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """One step: (running, their scores, their parent beams, finished, which candidates ended)."""
    batch_size, num_beams, vocab_size = running.shape[0], running.shape[1], log_probs.shape[-1]
    scores = log_probs.view(batch_size, num_beams, vocab_size) + running_scores[:, :, None]
    # 1. the best 2 * num_beams continuations over all beams of an example
    scores = scores.view(batch_size, num_beams * vocab_size)
    cand_scores, picked = pick_candidates(scores, 2 * num_beams, settings.do_sample, generator)
    cand_parent, cand_token = picked // vocab_size, picked % vocab_size
    candidates = running.take_along_dim(cand_parent[:, :, None], dim=1)
    candidates[:, :, cur_len] = cand_token  # (batch, 2 * num_beams, width)
    done = (cand_token == eos_token_id) | (cur_len + 1 >= max_length)
    # 2. the best num_beams unfinished continuations run on
    cand_running = cand_scores + done.float() * NEVER
    keep = torch.topk(cand_running, num_beams).indices  # (batch, num_beams)
    running = candidates.take_along_dim(keep[:, :, None], dim=1)
    running_scores, parents = cand_running.gather(1, keep), cand_parent.gather(1, keep)
    # 3. finished continuations among the top num_beams compete, length-normalised
    is_new = done & (torch.arange(2 * num_beams, device=done.device) < num_beams)
    cand_final = cand_scores / length_penalty_divisor(cur_len, settings)
    example_full = finished[3].all(dim=-1, keepdim=True) & (settings.early_stopping is True)
    cand_final += example_full.float() * NEVER
    cand_final += (~can_improve).float() * NEVER
    cand_final += ~is_new * NEVER
    finished = keep_best_finished(finished, candidates, cand_final, cur_len, is_new)
    return running, running_scores, parents, finished, done


def beam_search(
    step: DecoderStepper,
    sequences: Tensor,
    settings: GenerationSettings,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[BeamStep], None] | None = None,
) -> Tensor:
    """Beam search from `(batch * num_beams, 1)` start tokens -> `(batch * num_return, len)`."""
    num_beams, device = settings.num_beams, sequences.device
    batch_size, max_length = sequences.shape[0] // num_beams, 1 + settings.max_new_tokens
    fill = pad_token_id or eos_token_id  # as transformers: EOS when pad is 0
    width = min(max_length, CACHE_CHUNK)
    running, running_scores, finished = start_beams(sequences, num_beams, width, fill)
    can_improve = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch_size, device=device)[:, None] * num_beams  # (batch, 1)
    for cur_len in range(1, max_length):
        if cur_len == running.shape[2]:  # full: twice the room
            running, finished = widen_beams(running, finished, min(max_length, 2 * cur_len), fill)
        flat = running[:, :, :cur_len].reshape(batch_size * num_beams, cur_len)
        log_probs = process_scores(F.log_softmax(step(flat), dim=-1), flat, settings, eos_token_id)
        if settings.do_sample:
            log_probs = warp_scores(log_probs, settings, min_tokens_to_keep=2)
        running, running_scores, parents, finished, done = advance_beams(
            log_probs,
            running,
            running_scores,
            finished,
            cur_len,
            max_length,
            can_improve,
            settings,
            eos_token_id,
            generator,
        )
        if on_step is not None:
            on_step(beam_step(cur_len, running, running_scores, parents, finished, eos_token_id))
        # 4. stop when no example can improve, or every example is full (early stopping)
        bound = can_still_improve(running_scores, finished, cur_len + 1, max_length, settings)
        can_improve &= bound
        all_full = finished[3].all() & (settings.early_stopping is True)
        if not (can_improve.any() & ~all_full & ~done.all()):
            break
        step.reorder((parents + batch_offset).view(-1))  # the cache follows the beams
    sequences, _, lengths, _ = finished
    num_return = settings.num_return_sequences
    sequences = sequences[:, :num_return].reshape(batch_size * num_return, -1)
    return sequences[:, : 1 + int(lengths[:, :num_return].max())]


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
    weight_layout: str = "auto",
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
    check_inputs(model, input_ids, attention_mask, generator, weight_layout, compile)
    config = model.config
    start = input_ids.new_full((input_ids.shape[0], 1), config.decoder_start_token_id)
    if settings.max_new_tokens == 0 or input_ids.shape[0] == 0:  # nothing to generate
        return start.repeat_interleave(settings.num_return_sequences, dim=0)
    copies = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
    with memory_named(input_ids.shape[0], copies, settings.max_new_tokens):
        states = model.encode(input_ids, attention_mask)  # (batch, src_len, d_model)
        # (batch * copies, ...): the beams (or samples) of one example sit next to each other
        states, start = states.repeat_interleave(copies, 0), start.repeat_interleave(copies, 0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        if settings.compile:  # the compiled step of appendix B
            from t5mini.compiled import compiled_generate

            return compiled_generate(
                model,
                states,
                attention_mask,
                start,
                settings,
                generator,
                weight_layout=weight_layout,
            )
        max_length = 1 + settings.max_new_tokens
        step = DecoderStepper(model, states, attention_mask, max_length, settings.use_cache)
        search = beam_search if settings.num_beams > 1 else sample_search
        return search(step, start, settings, config.eos_token_id, config.pad_token_id, generator)


def check_inputs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    generator: Any,
    weight_layout: Any = "auto",
    compile: bool = False,
) -> None:
    """Raise a `TypeError` or `ValueError` naming the first invalid input of `generate`."""
    check_ids("input_ids", input_ids, model.config.vocab_size)
    check_mask("attention_mask", attention_mask, input_ids, "input_ids")
    if not compile:  # eager decoding uses the model's own weights; appendix B checks the rest
        check_choice("weight_layout", weight_layout, ("auto", "model"))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r:.40}")


@contextlib.contextmanager
def memory_named(batch_size: int, copies: int, max_new_tokens: int) -> Iterator[None]:
    """Re-raise a failed allocation (`MemoryError`) naming the batch and `max_new_tokens`."""
    try:
        yield
    except MemoryError as error:
        raise MemoryError(
            f"generate ran out of memory for a batch of {batch_size} (x{copies} beams or "
            f"samples) with max_new_tokens={max_new_tokens}: {error}. The KV cache and the "
            "output grow with each token until every row has ended; a smaller batch or "
            "max_new_tokens needs less"
        ) from error


MOVED_TO_COMPILED = (
    "StaticKVCache",
    "StaticDecoderStep",
    "own_code",
    "skip_guards",
    "compile_step",
    "step_matrices",
    "transposed_copy",
    "layout_seconds",
    "CLEAR_GAIN",
    "CompiledStepper",
    "reset_static_step",
    "MAX_COMPILED_STEPS",
    "SHAPE_MULTIPLE",
    "compiled_stepper",
    "greedy_step",
    "compiled_greedy_search",
)


def __getattr__(name: str) -> Any:
    """Old names of the compiled path, found in `t5mini.compiled` (appendix B)."""
    if name in MOVED_TO_COMPILED:
        return getattr(importlib.import_module("t5mini.compiled"), name)
    raise AttributeError(f"module 't5mini.generation' has no attribute {name!r}")
