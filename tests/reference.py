"""Helpers for parity tests: random transformers T5 models and their weights in t5mini's names.

The name mapping here is written independently of ``t5mini.convert`` on purpose, so the
model tests do not depend on the conversion chapter and the two check each other.
"""

from __future__ import annotations

import re

import torch
import transformers

from t5mini.config import T5Config

HF_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "tie_word_embeddings",
    "pad_token_id",
    "eos_token_id",
)


def hf_model(config: T5Config, seed: int = 0) -> transformers.T5ForConditionalGeneration:
    """A transformers T5 of ``config`` with random weights everywhere (norms included), in eval mode."""
    torch.manual_seed(seed)
    hf_config = transformers.T5Config(**{k: getattr(config, k) for k in HF_FIELDS})
    hf_config.decoder_start_token_id = config.decoder_start_token_id
    model = transformers.T5ForConditionalGeneration(hf_config)
    if not config.tie_word_embeddings:
        # transformers 5 ties lm_head to the embeddings at construction even when untied is
        # asked for (from_pretrained unties it); give it its own weight, as a checkpoint would
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name == "lm_head.weight":
                param.normal_(std=config.d_model**-0.5)
            elif "relative_attention_bias" in name:
                param.normal_(std=0.5)
    return model.eval()


def hf_name_to_t5mini(name: str) -> str | None:
    """The t5mini parameter name for a transformers one (None: a tied copy of the embedding)."""
    if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        return None
    if name == "shared.weight":
        return "embedding.weight"
    if name == "lm_head.weight":
        return name
    m = re.fullmatch(r"(encoder|decoder)\.final_layer_norm\.weight", name)
    if m:
        return f"{m[1]}.final_norm.weight"
    m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(.+)", name)
    assert m, name
    stack, block, layer, rest = m[1], m[2], int(m[3]), m[4]
    if rest == "SelfAttention.relative_attention_bias.weight":
        return f"{stack}.relative_position_bias.embedding.weight"
    prefix = f"{stack}.blocks.{block}"
    sub = {0: "self_attention"}.get(layer)
    if stack == "decoder" and layer == 1:
        sub = "cross_attention"
    if sub is None or (stack == "decoder" and layer == 2):
        sub = "feed_forward"
    if rest == "layer_norm.weight":
        return f"{prefix}.{sub}_norm.weight"
    leaf = rest.split(".", 1)[1]  # drop SelfAttention / EncDecAttention / DenseReluDense
    return f"{prefix}.{sub}.{leaf}"


def copy_hf_weights(hf, model) -> None:
    """Copy every weight of a transformers T5 into a t5mini model (strict: all names used)."""
    state = {}
    for name, tensor in hf.state_dict().items():
        ours = hf_name_to_t5mini(name)
        if ours is not None and not (ours == "lm_head.weight" and model.lm_head is None):
            state[ours] = tensor
    model.load_state_dict(state, strict=True)
