# Generated from chapters/06_model.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from t5mini.attention import ATTENTION_IMPLEMENTATIONS
from t5mini.feedforward import parse_feed_forward_proj

_SIZES = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
)

# The released models (and the book's CPU-sized `tiny`); anything not listed is the default.
PRESETS: dict[str, dict[str, Any]] = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-v1_1-small": dict(
        d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
    "t5-v1_1-base": dict(
        d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
    "t5-v1_1-large": dict(
        d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
    "mt5-small": dict(
        vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
    "tiny": dict(
        vocab_size=8192, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ),
}  # fmt: skip


@dataclass
class T5Config:
    """T5's hyper-parameters, named as in ``transformers.T5Config``."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: same as num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        """Default ``num_decoder_layers`` to ``num_layers``, then validate every field."""
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot build a T5."""
        for name in _SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        parse_feed_forward_proj(self.feed_forward_proj)  # names feed_forward_proj itself
        buckets = self.relative_attention_num_buckets
        if buckets < 4:
            raise ValueError(f"relative_attention_num_buckets must be >= 4, got {buckets}")
        # the decoder's causal buckets have the largest exact region: num_buckets // 2
        if self.relative_attention_max_distance <= buckets // 2:
            raise ValueError(
                f"relative_attention_max_distance must be > {buckets // 2} "
                f"(relative_attention_num_buckets // 2) to leave room for the log-spaced "
                f"buckets, got {self.relative_attention_max_distance}"
            )
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an int in [0, {self.vocab_size}), got {value!r}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                f"got {self.attn_implementation!r}"
            )

    @property
    def is_gated_act(self) -> bool:
        """True for the gated feed-forward of T5 v1.1 and mT5."""
        return parse_feed_forward_proj(self.feed_forward_proj)[0]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> T5Config:
        """The configuration of a released model (or ``tiny``), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> T5Config:
        """Read a ``transformers`` T5 config dict (or ``config.json``); other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names and v is not None}
        if "scale_decoder_outputs" in values:  # transformers >= 5 keeps the real switch here
            kwargs["tie_word_embeddings"] = bool(values["scale_decoder_outputs"])
        if isinstance(kwargs.get("eos_token_id"), (list, tuple)):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if "num_decoder_layers" not in kwargs and "num_layers" in kwargs:
            kwargs["num_decoder_layers"] = kwargs["num_layers"]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (``transformers.T5Config(**d)`` accepts it)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> T5Config:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
