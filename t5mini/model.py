# Generated from chapters/06_model.md — edit the chapter, not this file.

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from t5mini.attention import T5Attention, causal_bias, padding_bias
from t5mini.config import T5Config
from t5mini.feedforward import FeedForward, clamp_fp16
from t5mini.norm import RMSNorm
from t5mini.position import RelativePositionBias


class T5Block(nn.Module):
    """One T5 layer: self-attention, cross-attention (decoder only), feed-forward; all pre-norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        """The sub-layers of one encoder block (``is_decoder=False``) or decoder block."""
        super().__init__()
        d, eps = config.d_model, config.layer_norm_epsilon
        attention_args = (d, config.d_kv, config.num_heads, config.dropout_rate)
        self.is_decoder = is_decoder
        self.self_attention_norm = RMSNorm(d, eps)
        self.self_attention = T5Attention(*attention_args, config.attn_implementation)
        if is_decoder:
            self.cross_attention_norm = RMSNorm(d, eps)
            self.cross_attention = T5Attention(*attention_args, config.attn_implementation)
        self.feed_forward_norm = RMSNorm(d, eps)
        self.feed_forward = FeedForward(
            d, config.d_ff, config.dropout_rate, config.feed_forward_proj
        )
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_bias: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_bias: torch.Tensor | None = None,
        cache: Any | None = None,
        cross_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(batch, seq_len, d_model) -> (batch, seq_len, d_model)."""
        attended = self.self_attention(
            self.self_attention_norm(hidden_states), bias=self_bias, cache=cache
        )
        hidden_states = clamp_fp16(hidden_states + self.dropout(attended))
        if self.is_decoder:
            attended = self.cross_attention(
                self.cross_attention_norm(hidden_states),
                key_value_states=encoder_hidden_states,
                bias=cross_bias,
                key_value=cross_key_value,
            )
            hidden_states = clamp_fp16(hidden_states + self.dropout(attended))
        transformed = self.feed_forward(self.feed_forward_norm(hidden_states))
        return clamp_fp16(hidden_states + self.dropout(transformed))


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
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """(batch, seq_len, d_model) embeddings -> (batch, seq_len, d_model) final states."""
        length = inputs_embeds.shape[1]
        if cache is not None:  # incremental decoding (chapter 8): the cache holds the rest
            self_bias = cache.self_bias(length)  # (1, heads, length, cache.length + length)
            hidden_states = self.dropout(inputs_embeds)
            for block, layer_cache, cross_kv in zip(
                self.blocks, cache.self_attention, cache.cross_attention
            ):
                hidden_states = block(
                    hidden_states, self_bias, None, cache.cross_bias, layer_cache, cross_kv
                )
            cache.length += length
            return self.dropout(self.final_norm(hidden_states))

        # the position bias, computed once and shared by every layer, plus the masks
        bias = self.relative_position_bias(length, length)  # (1, heads, seq_len, seq_len)
        if attention_mask is not None:
            bias = bias + padding_bias(attention_mask, bias.dtype)  # (batch, heads, ...)
        if self.is_decoder:
            bias = bias + causal_bias(length, length, bias.dtype, bias.device)
        cross_bias = None
        if encoder_attention_mask is not None:
            cross_bias = padding_bias(encoder_attention_mask, bias.dtype)  # (batch, 1, 1, src)
        hidden_states = self.dropout(inputs_embeds)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = checkpoint(
                    block, hidden_states, bias, encoder_hidden_states, cross_bias,
                    use_reentrant=False,
                )  # fmt: skip
            else:
                hidden_states = block(hidden_states, bias, encoder_hidden_states, cross_bias)
        return self.dropout(self.final_norm(hidden_states))


@dataclass
class Seq2SeqLMOutput:
    """What ``forward`` returns: ``loss`` (None without labels), ``logits``, the encoder states."""

    logits: torch.Tensor  # (batch, target_len, vocab_size)
    loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None  # (batch, src_len, d_model)


def shift_right(
    labels: torch.Tensor, decoder_start_token_id: int = 0, pad_token_id: int = 0
) -> torch.Tensor:
    """Decoder inputs for teacher forcing: start token, then ``labels[:, :-1]``; -100 -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def _check_ids(ids: Any, name: str, vocab_size: int, allow_ignore: bool = False) -> None:
    """Raise if ``ids`` is not a (batch, len) integer tensor of values in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor, got {got}")
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, seq_len > 0), got {tuple(ids.shape)}")
    values = ids[ids != -100] if allow_ignore else ids
    if values.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(values))  # one host sync
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        allowed = f"[0, {vocab_size})" + (" or -100" if allow_ignore else "")
        raise ValueError(f"{name} contains {bad}, outside the vocabulary range {allowed}")


def _check_mask(mask: torch.Tensor | None, name: str, ids: torch.Tensor, ids_name: str) -> None:
    """Raise if an attention mask does not have the shape of its ids."""
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {ids_name} has shape "
            f"{tuple(ids.shape)}; they must match (1 = token, 0 = padding)"
        )


class T5ForConditionalGeneration(nn.Module):
    """T5: shared embeddings, encoder and decoder stacks, and a tied (v1.0) or untied head."""

    def __init__(self, config: T5Config) -> None:
        """Build the model of ``config`` with T5's initialisation."""
        super().__init__()
        if not isinstance(config, T5Config):
            raise TypeError(f"config must be a t5mini T5Config, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """T5's initialisation (Mesh TensorFlow's standard deviations, times initializer_factor)."""
        c, factor = self.config, self.config.initializer_factor
        for module in self.modules():
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
        nn.init.normal_(self.embedding.weight, std=factor * 1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=factor * c.d_model**-0.5)

    def num_parameters(self) -> int:
        """The number of distinct parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.config.gradient_checkpointing = enable
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enable

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """``shift_right`` with this model's start and pad ids."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder's final states, (batch, src_len, d_model), after its final norm and dropout."""
        _check_ids(input_ids, "input_ids", self.config.vocab_size)
        _check_mask(attention_mask, "attention_mask", input_ids, "input_ids")
        return self.encoder(self.embedding(input_ids), attention_mask)

    def lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Decoder states (batch, len, d_model) -> logits (batch, len, vocab_size)."""
        if self.lm_head is None:  # tied: the embedding table, after the d_model**-0.5 rescale
            return F.linear(hidden_states * self.config.d_model**-0.5, self.embedding.weight)
        return self.lm_head(hidden_states)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, new_len, vocab); with a cache, only the new tokens, and it advances."""
        if cache is None or decoder_input_ids.device.type == "cpu":
            _check_ids(decoder_input_ids, "decoder_input_ids", self.config.vocab_size)
        if cache is None:
            _check_mask(
                decoder_attention_mask, "decoder_attention_mask",
                decoder_input_ids, "decoder_input_ids",
            )  # fmt: skip
            if encoder_hidden_states.dim() != 3 or (
                encoder_hidden_states.shape[0] != decoder_input_ids.shape[0]
            ):
                raise ValueError(
                    "encoder_hidden_states must have shape (batch, src_len, d_model) with the "
                    f"batch of decoder_input_ids {tuple(decoder_input_ids.shape)}, got "
                    f"{tuple(encoder_hidden_states.shape)}"
                )
            if attention_mask is not None and tuple(attention_mask.shape) != tuple(
                encoder_hidden_states.shape[:2]
            ):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the encoder "
                    f"states are {tuple(encoder_hidden_states.shape[:2])} (batch, src_len)"
                )
        hidden_states = self.decoder(
            self.embedding(decoder_input_ids),
            decoder_attention_mask,
            encoder_hidden_states,
            attention_mask,
            cache=cache,
        )
        return self.lm_logits(hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        """Encode, decode with teacher forcing, and (given labels) the cross-entropy loss."""
        if labels is not None:
            _check_ids(labels, "labels", self.config.vocab_size, allow_ignore=True)
            if decoder_input_ids is None:
                decoder_input_ids = self.shift_right(labels)
            elif tuple(labels.shape) != tuple(decoder_input_ids.shape):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)} but decoder_input_ids has shape "
                    f"{tuple(decoder_input_ids.shape)}; they must match"
                )
        if decoder_input_ids is None:
            raise ValueError("forward needs decoder_input_ids or labels (got neither)")
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or encoder_hidden_states (got neither)")
            encoder_hidden_states = self.encode(input_ids, attention_mask)
        logits = self.decode(
            decoder_input_ids,
            encoder_hidden_states,
            attention_mask,
            decoder_attention_mask=decoder_attention_mask,
        )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten().to(logits.device), ignore_index=-100
            )
        return Seq2SeqLMOutput(logits, loss, encoder_hidden_states)

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Generate output ids (greedy, beam search or sampling); built in chapter 8."""
        from t5mini.generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` as transformers does; built in chapter 7."""
        from t5mini.convert import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> T5ForConditionalGeneration:
        """Load what ``save_pretrained`` or transformers wrote in ``directory``; built in chapter 7."""
        from t5mini.convert import from_pretrained

        return from_pretrained(directory, model_class=cls)
