# Generated from chapters/07_matching_the_reference.md — edit the chapter, not this file.

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from t5mini.checks import check_choice
from t5mini.config import T5Config
from t5mini.model import T5ForConditionalGeneration


def hf_to_t5mini_names(config: T5Config) -> dict[str, str]:
    """Map every transformers T5 parameter name of a ``config`` model to its t5mini name."""
    _check_config("config", config)
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
                    key = f"{hf}.{index}.{hf_name}.{proj}.weight"
                    names[key] = f"{ours}.{our_name}.{proj}.weight"
            ff = len(sublayers)  # the feed-forward is the last sub-layer: 1 (encoder), 2 (decoder)
            names[f"{hf}.{ff}.layer_norm.weight"] = f"{ours}.feed_forward_norm.weight"
            for weight in ff_weights:
                names[f"{hf}.{ff}.DenseReluDense.{weight}.weight"] = (
                    f"{ours}.feed_forward.{weight}.weight"
                )
        names[f"{stack}.final_layer_norm.weight"] = f"{stack}.final_norm.weight"
    return names


# in some released checkpoints, used by no implementation: cross-attention has no bias
LEGACY_IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # = shared


T5_MODEL_TYPES = ("t5", "mt5")  # mT5's config.json says "mt5"; its layers are T5 v1.1's


def _check_config(name: str, config: Any) -> None:
    """Raise unless ``config`` is a t5mini ``T5Config``."""
    if not isinstance(config, T5Config):
        raise TypeError(f"{name} must be a t5mini T5Config, got {type(config).__name__}")


def _check_config_dict(name: str, values: Any) -> None:
    """Raise unless ``values`` is a config dict of a T5 (``model_type`` "t5" or "mt5")."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a dict read from config.json, got {type(values).__name__}")
    check_choice(f"{name}['model_type']", values.get("model_type"), T5_MODEL_TYPES)


def _check_model(name: str, model: Any) -> None:
    """Raise unless ``model`` is a t5mini ``T5ForConditionalGeneration``."""
    if not isinstance(model, T5ForConditionalGeneration):
        got = type(model).__name__
        raise TypeError(f"{name} must be a t5mini T5ForConditionalGeneration, got {got}")


def _check_hf_model(hf_model: Any) -> None:
    """Raise unless ``hf_model`` is a transformers T5: a module whose config says t5 or mt5."""
    expected = "a transformers T5ForConditionalGeneration (config.model_type 't5' or 'mt5')"
    got = type(hf_model).__name__
    if not isinstance(hf_model, nn.Module) or not hasattr(hf_model, "config"):
        raise TypeError(f"hf_model must be {expected}, got {got}")
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in T5_MODEL_TYPES:
        raise ValueError(f"hf_model must be {expected}, got a {got} with model_type {model_type!r}")


def _check_state_dict(name: str, state_dict: Any) -> None:
    """Raise unless ``state_dict`` maps parameter names (str) to tensors."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{name} must be a dict of tensors, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            got = f"{key!r}: {type(value).__name__}"
            raise TypeError(f"{name} must map names to tensors, got {got}")


RUNTIME_FIELDS = ("attn_implementation", "gradient_checkpointing")  # how to run, not what


def config_to_json_dict(config: T5Config, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``config`` as the ``config.json`` dict that ``transformers.T5Config`` reads."""
    _check_config("config", config)
    values = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}
    activation = config.feed_forward_proj.split("-")[-1]
    values.update(
        architectures=["T5ForConditionalGeneration"],
        model_type="t5",
        is_encoder_decoder=True,
        is_gated_act=config.is_gated_act,
        dense_act_fn="gelu_new" if config.feed_forward_proj == "gated-gelu" else activation,
        scale_decoder_outputs=config.tie_word_embeddings,  # the switch transformers >= 5 reads
    )
    if dtype is not None:
        values["dtype"] = str(dtype).removeprefix("torch.")
    return dict(sorted(values.items()))


def config_from_json_dict(values: Mapping[str, Any]) -> T5Config:
    """A ``T5Config`` from a transformers ``config.json`` dict (model_type "t5" or "mt5")."""
    _check_config_dict("values", values)
    return T5Config.from_dict(values)


def config_from_hf(hf_config: Any) -> T5Config:
    """A t5mini ``T5Config`` from a ``transformers.T5Config``, field for field."""
    if not callable(getattr(hf_config, "to_dict", None)):
        got = type(hf_config).__name__
        raise TypeError(f"hf_config must be a transformers.T5Config, got {got}")
    check_choice("hf_config.model_type", getattr(hf_config, "model_type", None), T5_MODEL_TYPES)
    values = hf_config.to_dict()
    values.setdefault("decoder_start_token_id", getattr(hf_config, "decoder_start_token_id", 0))
    if values["decoder_start_token_id"] is None:
        values["decoder_start_token_id"] = values.get("pad_token_id", 0) or 0
    return config_from_json_dict(values)


def config_to_hf(config: T5Config) -> Any:
    """A ``transformers.T5Config`` from ``config_to_json_dict`` (needs transformers)."""
    import transformers

    hf_config = transformers.T5Config.from_dict(config_to_json_dict(config))
    hf_config.decoder_start_token_id = config.decoder_start_token_id
    return hf_config


class StateDictMismatch(ValueError):
    """A state dict that does not fit: lists every missing, unexpected and misshapen key."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        source: str = "the state dict",
    ) -> None:
        """Keep the three lists and write one message with a line per problem."""
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not fit the model:"]
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


def _renamed(
    model: T5ForConditionalGeneration,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "the state dict",
) -> dict[str, torch.Tensor]:
    """Check a transformers state dict against ``model`` and return it under t5mini names."""
    names = hf_to_t5mini_names(model.config)
    params = dict(model.named_parameters())
    missing = [k for k in names if k not in state_dict]
    unexpected, mismatched = [], []
    shared = state_dict.get("shared.weight")
    if shared is not None and tuple(shared.shape) != tuple(params["embedding.weight"].shape):
        shared = None  # already reported as a shape mismatch; its copies cannot be compared
    tied = model.config.tie_word_embeddings
    for key, tensor in state_dict.items():
        if key in names:
            want = tuple(params[names[key]].shape)
            if tuple(tensor.shape) != want:
                mismatched.append((key, tuple(tensor.shape), want))
        elif key in LEGACY_IGNORED_KEYS:
            continue
        elif key in EMBEDDING_COPIES or (key == "lm_head.weight" and tied):
            # a copy of the shared embedding; it must really be one
            if shared is not None and not _same_tensor(shared, tensor):
                unexpected.append(f"{key} (differs from shared.weight; tie_word_embeddings={tied})")
        else:
            unexpected.append(key)
    if missing or unexpected or mismatched:
        raise StateDictMismatch(missing, unexpected, mismatched, source)
    return {names[k]: state_dict[k] for k in names}


def load_hf_state_dict(
    model: T5ForConditionalGeneration, state_dict: Mapping[str, torch.Tensor]
) -> T5ForConditionalGeneration:
    """Load a transformers T5 state dict into ``model`` (all keys checked first); returns it."""
    _check_model("model", model)
    _check_state_dict("state_dict", state_dict)
    model.load_state_dict(_renamed(model, state_dict), strict=True)
    return model


def from_hf(hf_model: nn.Module) -> T5ForConditionalGeneration:
    """A t5mini copy of a transformers ``T5ForConditionalGeneration`` (same dtype, device)."""
    _check_hf_model(hf_model)
    config = config_from_hf(hf_model.config)
    state_dict = hf_model.state_dict()
    shared, head = state_dict.get("shared.weight"), state_dict.get("lm_head.weight")
    if config.tie_word_embeddings and shared is not None and head is not None:
        if not _same_tensor(shared, head):
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
    _check_model("model", model)
    ours = model.state_dict()
    out = {hf: ours[name] for hf, name in hf_to_t5mini_names(model.config).items()}
    for key in EMBEDDING_COPIES:
        out[key] = ours["embedding.weight"]
    if model.lm_head is None:
        out["lm_head.weight"] = ours["embedding.weight"]
    return out


def to_hf(model: T5ForConditionalGeneration) -> nn.Module:
    """A transformers ``T5ForConditionalGeneration`` with ``model``'s weights (and head)."""
    import transformers

    _check_model("model", model)
    hf_model = transformers.T5ForConditionalGeneration(config_to_hf(model.config))
    if model.lm_head is not None and hf_model.lm_head.weight is hf_model.shared.weight:
        # transformers >= 5 ties the head at construction even for untied configs
        hf_model.lm_head.weight = nn.Parameter(hf_model.lm_head.weight.detach().clone())
        getattr(hf_model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    hf_model.load_state_dict(to_hf_state_dict(model), strict=True)
    first = next(model.parameters())
    return hf_model.to(first.device, first.dtype).train(model.training)


def _check_path(name: str, value: Any) -> Path:
    """Return ``value`` as a Path; raise unless it is a non-empty str or os.PathLike."""
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    if os.fspath(value) == "" or "\0" in os.fspath(value):
        raise ValueError(f"{name} must name a directory ('.' for the working one), got {value!r}")
    return Path(value)


def _check_model_class(model_class: Any) -> None:
    """Raise unless ``model_class`` is ``T5ForConditionalGeneration`` or a subclass."""
    if not (isinstance(model_class, type) and issubclass(model_class, T5ForConditionalGeneration)):
        raise TypeError(
            f"model_class must be T5ForConditionalGeneration or a subclass, got {model_class!r}"
        )


def _check_finite(tensors: Mapping[str, torch.Tensor], directory: Path) -> None:
    """Raise, naming the tensors, unless every weight is finite (as checkpoints require)."""
    bad = [key for key, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(
            f"model: its weights are not finite (nan or inf) in {', '.join(bad[:3])}"
            f"{' and more' if len(bad) > 3 else ''}; {directory} was not written"
        )


def _check_dtypes(tensors: Mapping[str, torch.Tensor], source: Path) -> None:
    """Raise, naming the file and tensor, unless the weights are floating point of one dtype."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: tensor {key} is {tensor.dtype}, not floating point")
    first = "shared.weight" if "shared.weight" in tensors else next(iter(tensors), None)
    dtype = tensors[first].dtype if first else None
    for key, tensor in tensors.items():
        # the one mix made on purpose (transformers, keep_wo_in_fp32): wo fp32, the rest half
        half_wo = key.endswith(".wo.weight") and dtype in (torch.float16, torch.bfloat16)
        if tensor.dtype != dtype and not (half_wo and tensor.dtype == torch.float32):
            raise ValueError(
                f"{source}: tensor {key} is {tensor.dtype} but {first} is {dtype}; a model's "
                "weights share one dtype (only wo may be float32 when the rest is half)"
            )


def _named(error: BaseException, what: str) -> BaseException:
    """The error of ``what`` failing: an OSError with the errno of ``error`` when it has one."""
    found = re.search(r"os error (\d+)", str(error))  # safetensors' I/O errors carry it as text
    code = getattr(error, "errno", None) or (int(found.group(1)) if found else None)
    if code:  # OSError(errno, text) is the subclass of that errno: PermissionError, ...
        return OSError(code, f"{what}: {os.strerror(code)}")
    return type(error)(f"{what}: {error}")


def _fsync(path: Path) -> None:
    """Flush ``path`` to disk (a file, or on POSIX the entries of a directory)."""
    if path.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open a directory
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_files(directory: Path, writers: Mapping[str, Callable[[Path], Any]]) -> None:
    """Write each file in a staging directory, then rename it into ``directory``."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"cannot make directory {str(directory)!r}: {existing} is a file")
    if taken := next((directory / n for n in writers if (directory / n).is_dir()), None):
        raise IsADirectoryError(f"{taken} is a directory; a model directory holds a file there")
    created = not directory.exists()
    home = directory.parent if created else directory  # a new directory appears by one rename
    staging = home / f".{directory.name}.{secrets.token_hex(4)}.tmp"
    try:
        home.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # its mode follows the umask, like any new directory
    except OSError as error:
        raise _named(error, f"cannot write into {home}") from error
    try:
        for name, write in writers.items():
            try:
                write(staging / name)  # safetensors writes 0600: a replaced file keeps its
                old = directory / name  # own mode, a new one gets the umask's
                mode = old.stat().st_mode if old.is_file() else staging.stat().st_mode & 0o666
                os.chmod(staging / name, mode & 0o7777)
                _fsync(staging / name)
            except (OSError, SafetensorError) as error:
                what = f"could not write {directory / name} (the old files are kept)"
                raise _named(error, what) from error
        if created:
            staging.rename(directory)
        else:
            for name in writers:  # in the order given: weights first, config last
                os.replace(staging / name, directory / name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for synced in (directory, directory.parent) if created else (directory,):
        _fsync(synced)


def _read_json(path: Path) -> Any:
    """The parsed JSON of ``path``; a missing or malformed file raises an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a model directory holds config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _read_config(path: Path) -> T5Config:
    """The ``T5Config`` in a ``config.json``; anything but a T5's config raises naming the file."""
    values = _read_json(path)
    try:
        return config_from_json_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not the config of a T5 model: {error}") from error


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; an unreadable file raises an error naming it."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    _check_dtypes(tensors, path)
    return tensors


def _read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict in ``directory`` and its file, looked for in transformers' order."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    pickled = directory / "pytorch_model.bin"
    if single.is_file():
        return _load_safetensors(single), single
    if index.is_file():  # a sharded checkpoint: the index names the file of each tensor
        listing = _read_json(index)
        weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        if not shards or not all(isinstance(s, str) and Path(s).name == s for s in shards):
            raise ValueError(f"{index} has no weight_map naming files of its own directory")
        state = {}
        for shard in sorted(shards):
            state.update(_load_safetensors(directory / shard))
        return state, index
    if pickled.is_file():
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as error:  # the unpickler's errors have no common type
            raise ValueError(
                f"{pickled} cannot be loaded with weights_only=True ({error}); t5mini reads "
                "safetensors files and pickles of plain tensors only"
            ) from error
        _check_state_dict(str(pickled), state)
        return state, pickled
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors (or a sharded "
        "model.safetensors.index.json, or a weights-only pytorch_model.bin)"
    )


def _stored_tensors(model: T5ForConditionalGeneration) -> dict[str, torch.Tensor]:
    """What transformers stores: each tensor once, the lm_head only when it is untied."""
    copies = set(EMBEDDING_COPIES) | ({"lm_head.weight"} if model.lm_head is None else set())
    state = to_hf_state_dict(model)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in copies}


def save_pretrained(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` as transformers does.

    Weights that are not finite (nan, inf) are refused, as checkpoints refuse them.
    """
    _check_model("model", model)
    directory = _check_path("directory", directory)
    tensors = _stored_tensors(model)
    _check_finite(tensors, directory)
    config = config_to_json_dict(model.config, dtype=tensors["shared.weight"].dtype)
    text = json.dumps(config, indent=2) + "\n"
    writers = {  # weights first, config last
        "model.safetensors": lambda path: save_file(tensors, path, metadata={"format": "pt"}),
        "config.json": lambda path: path.write_text(text, encoding="utf-8"),
    }
    _write_files(directory, writers)
    return directory


def from_pretrained(
    directory: str | os.PathLike, model_class: type = T5ForConditionalGeneration
) -> T5ForConditionalGeneration:
    """Load what ``save_pretrained`` or transformers wrote in ``directory``, in eval mode."""
    directory = _check_path("directory", directory)
    _check_model_class(model_class)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} is not an existing directory")
    config = _read_config(directory / "config.json")
    state_dict, source = _read_weights(directory)
    _check_dtypes(state_dict, source)  # integer or mixed weights are refused, named
    with torch.device("meta"):  # no memory, no initialisation: the file's tensors are assigned
        model = model_class(config)
    model.load_state_dict(_renamed(model, state_dict, str(source)), strict=True, assign=True)
    return model.eval()
