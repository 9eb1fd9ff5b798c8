# Generated from chapters/06_model.md — edit the chapter, not this file.

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from t5mini.attention import T5Attention, causal_bias, padding_bias
from t5mini.checks import check_bool, check_hidden_states, check_ids, check_mask, check_not_meta
from t5mini.feedforward import FeedForward, clamp_fp16
from t5mini.norm import RMSNorm
from t5mini.position import RelativePositionBias

if TYPE_CHECKING:  # for type hints only: a model takes any object with T5Config's fields
    from t5mini.config import T5Config


class T5Block(nn.Module):
    """One T5 layer: self-attention, cross-attention (decoder only), feed-forward; all pre-norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        """The sub-layers of one encoder block (``is_decoder=False``) or decoder block."""
        super().__init__()
        d, eps, dropout = config.d_model, config.layer_norm_epsilon, config.dropout_rate
        attention_args = (d, config.d_kv, config.num_heads, dropout, config.attn_implementation)
        self.is_decoder = is_decoder
        self.self_attention_norm = RMSNorm(d, eps)
        self.self_attention = T5Attention(*attention_args)
        if is_decoder:
            self.cross_attention_norm = RMSNorm(d, eps)
            self.cross_attention = T5Attention(*attention_args)
        self.feed_forward_norm = RMSNorm(d, eps)
        self.feed_forward = FeedForward(d, config.d_ff, dropout, config.feed_forward_proj)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden_states: Tensor,
        self_bias: Tensor | None,
        encoder_hidden_states: Tensor | None = None,
        cross_bias: Tensor | None = None,
        cache: Any | None = None,
        cross_key_value: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """(batch, seq_len, d_model) -> (batch, seq_len, d_model)."""
        normed = self.self_attention_norm(hidden_states)
        attended = self.self_attention(normed, bias=self_bias, cache=cache)
        hidden_states = clamp_fp16(hidden_states + self.dropout(attended))
        if self.is_decoder:
            normed = self.cross_attention_norm(hidden_states)
            attended = self.cross_attention(
                normed, encoder_hidden_states, cross_bias, key_value=cross_key_value
            )
            hidden_states = clamp_fp16(hidden_states + self.dropout(attended))
        transformed = self.feed_forward(self.feed_forward_norm(hidden_states))
        return clamp_fp16(hidden_states + self.dropout(transformed))


def _decode_with_cache(stack: T5Stack, inputs_embeds: Tensor, cache: Any) -> Tensor:
    """The decoder stack on new positions only; the cache holds the rest and advances."""
    new_len = inputs_embeds.shape[1]
    self_bias = cache.self_bias(new_len)  # (1, heads, new_len, cache.length + new_len)
    hidden_states = stack.dropout(inputs_embeds)
    for block, layer_cache, cross_kv in zip(
        stack.blocks, cache.self_attention, cache.cross_attention
    ):
        hidden_states = block(
            hidden_states, self_bias, None, cache.cross_bias, layer_cache, cross_kv
        )
    cache.length += new_len
    return stack.dropout(stack.final_norm(hidden_states))


def shared_bias(stack: T5Stack, length: int, attention_mask: Tensor | None) -> Tensor:
    """The self-attention bias every block of ``stack`` shares: position bias plus masks."""
    bias = stack.relative_position_bias(length, length)  # (1, heads, seq_len, seq_len)
    if attention_mask is not None:
        bias = bias + padding_bias(attention_mask, bias.dtype)  # (batch, heads, ...)
    if stack.is_decoder:
        bias = bias + causal_bias(length, length, bias.dtype, bias.device)
    return bias


class T5Stack(nn.Module):
    """The encoder or the decoder: blocks sharing one position bias, then a final norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        """The encoder stack (``is_decoder=False``) or the decoder stack of ``config``."""
        super().__init__()
        num_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.is_decoder = is_decoder
        self.relative_position_bias = RelativePositionBias(
            config.relative_attention_num_buckets,
            config.relative_attention_max_distance,
            config.num_heads,
            bidirectional=not is_decoder,
        )
        self.blocks = nn.ModuleList([T5Block(config, is_decoder) for _ in range(num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        cache: Any | None = None,
    ) -> Tensor:
        """(batch, seq_len, d_model) embeddings -> (batch, seq_len, d_model) final states."""
        if cache is not None:  # incremental decoding (chapter 8)
            return _decode_with_cache(self, inputs_embeds, cache)
        bias = shared_bias(self, inputs_embeds.shape[1], attention_mask)  # once for every block
        cross_bias = None
        if encoder_attention_mask is not None:
            cross_bias = padding_bias(encoder_attention_mask, bias.dtype)  # (batch, 1, 1, src)
        hidden_states = self.dropout(inputs_embeds)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            args = (hidden_states, bias, encoder_hidden_states, cross_bias)
            if recompute:  # keep only each block's input; recompute the rest in backward
                hidden_states = checkpoint(block, *args, use_reentrant=False)
            else:
                hidden_states = block(*args)
        return self.dropout(self.final_norm(hidden_states))


@dataclass
class Seq2SeqLMOutput:
    """What ``forward`` returns: ``loss`` (None without labels), ``logits``, the encoder states."""

    logits: Tensor  # (batch, target_len, vocab_size)
    loss: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None  # (batch, src_len, d_model)


def shift_right(labels: Tensor, decoder_start_token_id: int = 0, pad_token_id: int = 0) -> Tensor:
    """Decoder inputs for teacher forcing: start token, then ``labels[:, :-1]``; -100 -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def seq2seq_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy (in fp32) over the positions whose label is not -100."""
    labels = labels.to(device=logits.device, dtype=torch.long)  # int32 labels too
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


@torch.no_grad()
def init_t5_weights(model: T5ForConditionalGeneration) -> None:
    """T5's initialisation (Mesh TensorFlow's standard deviations, times initializer_factor)."""
    c, factor = model.config, model.config.initializer_factor
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.fill_(factor)
        elif isinstance(module, T5Attention):
            nn.init.normal_(module.q.weight, std=factor * (c.d_model * c.d_kv) ** -0.5)
            nn.init.normal_(module.k.weight, std=factor * c.d_model**-0.5)
            nn.init.normal_(module.v.weight, std=factor * c.d_model**-0.5)
            nn.init.normal_(module.o.weight, std=factor * (c.num_heads * c.d_kv) ** -0.5)
        elif isinstance(module, FeedForward):
            for name in ("wi", "wi_0", "wi_1"):
                if hasattr(module, name):
                    nn.init.normal_(getattr(module, name).weight, std=factor * c.d_model**-0.5)
            nn.init.normal_(module.wo.weight, std=factor * c.d_ff**-0.5)
        elif isinstance(module, RelativePositionBias):
            nn.init.normal_(module.embedding.weight, std=factor * c.d_model**-0.5)
    nn.init.normal_(model.embedding.weight, std=factor * 1.0)
    if model.lm_head is not None:
        nn.init.normal_(model.lm_head.weight, std=factor * c.d_model**-0.5)


def _checked_config(config: Any) -> Any:
    """A validated copy of ``config``, which the model owns; any object with its fields will do."""
    if not callable(getattr(config, "validate", None)):
        raise TypeError(f"config must be a T5Config, got {type(config).__name__}")
    config = copy.copy(config)  # the caller's config stays as it was
    config.validate()  # fields may have been changed since the config was made
    return config


def _checked_weights(model: nn.Module) -> torch.dtype:
    """The model's dtype; raise if a weight is on the meta device or the dtypes are mixed."""
    check_not_meta("model", model)
    dtype = model.embedding.weight.dtype
    for name, weight in model.named_parameters():
        wo_in_fp32 = name.endswith("wo.weight") and weight.dtype == torch.float32  # fp16 runs
        if weight.dtype != dtype and not wo_in_fp32:
            raise TypeError(
                f"model.{name} has dtype {weight.dtype} but model.embedding.weight has {dtype}; "
                f"cast the whole model, e.g. model.to({dtype})"
            )
    return dtype


def _check_decode_inputs(
    model: Any, ids: Any, states: Any, mask: Any, decoder_mask: Any, cache: Any
) -> None:
    """Raise for decoder ids, encoder states and masks that do not fit together."""
    config = model.config
    if cache is None or not isinstance(ids, Tensor) or ids.device.type == "cpu":
        check_ids("decoder_input_ids", ids, config.vocab_size)  # on a GPU: a sync a step
    if cache is not None:
        return  # the cache holds the encoder states and their mask
    dtype = _checked_weights(model)
    check_mask("decoder_attention_mask", decoder_mask, ids, "decoder_input_ids")
    check_hidden_states("encoder_hidden_states", states, config.d_model)
    if states.dim() != 3 or states.shape[0] != ids.shape[0]:
        raise ValueError(
            f"encoder_hidden_states must have shape (batch={ids.shape[0]}, src_len, "
            f"d_model={config.d_model}), got {tuple(states.shape)}"
        )
    if states.dtype != dtype:
        raise TypeError(f"encoder_hidden_states has dtype {states.dtype}; the model's is {dtype}")
    if mask is not None:
        check_mask("attention_mask", mask, states[..., 0], "encoder_hidden_states (batch, src_len)")


def _check_forward_inputs(
    config: Any, input_ids: Any, decoder_input_ids: Any, labels: Any, encoder_states: Any
) -> None:
    """Raise when ``forward`` lacks an input or its labels do not fit."""
    if labels is not None:
        check_ids("labels", labels, config.vocab_size, allow_ignore=True)
        if decoder_input_ids is not None:
            check_mask("labels", labels, decoder_input_ids, "decoder_input_ids")
        if isinstance(input_ids, Tensor) and input_ids.dim() == 2 and len(labels) != len(input_ids):
            raise ValueError(
                f"labels has batch size {len(labels)} but input_ids has {len(input_ids)}; "
                "each source needs its row of labels"
            )
    if decoder_input_ids is None and labels is None:
        raise ValueError("forward needs decoder_input_ids or labels (got neither)")
    if encoder_states is None and input_ids is None:
        raise ValueError("forward needs input_ids or encoder_hidden_states (got neither)")


def head_logits(
    hidden_states: Tensor, embedding: nn.Embedding, lm_head: nn.Linear | None
) -> Tensor:
    """Decoder states (batch, len, d_model) -> logits (batch, len, vocab_size)."""
    if lm_head is None:  # tied: the embedding table, after the d_model**-0.5 rescale
        d_model = embedding.weight.shape[1]
        return F.linear(hidden_states * d_model**-0.5, embedding.weight)
    return lm_head(hidden_states)


class T5PreTrainedModel(nn.Module):
    """What a T5 model class shares beyond T5 itself: conveniences and hand-offs."""

    config: T5Config
    embedding: nn.Embedding
    lm_head: nn.Linear | None

    def lm_logits(self, hidden_states: Tensor) -> Tensor:
        """Decoder states (batch, len, d_model) -> logits (batch, len, vocab_size)."""
        return head_logits(hidden_states, self.embedding, self.lm_head)

    def shift_right(self, labels: Tensor) -> Tensor:
        """``shift_right`` with this model's start and pad ids."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def num_parameters(self) -> int:
        """The number of distinct parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.config.gradient_checkpointing = enable = check_bool("enable", enable)
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enable

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Generate output ids (greedy, beam search or sampling); built in chapter 9."""
        from t5mini.generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` like transformers; built in chapter 7."""
        from t5mini.convert import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> T5ForConditionalGeneration:
        """Load what ``save_pretrained`` or transformers wrote there; built in chapter 7."""
        from t5mini.convert import from_pretrained

        return from_pretrained(directory, model_class=cls)


class T5EncoderDecoder(T5PreTrainedModel):
    """T5's parts: a shared embedding, encoder and decoder stacks, a tied (v1.0) or untied head."""

    def __init__(self, config: T5Config) -> None:
        """Build the model of ``config`` with T5's initialisation."""
        super().__init__()
        config = self.config = _checked_config(config)  # the model's own copy
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)  # shared
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        untied = not config.tie_word_embeddings
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False) if untied else None
        init_t5_weights(self)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The encoder's final states (batch, src_len, d_model), after its norm and dropout."""
        check_ids("input_ids", input_ids, self.config.vocab_size)
        check_mask("attention_mask", attention_mask, input_ids, "input_ids")
        _checked_weights(self)
        return self.encoder(self.embedding(input_ids), attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        cache: Any | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits (batch, new_len, vocab); with a cache, only the new tokens, and it advances."""
        inputs = (decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask)
        _check_decode_inputs(self, *inputs, cache)
        embeds = self.embedding(decoder_input_ids)  # (batch, new_len, d_model)
        states = self.decoder(
            embeds, decoder_attention_mask, encoder_hidden_states, attention_mask, cache
        )
        return head_logits(states, self.embedding, self.lm_head)  # (batch, new_len, vocab)


class T5ForConditionalGeneration(T5EncoderDecoder):
    """T5 for training and generation: ``forward`` gives the logits and, with labels, the loss."""

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        """Encode, decode with teacher forcing, and (given labels) the cross-entropy loss."""
        inputs = (input_ids, decoder_input_ids, labels, encoder_hidden_states)
        _check_forward_inputs(self.config, *inputs)
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        if encoder_hidden_states is None:
            encoder_hidden_states = self.encode(input_ids, attention_mask)
        logits = self.decode(
            decoder_input_ids, encoder_hidden_states, attention_mask, None, decoder_attention_mask
        )
        loss = None if labels is None else seq2seq_loss(logits, labels)
        return Seq2SeqLMOutput(logits, loss, encoder_hidden_states)
