"""Bad inputs and faults for save_pretrained / from_pretrained: each error names its cause.

Families: a full disk while saving, integer or mixed weights in a file, an empty path,
non-finite weights, a path under a file, a directory without write permission, and a
config.json that is not an object.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import t5mini.convert
from t5mini.config import T5Config
from t5mini.convert import from_pretrained, save_pretrained
from t5mini.model import T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
CONFIG = dict(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def _model(seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**CONFIG, **overrides)).eval()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(_model(), tmp_path / "saved")


# --- a full disk while saving: the error names the file being written ----------------------


@pytest.mark.parametrize("failing", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_names_the_file_and_keeps_the_old_one(
    saved: Path, failing: str, code: int, monkeypatch
) -> None:
    before = _files(saved)

    def fail(*args, **kwargs):
        target = Path(args[1] if failing == "model.safetensors" else args[0])
        target.write_bytes(b"\0" * 10)  # the part that fitted
        raise OSError(code, os.strerror(code))

    if failing == "model.safetensors":
        monkeypatch.setattr(t5mini.convert, "save_file", fail)
    else:
        monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError) as info:
        save_pretrained(_model(seed=1), saved)
    assert info.value.errno == code
    assert str(saved / failing) in str(info.value)
    assert os.strerror(code) in str(info.value)
    assert _files(saved) == before
    assert [p.name for p in saved.parent.iterdir()] == ["saved"]


def test_a_file_size_limit_while_saving_is_named(saved: Path) -> None:
    """A real short write: RLIMIT_FSIZE makes the kernel refuse to grow the file (EFBIG)."""
    pytest.importorskip("resource")
    limit = (saved / "model.safetensors").stat().st_size // 2
    script = textwrap.dedent(
        f"""
        import errno, resource, signal, sys, torch
        from t5mini import T5Config, T5ForConditionalGeneration
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        torch.manual_seed(1)
        model = T5ForConditionalGeneration(T5Config(**{CONFIG!r}))
        try:
            model.save_pretrained({str(saved)!r})
        except OSError as error:
            print(error.errno, error)
            sys.exit(0)
        sys.exit("saved past the file size limit")
        """
    )
    before = _files(saved)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    code, _, message = result.stdout.strip().partition(" ")
    assert int(code) == errno.EFBIG
    assert str(saved / "model.safetensors") in message
    assert _files(saved) == before


# --- integer or mixed weights are refused, naming the file and the tensor ------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_weights_are_refused_naming_file_and_tensor(saved: Path, dtype) -> None:
    tensors = load_file(saved / "model.safetensors")
    key = "encoder.final_layer_norm.weight"
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ValueError) as info:
        from_pretrained(saved)
    message = str(info.value)
    assert str(saved / "model.safetensors") in message and key in message
    assert str(dtype) in message


@pytest.mark.parametrize("other", [torch.float16, torch.bfloat16, torch.float64])
def test_mixed_dtypes_are_refused_naming_file_and_tensor(saved: Path, other) -> None:
    tensors = load_file(saved / "model.safetensors")
    key = "decoder.block.1.layer.0.SelfAttention.k.weight"
    tensors[key] = tensors[key].to(other)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ValueError) as info:
        from_pretrained(saved)
    message = str(info.value)
    assert str(saved / "model.safetensors") in message and key in message
    assert "shared.weight" in message and str(other) in message


def test_an_integer_pickle_is_refused_naming_it(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    tensors["shared.weight"] = tensors["shared.weight"].long()
    torch.save(tensors, saved / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: tensor shared\.weight"):
        from_pretrained(saved)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_weights_with_wo_in_float32_load(tmp_path: Path, half) -> None:
    """The one mix made on purpose (keep_wo_in_fp32, transformers' _keep_in_fp32_modules)."""
    from t5mini.feedforward import keep_wo_in_fp32

    model = keep_wo_in_fp32(_model(feed_forward_proj="gated-gelu").to(half))
    back = from_pretrained(save_pretrained(model, tmp_path / "m"))
    for (name, a), b in zip(model.named_parameters(), back.parameters()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert back.encoder.blocks[0].feed_forward.wo.weight.dtype == torch.float32


# --- an empty path is an error, never the working directory --------------------------------


def test_an_empty_path_is_refused_and_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("mine")
    model = _model()
    for call in (lambda: save_pretrained(model, ""), lambda: model.save_pretrained("")):
        with pytest.raises(ValueError, match=r"directory must name a directory.*''"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == "mine"
    with pytest.raises(ValueError, match="directory"):
        from_pretrained("")


def test_a_nul_byte_in_the_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        save_pretrained(_model(), str(tmp_path / "a\0b"))


# --- non-finite weights are refused, as checkpoints refuse them ----------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_finite_weights_are_not_saved(saved: Path, value: float, dtype) -> None:
    before = _files(saved)
    model = _model(seed=1).to(dtype)
    with torch.no_grad():
        model.decoder.blocks[1].feed_forward.wi.weight[3, 4] = value
    with pytest.raises(ValueError) as info:
        save_pretrained(model, saved)
    message = str(info.value)
    assert "not finite" in message and "decoder.block.1.layer.2.DenseReluDense.wi.weight" in message
    assert f"{saved} was not written" in message
    assert _files(saved) == before
    new = saved.parent / "new"
    with pytest.raises(ValueError, match="not finite"):
        save_pretrained(model, new)
    assert not new.exists()


# --- paths that cannot hold a model ---------------------------------------------------------


def test_a_path_under_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"a-file.* is a file") as info:
        save_pretrained(_model(), tmp_path / "a-file" / "sub" / "model")
    assert str(tmp_path / "a-file" / "sub" / "model") in str(info.value)
    assert (tmp_path / "a-file").read_text() == "x"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_directory_where_a_file_goes_is_named_and_nothing_changes(saved: Path, name) -> None:
    (saved / name).unlink()
    (saved / name).mkdir()
    before = _files_or_dirs(saved)
    with pytest.raises(IsADirectoryError, match=f"{name} is a directory"):
        save_pretrained(_model(seed=1), saved)
    assert _files_or_dirs(saved) == before


def _files_or_dirs(directory: Path) -> dict[str, bytes | None]:
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_refusal_that_is_not_an_io_error_keeps_its_type(tmp_path: Path, monkeypatch) -> None:
    """Only I/O failures become OSErrors; safetensors' own refusals keep their type and text."""
    from safetensors import SafetensorError

    def refuse(tensors, path, metadata=None):
        raise SafetensorError("Some tensors share memory, this will lead to duplicate memory")

    monkeypatch.setattr(t5mini.convert, "save_file", refuse)
    with pytest.raises(SafetensorError, match=r"model\.safetensors.*share memory"):
        save_pretrained(_model(), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_replaced_file_keeps_its_permissions(saved: Path, tmp_path: Path) -> None:
    (saved / "config.json").chmod(0o600)
    (saved / "model.safetensors").chmod(0o640)
    save_pretrained(_model(seed=1), saved)
    assert (saved / "config.json").stat().st_mode & 0o7777 == 0o600
    assert (saved / "model.safetensors").stat().st_mode & 0o7777 == 0o640
    (tmp_path / "plain").write_text("x")  # a new file gets the umask's mode, as any new file
    fresh = save_pretrained(_model(), tmp_path / "fresh")
    for name in ("config.json", "model.safetensors"):
        assert (fresh / name).stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def _unprivileged() -> list[str]:
    """A command prefix that runs without root's power to ignore permissions (or a skip)."""
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")  # root keeps its uid but loses the DAC override
    if setpriv is None:
        pytest.skip("running as root, and no setpriv to drop the permission override")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def _run_unprivileged(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a Python that file permissions apply to."""
    return subprocess.run(
        [*_unprivileged(), sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


_SAVE = """
import torch
from pathlib import Path
from t5mini import T5Config, T5ForConditionalGeneration
torch.manual_seed(1)
model = T5ForConditionalGeneration(T5Config(**{config!r}))
try:
    model.save_pretrained({target!r})
    print("saved")
except PermissionError as error:
    print("PermissionError", error)
"""


def test_a_read_only_directory_is_named_and_kept(tmp_path: Path) -> None:
    target = save_pretrained(_model(), tmp_path / "m")
    target.chmod(0o555)
    before = _files(target)
    result = _run_unprivileged(_SAVE.format(config=CONFIG, target=str(target)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PermissionError"), result.stdout
    assert f"cannot write into {target}" in result.stdout
    assert _files(target) == before


def test_a_writable_directory_in_a_read_only_parent_is_saved(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    target = save_pretrained(_model(), parent / "m")
    parent.chmod(0o555)
    result = _run_unprivileged(_SAVE.format(config=CONFIG, target=str(target)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "saved", result.stdout
    back = from_pretrained(target)
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), _model(seed=1).parameters()))
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]


# --- a config.json that is not an object ----------------------------------------------------


@pytest.mark.parametrize("content", ["null", '"t5"', "3", "true", "[]", '[{"model_type": "t5"}]'])
def test_a_config_that_is_not_an_object_is_named(saved: Path, content: str) -> None:
    (saved / "config.json").write_text(content)
    with pytest.raises(ValueError, match=r"config\.json is not the config of a T5.*must be a dict"):
        from_pretrained(saved)


def test_a_config_nested_too_deeply_is_named(saved: Path) -> None:
    (saved / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        from_pretrained(saved)
