"""save_pretrained / from_pretrained: the transformers format, both ways, and its failures."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

import t5mini.convert
from t5mini.config import T5Config
from t5mini.convert import StateDictMismatch, from_pretrained, save_pretrained, to_hf_state_dict
from t5mini.model import T5ForConditionalGeneration
from tests.reference import hf_model
from tests.test_convert import _batch, _exact, assert_rounding_close

BASE = dict(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
GATED = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
CONFIGS = {
    "v1.0-tied": dict(BASE),
    "v1.1-untied": dict(BASE, **GATED),
    "deeper-decoder": dict(BASE, **GATED, num_decoder_layers=3),
    "shallower-decoder": dict(BASE, num_layers=3, num_decoder_layers=1),
}


def _model(name: str, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**CONFIGS[name])).eval()


def _assert_same_weights(a: T5ForConditionalGeneration, b: T5ForConditionalGeneration) -> None:
    named_a, named_b = dict(a.named_parameters()), dict(b.named_parameters())
    assert named_a.keys() == named_b.keys()
    for name, tensor in named_a.items():
        assert tensor.dtype == named_b[name].dtype, name
        assert torch.equal(tensor, named_b[name]), name


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()


# --- t5mini writes, transformers reads ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_loads_what_t5mini_saved(name: str, tmp_path: Path) -> None:
    ours = _model(name)
    directory = ours.save_pretrained(tmp_path / "model")
    assert directory == tmp_path / "model"
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]

    hf, info = transformers.T5ForConditionalGeneration.from_pretrained(
        directory, output_loading_info=True
    )
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    config = ours.config
    assert hf.config.model_type == "t5" and hf.dtype == torch.float32
    assert hf.config.scale_decoder_outputs == config.tie_word_embeddings
    assert hf.config.is_gated_act == config.is_gated_act
    assert (hf.config.num_layers, hf.config.num_decoder_layers) == (
        config.num_layers,
        config.num_decoder_layers,
    )
    # tied: one tensor, as transformers ties it; untied: the head's own weights
    assert (hf.lm_head.weight is hf.shared.weight) == config.tie_word_embeddings
    expected = to_hf_state_dict(ours)
    for key, tensor in hf.state_dict().items():
        assert torch.equal(tensor, expected[key]), key

    batch = _batch(config.vocab_size, seed=1)
    with torch.no_grad():
        got, reference = ours(**batch).logits, hf.eval()(**batch).logits
        truth = _exact(hf)(**batch).logits
    assert_rounding_close(got, reference, truth)


def test_what_is_stored_matches_what_transformers_stores(tmp_path: Path) -> None:
    for name in ("v1.0-tied", "v1.1-untied"):
        ours = _model(name)
        hf = transformers.T5ForConditionalGeneration.from_pretrained(
            ours.save_pretrained(tmp_path / f"ours-{name}")
        )
        hf.save_pretrained(tmp_path / f"theirs-{name}")
        keys = {}
        for side in ("ours", "theirs"):
            with safe_open(tmp_path / f"{side}-{name}" / "model.safetensors", "pt") as file:
                keys[side] = set(file.keys())
                assert file.metadata() == {"format": "pt"}
        assert keys["ours"] == keys["theirs"]
        assert "encoder.embed_tokens.weight" not in keys["ours"]
        assert ("lm_head.weight" in keys["ours"]) == (name == "v1.1-untied")


def test_config_json_is_plain_json_with_what_transformers_reads(tmp_path: Path) -> None:
    ours = _model("v1.1-untied").to(torch.bfloat16)
    values = json.loads((ours.save_pretrained(tmp_path / "m") / "config.json").read_text())
    assert values["model_type"] == "t5"
    assert values["architectures"] == ["T5ForConditionalGeneration"]
    assert values["feed_forward_proj"] == "gated-gelu" and values["dense_act_fn"] == "gelu_new"
    assert values["is_gated_act"] is True
    assert values["tie_word_embeddings"] is False and values["scale_decoder_outputs"] is False
    assert values["decoder_start_token_id"] == 0 and values["dtype"] == "bfloat16"
    assert "attn_implementation" not in values and "gradient_checkpointing" not in values
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "m")
    assert hf.dtype == torch.bfloat16


# --- transformers writes, t5mini reads ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_t5mini_loads_what_transformers_saved(name: str, tmp_path: Path) -> None:
    config = T5Config(**CONFIGS[name])
    hf = hf_model(config, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert ours.config == config and not ours.training
    assert (ours.lm_head is None) == config.tie_word_embeddings
    expected = hf.state_dict()
    for key, tensor in to_hf_state_dict(ours).items():
        assert torch.equal(tensor, expected[key]), key

    batch = _batch(config.vocab_size, seed=2)
    with torch.no_grad():
        got, reference = ours(**batch).logits, hf(**batch).logits
        truth = _exact(hf)(**batch).logits
    assert_rounding_close(got, reference, truth)


def test_sharded_and_bfloat16_checkpoints_of_transformers_load(tmp_path: Path) -> None:
    hf = hf_model(T5Config(**CONFIGS["v1.1-untied"])).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ours = from_pretrained(tmp_path / "sharded")
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    expected = hf.state_dict()
    for key, tensor in to_hf_state_dict(ours).items():
        assert torch.equal(tensor, expected[key]), key


def test_weights_only_pickle_loads_and_anything_else_is_refused(tmp_path: Path) -> None:
    config = T5Config(**CONFIGS["v1.0-tied"])
    hf = hf_model(config)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = from_pretrained(tmp_path)
    for key, tensor in to_hf_state_dict(ours).items():
        assert torch.equal(tensor, hf.state_dict()[key]), key

    torch.save({"shared.weight": torch.zeros(2), "note": Path("x")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*weights_only=True"):
        from_pretrained(tmp_path)


# --- t5mini to t5mini -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["v1.0-tied", "v1.1-untied", "shallower-decoder"])
def test_round_trip_is_bitwise(name: str, dtype: torch.dtype, tmp_path: Path) -> None:
    ours = _model(name).to(dtype)
    back = T5ForConditionalGeneration.from_pretrained(save_pretrained(ours, tmp_path / "m"))
    assert back.config == ours.config
    _assert_same_weights(ours, back)
    batch = _batch(ours.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(**batch).logits, ours(**batch).logits)


def test_from_pretrained_builds_the_class_it_is_called_on(tmp_path: Path) -> None:
    class MyT5(T5ForConditionalGeneration):
        pass

    _model("v1.0-tied").train().save_pretrained(tmp_path)
    loaded = MyT5.from_pretrained(tmp_path)
    assert type(loaded) is MyT5 and not loaded.training
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    assert not any(b.device.type == "meta" for b in loaded.buffers())


def test_saving_and_loading_need_no_transformers(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["transformers"] = None  # any import of transformers now fails
import torch
from t5mini import T5Config, T5ForConditionalGeneration
model = T5ForConditionalGeneration(T5Config(**{CONFIGS["v1.1-untied"]!r}))
back = T5ForConditionalGeneration.from_pretrained(model.save_pretrained({str(tmp_path)!r}))
assert all(torch.equal(a, b) for a, b in zip(model.parameters(), back.parameters()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- writes are atomic ----------------------------------------------------------------------


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_previous_model_intact(
    interrupt: BaseException, tmp_path: Path, monkeypatch
) -> None:
    first, second = _model("v1.1-untied", seed=0), _model("v1.1-untied", seed=1)
    directory = save_pretrained(first, tmp_path / "m")
    (directory / "README.md").write_text("mine")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def half_then_fail(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 100)  # a partial file, then the crash
        raise interrupt

    monkeypatch.setattr(t5mini.convert, "save_file", half_then_fail)
    with pytest.raises(type(interrupt)):
        save_pretrained(second, directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert _leftovers(tmp_path) == []
    _assert_same_weights(from_pretrained(directory), first)


def test_a_failure_while_writing_the_config_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    first, second = _model("v1.0-tied", seed=0), _model("v1.0-tied", seed=1)
    directory = save_pretrained(first, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    monkeypatch.setattr(t5mini.convert.json, "dumps", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_pretrained(second, directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_a_failed_first_save_leaves_no_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(t5mini.convert, "save_file", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_pretrained(_model("v1.0-tied"), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_saving_again_replaces_only_its_own_files(tmp_path: Path) -> None:
    hf = hf_model(T5Config(**CONFIGS["v1.1-untied"]))
    hf.save_pretrained(tmp_path / "m")  # also writes generation_config.json
    ours = _model("v1.1-untied", seed=5)
    save_pretrained(ours, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    _assert_same_weights(from_pretrained(tmp_path / "m"), ours)
    assert _leftovers(tmp_path) == []


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    directory = save_pretrained(_model("v1.0-tied"), tmp_path / "m")
    (tmp_path / "plain").write_text("x")
    (tmp_path / "plain-dir").mkdir()
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    for name in ("config.json", "model.safetensors"):
        assert (directory / name).stat().st_mode & 0o777 == plain, name
    assert directory.stat().st_mode & 0o777 == (tmp_path / "plain-dir").stat().st_mode & 0o777


# --- errors name the file and what is wrong ------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(_model("v1.0-tied"), tmp_path / "saved")


def test_missing_directory_and_files(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        from_pretrained(tmp_path / "nowhere")
    (saved / "config.json").rename(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"saved/config\.json not found"):
        from_pretrained(saved)
    (tmp_path / "config.json").rename(saved / "config.json")
    (saved / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"no weights in .*saved: expected model\.safetensors"
    ):
        from_pretrained(saved)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a dict"),
        (b'{"model_type": "bert", "hidden_size": 16}', "model_type.*'bert'"),
        (b'{"model_type": "t5", "d_model": -4}', "d_model"),
        (b'{"model_type": "t5", "feed_forward_proj": "gated-swish"}', "feed_forward_proj"),
    ],
)
def test_a_bad_config_is_refused_naming_the_file(saved: Path, content: bytes, message) -> None:
    (saved / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        from_pretrained(saved)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize("cut", [0, 7, 100, -1])
def test_a_corrupt_safetensors_file_is_refused_naming_it(saved: Path, cut: int) -> None:
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[:cut] if cut else b"")
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        from_pretrained(saved)


def test_a_flipped_header_byte_is_refused(saved: Path) -> None:
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[10] ^= 0xFF  # inside the JSON header
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        from_pretrained(saved)


def test_weights_that_do_not_fit_are_listed_with_the_file(saved: Path) -> None:
    model = _model("v1.0-tied")
    tensors = {
        k: v.clone()
        for k, v in to_hf_state_dict(model).items()
        if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
    }
    del tensors["decoder.final_layer_norm.weight"]
    tensors["encoder.final_layer_norm.weight"] = torch.ones(5)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(StateDictMismatch) as info:
        from_pretrained(saved)
    message = str(info.value)
    assert "saved/model.safetensors does not fit the model" in message
    assert "missing key: decoder.final_layer_norm.weight" in message
    assert "unexpected key: extra.weight" in message
    assert "shape mismatch: encoder.final_layer_norm.weight: checkpoint [5], model [32]" in message


def test_a_config_that_disagrees_with_the_weights_is_a_mismatch(saved: Path) -> None:
    values = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(values | {"d_ff": 48}))
    with pytest.raises(
        StateDictMismatch, match=r"DenseReluDense\.wi\.weight: checkpoint \[64, 32\]"
    ):
        from_pretrained(saved)


def test_a_bad_shard_index_is_refused(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    index = saved / "model.safetensors.index.json"
    for weight_map in ({}, {"shared.weight": "../elsewhere.safetensors"}, "x"):
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json"):
            from_pretrained(saved)


def test_bad_arguments_name_them(saved: Path, tmp_path: Path) -> None:
    model = _model("v1.0-tied")
    with pytest.raises(TypeError, match="directory"):
        from_pretrained(3)
    with pytest.raises(TypeError, match="directory"):
        save_pretrained(model, None)
    with pytest.raises(TypeError, match="model must be a t5mini"):
        save_pretrained(model.state_dict(), tmp_path / "x")
    with pytest.raises(TypeError, match="model_class"):
        from_pretrained(saved, model_class=transformers.T5ForConditionalGeneration)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a-file"):
        save_pretrained(model, tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "x"
    with pytest.raises(FileNotFoundError, match="a-file"):
        from_pretrained(tmp_path / "a-file")


def test_an_untied_model_loads_into_transformers_with_only_its_known_notice(
    tmp_path: Path, caplog
) -> None:
    """transformers 5 forces tie_word_embeddings=True and says so for every untied T5 it loads."""
    ours = _model("v1.1-untied")
    ours.save_pretrained(tmp_path)
    logger = transformers.utils.logging.get_logger("transformers")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    for record in caplog.records:
        assert "NOT tie them" in record.getMessage(), record.getMessage()
    assert hf.lm_head.weight is not hf.shared.weight
    assert torch.equal(hf.lm_head.weight, ours.lm_head.weight)
