"""The intro's model-size table agrees with t5mini's own presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from t5mini import T5Config, T5ForConditionalGeneration

INTRO = Path(__file__).resolve().parent.parent / "book" / "intro.md"


def intro_table() -> dict[str, list[str]]:
    """Rows of the intro's model-size table, keyed by preset name."""
    rows = {}
    for line in INTRO.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"[\d,]+", cells[-1]):
            rows[cells[0]] = cells
    return rows


def test_table_has_every_released_preset() -> None:
    assert set(intro_table()) == {
        "t5-small",
        "t5-base",
        "t5-large",
        "t5-v1_1-small",
        "t5-v1_1-base",
        "mt5-small",
    }


@pytest.mark.parametrize("name", sorted(intro_table()))
def test_row_matches_preset(name: str) -> None:
    _, d_model, d_ff, d_kv, heads, layers, ff, head, vocab, params = intro_table()[name]
    config = T5Config.preset(name)
    encoder_layers, decoder_layers = (int(n) for n in layers.split("+"))
    assert (config.d_model, config.d_ff, config.d_kv, config.num_heads) == (
        int(d_model),
        int(d_ff),
        int(d_kv),
        int(heads),
    )
    assert (config.num_layers, config.num_decoder_layers) == (encoder_layers, decoder_layers)
    assert config.feed_forward_proj == {"ReLU": "relu", "gated-GELU": "gated-gelu"}[ff]
    assert config.tie_word_embeddings == (head == "tied")
    assert config.vocab_size == int(vocab.replace(",", ""))
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == int(params.replace(",", ""))
