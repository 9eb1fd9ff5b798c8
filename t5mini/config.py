# Generated from chapters/06_model.md — edit the chapter, not this file.

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from t5mini.attention import ATTENTION_IMPLEMENTATIONS
from t5mini.checks import check_bool, check_choice, check_float, check_int
from t5mini.feedforward import parse_feed_forward_proj


def _check_fields(config: Any) -> None:
    """Raise TypeError or ValueError naming the first field of ``config`` that cannot build a T5."""
    for name in SIZES:
        check_int(name, getattr(config, name), 1)
    check_float("dropout_rate", config.dropout_rate, 0.0, 1.0, high_open=True)
    check_float("layer_norm_epsilon", config.layer_norm_epsilon, 0.0, low_open=True)
    check_float("initializer_factor", config.initializer_factor, 0.0, low_open=True)
    parse_feed_forward_proj(config.feed_forward_proj)  # names feed_forward_proj itself
    check_bool("tie_word_embeddings", config.tie_word_embeddings)
    check_bool("gradient_checkpointing", config.gradient_checkpointing)
    check_choice("attn_implementation", config.attn_implementation, ATTENTION_IMPLEMENTATIONS)
    for name in TOKEN_IDS:
        check_int(name, getattr(config, name), 0, config.vocab_size - 1)
    buckets = check_int("relative_attention_num_buckets", config.relative_attention_num_buckets, 4)
    # the decoder's causal buckets have the largest exact region: num_buckets // 2
    if config.relative_attention_max_distance <= buckets // 2:
        raise ValueError(
            f"relative_attention_max_distance must be > {buckets // 2} "
            f"(relative_attention_num_buckets // 2) to leave room for the log-spaced "
            f"buckets, got {config.relative_attention_max_distance}"
        )


SIZES = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
)  # positive ints
TOKEN_IDS = ("pad_token_id", "eos_token_id", "decoder_start_token_id")


def _from_dict_kwargs(values: Any, fields: set[str], strict: bool) -> dict[str, Any]:
    """The ``T5Config`` arguments in a transformers config dict (see ``T5Config.from_dict``)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping (a config dict), got {type(values).__name__}")
    unknown = sorted(str(key) for key in values if key not in fields | {"scale_decoder_outputs"})
    if check_bool("strict", strict) and unknown:
        raise ValueError(f"values has keys that are not T5Config fields: {', '.join(unknown)}")
    kwargs = {key: value for key, value in values.items() if key in fields and value is not None}
    if "scale_decoder_outputs" in values:  # transformers >= 5 keeps the real switch here
        scale = check_bool("scale_decoder_outputs", values["scale_decoder_outputs"])
        kwargs["tie_word_embeddings"] = scale
    eos = kwargs.get("eos_token_id")
    if isinstance(eos, (list, tuple)):  # transformers allows several; T5 has one
        if not eos:
            raise ValueError("eos_token_id is an empty list; T5 needs one end-of-sequence id")
        kwargs["eos_token_id"] = eos[0]
    return kwargs


V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # T5 v1.1 and mT5

# The released models (and the book's CPU-sized `tiny`); anything not listed is the default.
PRESETS: dict[str, dict[str, Any]] = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-v1_1-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, **V1_1),
    "t5-v1_1-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, **V1_1),
    "t5-v1_1-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16, **V1_1),
    "mt5-small": dict(
        vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, **V1_1
    ),
    "tiny": dict(
        vocab_size=8192, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8, **V1_1
    ),
}


@dataclass
class T5ConfigFields:
    """T5's hyper-parameters, named as in ``transformers.T5Config``, and their checks."""

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
        """Raise ``TypeError`` or ``ValueError`` naming the first field that cannot build a T5."""
        _check_fields(self)

    @property
    def is_gated_act(self) -> bool:
        """True for the gated feed-forward of T5 v1.1 and mT5."""
        return parse_feed_forward_proj(self.feed_forward_proj)[0]


class T5Config(T5ConfigFields):
    """T5's hyper-parameters, named as in ``transformers.T5Config``; presets and conversions."""

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> T5Config:
        """The configuration of a released model (or ``tiny``), with optional overrides."""
        return cls(**{**PRESETS[check_choice("name", name, PRESETS)], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], strict: bool = False) -> T5Config:
        """Read a transformers config dict or ``config.json``; ``strict`` refuses other keys."""
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**_from_dict_kwargs(values, fields, strict))

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (``transformers.T5Config(**d)`` accepts it)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> T5Config:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
