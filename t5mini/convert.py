# Generated from chapters/07_matching_the_reference.md — edit the chapter, not this file.

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration

# present in some released checkpoints, used by no implementation: cross-attention has no bias
LEGACY_IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
# copies of the shared embedding in a transformers state dict
EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def hf_to_t5mini_names(config: T5Config) -> dict[str, str]:
    """Map every transformers T5 parameter name of a ``config`` model to its t5mini name."""
    names = {"shared.weight": "embedding.weight"}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    ff_weights = ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")
    stacks = (("encoder", config.num_layers), ("decoder", config.num_decoder_layers))
    for stack, num_layers in stacks:
        names[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{stack}.relative_position_bias.embedding.weight"
        )
        sublayers = [("SelfAttention", "self_attention")]
        if stack == "decoder":
            sublayers.append(("EncDecAttention", "cross_attention"))
        for i in range(num_layers):
            hf, ours = f"{stack}.block.{i}.layer", f"{stack}.blocks.{i}"
            for index, (hf_name, our_name) in enumerate(sublayers):
                names[f"{hf}.{index}.layer_norm.weight"] = f"{ours}.{our_name}_norm.weight"
                for proj in ("q", "k", "v", "o"):
                    names[f"{hf}.{index}.{hf_name}.{proj}.weight"] = (
                        f"{ours}.{our_name}.{proj}.weight"
                    )
            ff = len(sublayers)  # the feed-forward is the last sub-layer: 1 (encoder), 2 (decoder)
            names[f"{hf}.{ff}.layer_norm.weight"] = f"{ours}.feed_forward_norm.weight"
            for weight in ff_weights:
                names[f"{hf}.{ff}.DenseReluDense.{weight}.weight"] = (
                    f"{ours}.feed_forward.{weight}.weight"
                )
        names[f"{stack}.final_layer_norm.weight"] = f"{stack}.final_norm.weight"
    return names


def config_from_hf(hf_config: Any) -> T5Config:
    """A t5mini ``T5Config`` from a ``transformers.T5Config``, field for field."""
    values = hf_config.to_dict()
    values.setdefault("decoder_start_token_id", getattr(hf_config, "decoder_start_token_id", 0))
    if values["decoder_start_token_id"] is None:
        values["decoder_start_token_id"] = values.get("pad_token_id", 0) or 0
    return T5Config.from_dict(values)


def config_to_hf(config: T5Config) -> Any:
    """A ``transformers.T5Config`` with the same fields (transformers must be installed)."""
    import transformers

    fields = transformers.T5Config().to_dict()
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    hf_config = transformers.T5Config(**values)
    hf_config.decoder_start_token_id = config.decoder_start_token_id
    return hf_config


class StateDictMismatch(ValueError):
    """A state dict that does not fit the model: lists every missing, unexpected and misshapen key."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        """Keep the three lists and write one message with a line per problem."""
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = ["the state dict does not fit the model:"]
        lines += [f"  missing key: {k}" for k in missing]
        lines += [f"  unexpected key: {k}" for k in unexpected]
        lines += [
            f"  shape mismatch: {k}: checkpoint {list(got)}, model {list(want)}"
            for k, got, want in mismatched
        ]
        super().__init__("\n".join(lines))


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors hold the same values (or are the same storage)."""
    if a.shape != b.shape:
        return False
    if a.data_ptr() == b.data_ptr() or a.device.type == "meta":
        return True
    return torch.equal(a, b.to(a.device, a.dtype))


def _renamed(model: T5ForConditionalGeneration, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Check a transformers state dict against ``model`` and return it under t5mini names."""
    names = hf_to_t5mini_names(model.config)
    params = dict(model.named_parameters())
    missing = [k for k in names if k not in state_dict]
    unexpected, mismatched = [], []
    shared = state_dict.get("shared.weight")
    if shared is not None and tuple(shared.shape) != tuple(params["embedding.weight"].shape):
        shared = None  # already reported as a shape mismatch; its copies cannot be compared
    for key, tensor in state_dict.items():
        if key in names:
            want = tuple(params[names[key]].shape)
            if tuple(tensor.shape) != want:
                mismatched.append((key, tuple(tensor.shape), want))
        elif key in LEGACY_IGNORED_KEYS:
            continue
        elif key in EMBEDDING_COPIES or (key == "lm_head.weight" and model.lm_head is None):
            # a copy of the shared embedding; it must really be one
            if shared is not None and not _same_tensor(shared, tensor):
                unexpected.append(f"{key} (differs from shared.weight; tie_word_embeddings="
                                  f"{model.config.tie_word_embeddings})")  # fmt: skip
        else:
            unexpected.append(key)
    if missing or unexpected or mismatched:
        raise StateDictMismatch(missing, unexpected, mismatched)
    return {names[k]: state_dict[k] for k in names}


def load_hf_state_dict(
    model: T5ForConditionalGeneration, state_dict: Mapping[str, torch.Tensor]
) -> T5ForConditionalGeneration:
    """Load a transformers T5 state dict into ``model`` (all keys checked first); returns it."""
    model.load_state_dict(_renamed(model, state_dict), strict=True)
    return model


def from_hf(hf_model: nn.Module) -> T5ForConditionalGeneration:
    """Convert a transformers ``T5ForConditionalGeneration`` (weights copied, dtype and device kept)."""
    config = config_from_hf(hf_model.config)
    state_dict = hf_model.state_dict()
    if config.tie_word_embeddings and "lm_head.weight" in state_dict:
        if not _same_tensor(state_dict["shared.weight"], state_dict["lm_head.weight"]):
            raise ValueError(
                "hf_model rescales its decoder output as a tied model does "
                "(tie_word_embeddings/scale_decoder_outputs=True) but its lm_head.weight "
                "differs from shared.weight; t5mini cannot represent that combination"
            )
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    copies = {k: v.detach().clone() for k, v in _renamed(model, state_dict).items()}
    model.load_state_dict(copies, strict=True, assign=True)
    return model.train(hf_model.training)


def to_hf_state_dict(model: T5ForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` under transformers names; loads with ``strict=True``."""
    ours = model.state_dict()
    out = {hf: ours[name] for hf, name in hf_to_t5mini_names(model.config).items()}
    for key in EMBEDDING_COPIES:
        out[key] = ours["embedding.weight"]
    if model.lm_head is None:
        out["lm_head.weight"] = ours["embedding.weight"]
    return out


def to_hf(model: T5ForConditionalGeneration) -> nn.Module:
    """A transformers ``T5ForConditionalGeneration`` with ``model``'s weights (untied head kept untied)."""
    import transformers

    hf_model = transformers.T5ForConditionalGeneration(config_to_hf(model.config))
    if model.lm_head is not None and hf_model.lm_head.weight is hf_model.shared.weight:
        # transformers >= 5 ties the head at construction even for untied configs
        hf_model.lm_head.weight = nn.Parameter(hf_model.lm_head.weight.detach().clone())
        getattr(hf_model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    hf_model.load_state_dict(to_hf_state_dict(model), strict=True)
    first = next(model.parameters())
    return hf_model.to(first.device, first.dtype).train(model.training)
