# Generated from chapters/16_command_line.md — edit the chapter, not this file.

from __future__ import annotations

import argparse
import codecs
import contextlib
import gzip
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from tqdm import tqdm

from t5mini.checks import check_int
from t5mini.data import SpanCorruptionCollator, read_documents
from t5mini.model import T5ForConditionalGeneration
from t5mini.pretrain import (
    SIZE_VARIABLE,
    SIZES,
    PretrainingBatches,
    PretrainSettings,
    pretrain,
    pretrain_settings,
    split_documents,
    tokenize_documents,
)
from t5mini.tokenizer import Tokenizer
from t5mini.training import PRECISIONS, Schedule, Trainer, configure_optimizer

try:
    import fcntl  # POSIX file locks
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class UsageError(Exception):
    """A command-line mistake: reported with the usage line and exit code 2."""


def _count(text: str, low: int) -> int:
    """An `argparse` type: an int >= `low`."""
    try:
        return check_int("value", int(text), low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None


def _positive(text: str) -> int:
    """An `argparse` type: an int >= 1."""
    return _count(text, 1)


def _non_negative(text: str) -> int:
    """An `argparse` type: an int >= 0."""
    return _count(text, 0)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `t5mini-pretrain` (also `python -m t5mini.pretrain`)."""
    parser = argparse.ArgumentParser(
        prog="t5mini-pretrain", description="Pre-train a T5 on your text with span corruption."
    )
    add = parser.add_argument
    add(
        "--output-dir",
        required=True,
        type=Path,
        help="where checkpoint.pt, log.jsonl and final/ are written",
    )
    add(
        "--size",
        choices=SIZES,
        help=f"small (CPU) or full (GPU); default: ${SIZE_VARIABLE}, else by the device",
    )
    add(
        "--text",
        nargs="+",
        type=Path,
        metavar="PATH",
        help=".txt or .jsonl files to train on (default: the bundled corpus)",
    )
    add(
        "--tokenizer",
        type=Path,
        metavar="PATH",
        help="a SentencePiece model (default: the bundled one)",
    )
    add("--num-steps", type=_positive, help="train until this step (default: the size's)")
    add("--batch-size", type=_positive, help="sequences per step over all processes")
    add("--seed", type=_non_negative, help="seed of the weights and the data (default 0)")
    add("--precision", choices=PRECISIONS, help="default auto: bf16 or fp16 on a GPU, fp32 on CPU")
    add("--eval-every", type=_positive, help="steps between held-out evaluations")
    add("--save-every", type=_positive, help="steps between checkpoints")
    add("--resume", action="store_true", help="continue the run saved in --output-dir")
    add("--compile", action="store_true", help="compile the model with torch.compile")
    return parser


OUTPUTS = ("checkpoint.pt", "log.jsonl", "final")
FINAL_FILES = ("config.json", "model.safetensors", "spiece.model")
KEPT_ON_RESUME = ("size", "batch_size", "seed", "precision", "text", "tokenizer")


def _check_final(final: Path) -> None:
    """Refuse to replace a `final` that is not a model this command wrote."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        found = "a link" if final.is_symlink() else "a file"
    else:
        found = ", ".join(sorted(p.name for p in final.iterdir() if p.name not in FINAL_FILES))
    if found:
        raise UsageError(
            f"{final} is not a model this command wrote (it holds {found}); the run writes "
            "its model there: move it away and run again"
        )


def _check_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run); never a run to overwrite."""
    checkpoint = output_dir / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise UsageError(
                f"--resume: there is no {checkpoint} to resume from; leave out "
                "--resume to start a new run there"
            )
        _check_final(output_dir / "final")
        return checkpoint
    found = [name for name in OUTPUTS if (output_dir / name).exists()]
    if found:
        raise UsageError(
            f"--output-dir {output_dir} already holds a run ({', '.join(found)}); "
            "add --resume to continue it, or choose another directory"
        )
    return None


def _saved_run(checkpoint: Path) -> dict[str, Any]:
    """The settings stored in a checkpoint of this command."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["run"]
    except Exception as error:  # any unreadable file: say which, and why
        raise UsageError(
            f"{checkpoint} is not a readable t5mini-pretrain checkpoint "
            f"({type(error).__name__}: {error})"
        ) from None


def _resolve_run(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the flags given, else the resumed run's, else the size's defaults."""
    given = dict(vars(args))
    if args.text is not None:
        given["text"] = [str(path.resolve()) for path in args.text]
    if args.tokenizer is not None:
        given["tokenizer"] = str(args.tokenizer.resolve())
    for name in KEPT_ON_RESUME:
        if saved is not None and given[name] is not None and given[name] != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {given[name]!r} differs from {saved[name]!r}, the "
                "setting of the run being resumed; leave it out"
            )
    if saved is None:
        defaults = pretrain_settings(given["size"])
        saved = {
            name: getattr(defaults, name)
            for name in (
                "size",
                "batch_size",
                "seed",
                "precision",
                "num_steps",
                "eval_every",
                "save_every",
            )
        } | {"text": None, "tokenizer": None}
    return {
        name: value if given.get(name) is None else given[name] for name, value in saved.items()
    }


LOCK_NAME = ".lock"
# The names of this module's temporaries: tempfile's 8 random characters in the middle.
TEMPORARY = re.compile(r"\.(final|log\.jsonl)\.[a-z0-9_]{8}\.(new|old|tmp)")


def _try_lock(descriptor: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _lock(path: Path) -> int:
    """An open descriptor of `path`, locked by this process, or a UsageError naming the holder."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was removed just now: make it again
            continue
        if not _try_lock(descriptor):
            holder = ""
            with contextlib.suppress(OSError):  # the holder's "process N on HOST"
                holder = os.read(descriptor, 200).decode(errors="replace").strip()
            os.close(descriptor)
            raise UsageError(
                f"--output-dir {path.parent} is in use by another run ({holder or 'starting'}); "
                "wait for it to end, or choose another directory"
            )
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
                return descriptor
        os.close(descriptor)  # the holder removed the file before we locked it: lock the new one


@contextlib.contextmanager
def hold_output_dir(output_dir: Path) -> Iterator[Path]:
    """Hold `output_dir` for one run: while it is held, another run is refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} exists and is not a directory")
    created = not output_dir.exists()
    descriptor = _lock(output_dir / LOCK_NAME)
    try:
        for stale in output_dir.iterdir():  # left by a run that was killed: none is live
            if TEMPORARY.fullmatch(stale.name):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
        yield output_dir
    finally:
        with contextlib.suppress(OSError):  # someone may have removed the directory meanwhile
            if created and [p.name for p in output_dir.iterdir()] == [LOCK_NAME]:
                (output_dir / LOCK_NAME).unlink()  # nothing was written: leave no directory
                output_dir.rmdir()
        os.close(descriptor)  # releases the lock


def _undecodable(path: Path) -> str:
    """A message naming the first byte of `path` (a .gz file: of its text) that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done, lines = 0, 0  # the bytes and the newlines read before this chunk
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        while True:
            chunk = file.read(1 << 20)
            pending = decoder.getstate()[0]  # the start of a character cut by the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:  # in error.object: the pending bytes + chunk
                at = done - len(pending) + error.start
                line = lines + error.object[: error.start].count(b"\n") + 1
                byte = error.object[error.start]
                return (
                    f"--text {path}: byte {at:,} (line {line}, 0x{byte:02x}) is not UTF-8 "
                    f"({error.reason}); the text files must be UTF-8"
                )
            if not chunk:
                return f"--text {path}: the file is not UTF-8; the text files must be UTF-8"
            done, lines = done + len(chunk), lines + chunk.count(b"\n")


def load_corpus(run: dict[str, Any]) -> tuple[Tokenizer, list[torch.Tensor]]:
    """The tokenizer and the tokenised documents of a run (`--tokenizer`, `--text`)."""
    paths = run["text"] or [None]  # None: the bundled corpus
    for flag, path in [("--tokenizer", run["tokenizer"]), *(("--text", p) for p in paths)]:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    tokenizer = Tokenizer(run["tokenizer"])
    documents = []
    for path in paths:
        try:
            documents += tokenize_documents(tokenizer, read_documents(path))
        except UnicodeDecodeError:
            raise UsageError(_undecodable(Path(path))) from None
        except (ValueError, TypeError, AttributeError) as error:  # a malformed file
            raise UsageError(f"--text: {error}") from None
    if not documents:
        raise UsageError(f"--text {' '.join(run['text'])}: no text in it")
    shape = {"documents": len(documents), "tokens": sum(map(len, documents))}
    if run.setdefault("corpus", shape) != shape:
        raise UsageError(
            f"--text: the files hold {shape}, but the run being resumed was "
            f"trained on {run['corpus']}; they changed"
        )
    return tokenizer, documents


def build_training(
    settings: PretrainSettings,
    tokenizer: Tokenizer,
    documents: Sequence[torch.Tensor],
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    compile: bool = False,
) -> tuple[Trainer, PretrainingBatches, list[dict[str, torch.Tensor]]]:
    """The trainer, the training stream (this process's share) and the validation batches."""
    train_documents, validation_documents = split_documents(documents)
    vocab_size = -(-len(tokenizer) // 128) * 128  # padded, as T5 pads 32,100 ids to 32,128
    config = settings.config.replace(vocab_size=vocab_size)
    collator = SpanCorruptionCollator.from_tokenizer(
        tokenizer, settings.input_length, seed=settings.seed
    )
    batches = PretrainingBatches(
        train_documents,
        collator,
        settings.batch_size,
        settings.seed,
        rank=rank,
        world_size=world_size,
    )
    held_out = SpanCorruptionCollator.from_tokenizer(
        tokenizer, settings.input_length, seed=settings.seed + 1
    )
    validation = list(held_out.batches(validation_documents, settings.batch_size, False))
    torch.manual_seed(settings.seed)
    model = T5ForConditionalGeneration(config).to(device)
    optimizer = configure_optimizer(model, lr=settings.base_lr, scale_parameter=True)
    schedule = Schedule("inverse_sqrt", settings.base_lr, settings.warmup_steps)
    trainer = Trainer(
        model,
        optimizer,
        schedule,
        max_grad_norm=None,
        compile=compile,
        accumulation_steps=settings.accumulation_steps,
        precision=settings.precision,
    )
    return trainer, batches, validation


def _read_record(line: bytes) -> dict[str, Any] | None:
    """One record of `log.jsonl`, or None when the line is damaged."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return record if type(step) is int else None


def _replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a uniquely named temporary, atomically."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def open_log(path: Path, step: int, warn: Callable[[str], Any] = print) -> TextIO:
    """`log.jsonl` opened for appending, keeping the records of the steps up to `step`."""
    if path.exists():
        kept, damaged = [], []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            record = _read_record(line)
            if record is None:
                damaged += [number] if line.strip() else []
            elif step > 0 and record["step"] <= step:
                kept.append(line + b"\n")
        if damaged:
            warn(
                f"{path}: dropped {len(damaged)} damaged line(s) (line {damaged[0]}, ...); "
                f"the checkpoint at step {step} is intact"
            )
        _replace_file(path, b"".join(kept))
    return path.open("a", encoding="utf-8")


def save_final(model: T5ForConditionalGeneration, tokenizer: Tokenizer, output_dir: Path) -> Path:
    """Write `output_dir/final` (transformers layout, with `spiece.model`), replacing it whole."""
    final = output_dir / "final"
    _check_final(final)  # checked at the start too; someone may have put a file there since
    new = Path(tempfile.mkdtemp(prefix=".final.", suffix=".new", dir=output_dir))
    old = new.with_suffix(".old")  # as unique as `new`
    try:
        model.save_pretrained(new)
        shutil.copyfile(tokenizer.model_file, new / "spiece.model")
        if final.exists():
            final.rename(old)
        new.rename(final)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # gone already unless something failed
    shutil.rmtree(old, ignore_errors=True)
    return final


def train(
    trainer: Trainer,
    batches: PretrainingBatches,
    validation: list[dict[str, torch.Tensor]],
    settings: PretrainSettings,
    run: dict[str, Any],
    output_dir: Path,
    is_main: bool = True,
) -> None:
    """Train up to `settings.num_steps`, logging, saving checkpoints and a progress bar."""
    bar = tqdm(
        total=settings.num_steps,
        initial=trainer.global_step,
        unit="step",
        disable=not is_main,
        dynamic_ncols=True,
    )

    def save() -> None:
        if is_main:
            trainer.save(output_dir / "checkpoint.pt", data=batches.state_dict(), run=run)

    if trainer.global_step == 0:
        save()  # the run exists from now on: --resume can always continue it
    log_file = None
    if is_main:
        log_file = open_log(
            output_dir / "log.jsonl",
            trainer.global_step,
            warn=lambda line: bar.write(line, file=sys.stderr),
        )

    def callback(record: dict[str, float]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if "loss" in record:  # a training step (an evaluation has "validation_loss")
            bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                lr=f"{record['lr']:.2e}",
                tokens_s=f"{record['tokens_per_s']:,.0f}",
                refresh=False,
            )
            bar.update()
            if record["step"] % settings.save_every == 0:
                save()

    remaining = max(settings.num_steps - trainer.global_step, 0)
    try:
        pretrain(
            trainer,
            batches,
            remaining,
            validation,
            settings.eval_every,
            log_every=0,
            log=bar.write if is_main else lambda line: None,
            callback=callback,
        )
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if trainer.global_step % settings.save_every:
        save()


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device): join torchrun's process group when it started several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    cuda = torch.cuda.is_available()
    if world_size == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])  # this process's number on its machine
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")  # the rest comes from the environment
    return dist.get_rank(), world_size, device


def main(argv: Sequence[str] | None = None) -> int:
    """`t5mini-pretrain`: pre-train, or resume, the run in `--output-dir`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rank, world_size, device = init_distributed()
    try:
        with contextlib.ExitStack() as held:
            try:
                if rank == 0:  # the process that writes holds the directory
                    held.enter_context(hold_output_dir(args.output_dir))
                checkpoint = _check_output_dir(args.output_dir, args.resume)
                run = _resolve_run(args, None if checkpoint is None else _saved_run(checkpoint))
                settings = pretrain_settings(run["size"]).replace(
                    **{
                        k: run[k]
                        for k in (
                            "batch_size",
                            "num_steps",
                            "seed",
                            "precision",
                            "eval_every",
                            "save_every",
                        )
                    }
                )
                tokenizer, documents = load_corpus(run)
                trainer, batches, validation = build_training(
                    settings, tokenizer, documents, device, rank, world_size, args.compile
                )
            except (UsageError, ValueError) as error:
                parser.error(str(error))
            if checkpoint is not None:
                batches.load_state_dict(trainer.load(checkpoint)["data"])
            if rank == 0:
                print(
                    f"t5mini-pretrain: {settings.size} size, "
                    f"{trainer.model.num_parameters():,} parameters, {trainer.precision} on "
                    f"{device} x {world_size}\n  {run['corpus']['tokens']:,} tokens of text; "
                    f"steps {trainer.global_step} -> {settings.num_steps}, "
                    f"{settings.batch_size} sequences a step"
                )
            if world_size > 1:
                dist.barrier()  # every process has read DIR before rank 0 writes to it
            train(trainer, batches, validation, settings, run, args.output_dir, rank == 0)
            if rank == 0:
                final = save_final(trainer.model, tokenizer, args.output_dir)
                print(f"step {trainer.global_step}: wrote {final} and checkpoint.pt")
    except KeyboardInterrupt:
        saved = (args.output_dir / "checkpoint.pt").is_file()
        print(
            "\nt5mini-pretrain: stopped; "
            + (
                f"continue with: t5mini-pretrain --resume --output-dir {args.output_dir}"
                if saved
                else "nothing was saved yet: run the same command again"
            ),
            file=sys.stderr,
        )
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# A notebook also runs its cells as __main__, but of no package: here this starts nothing.
if __name__ == "__main__" and __package__ == "t5mini":
    raise SystemExit(main())
