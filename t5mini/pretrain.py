# Generated from chapters/11_pretraining.md — edit the chapter, not this file.

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from tqdm import tqdm

from t5mini.checks import check_int
from t5mini.config import T5Config
from t5mini.data import SpanCorruptionCollator, read_documents
from t5mini.model import T5ForConditionalGeneration
from t5mini.tokenizer import Tokenizer
from t5mini.training import (
    PRECISIONS,
    Schedule,
    Trainer,
    autocast,
    configure_optimizer,
    format_stats,
    num_label_tokens,
)

SIZES = ("small", "full")
SIZE_VARIABLE = "T5MINI_SIZE"  # the environment variable that picks the size


@dataclass(frozen=True)
class PretrainSettings:
    """What differs between the CPU-sized and the full-sized pre-training run."""

    size: str
    config: T5Config
    input_length: int  # corrupted inputs; the raw chunks and targets follow (chapter 9)
    batch_size: int  # sequences per step, over all processes
    num_steps: int
    warmup_steps: int  # T5: lr = base_lr * sqrt(warmup / max(step, warmup))
    base_lr: float = 0.01
    accumulation_steps: int = 1
    precision: str = "auto"  # bf16 on a GPU that has it, fp16 + scaler otherwise, fp32 on CPU
    log_every: int = 50
    eval_every: int = 100
    save_every: int = 500
    seed: int = 0

    def replace(self, **changes: Any) -> PretrainSettings:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


def choose_size(size: str | None = None) -> str:
    """`size`, else $T5MINI_SIZE, else 'full' with a GPU and 'small' without."""
    if size is None:
        size = os.environ.get(SIZE_VARIABLE) or None
        if size is not None and size not in SIZES:
            raise ValueError(f"{SIZE_VARIABLE}={size!r}: expected one of {SIZES}")
    if size is None:
        return "full" if torch.cuda.is_available() else "small"
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {SIZES} or None")
    return size


def pretrain_settings(size: str | None = None) -> PretrainSettings:
    """The settings of the 'small' (CPU) or 'full' (GPU) pre-training run."""
    size = choose_size(size)
    if size == "full":  # the `tiny` preset at T5's sequence lengths
        config = T5Config.preset("tiny", dropout_rate=0.0)
        return PretrainSettings(
            size,
            config,
            input_length=512,
            batch_size=32,
            num_steps=3000,
            warmup_steps=1000,
            log_every=100,
            eval_every=250,
        )
    config = T5Config.preset(
        "tiny", d_model=128, d_ff=512, num_layers=2, num_heads=4, dropout_rate=0.0
    )
    return PretrainSettings(
        size,
        config,
        input_length=128,
        batch_size=8,
        num_steps=400,
        warmup_steps=100,
        base_lr=0.02,
        log_every=100,
        eval_every=100,
    )


def tokenize_documents(
    tokenizer: Any, documents: Iterable[str] | None = None
) -> list[torch.Tensor]:
    """Token ids of each document (default: the bundled corpus), EOS-terminated, as int32."""
    documents = read_documents() if documents is None else documents
    return [torch.tensor(tokenizer.encode(text), dtype=torch.int32) for text in documents]


def split_documents(documents: Sequence[Any], every: int = 20) -> tuple[list[Any], list[Any]]:
    """(training, validation): every `every`-th document is held out."""
    check_int("every", every, 2)
    train = [doc for i, doc in enumerate(documents) if i % every != every - 1]
    validation = [doc for i, doc in enumerate(documents) if i % every == every - 1]
    return train, validation


def _check_stream_args(
    documents: Sequence[Any], batch_size: int, rank: int, world_size: int
) -> None:
    """Raise a clear error for a stream that cannot be built."""
    if len(documents) == 0:
        raise ValueError("documents is empty; expected tokenised documents")
    check_int("batch_size", batch_size, 1)
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size - 1)
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} is not a multiple of world_size={world_size}; "
            "every process must take an equal share of the batch"
        )


def _as_document(document: Any, eos_id: int) -> torch.Tensor:
    """A document's ids as a 1-D int32 tensor that ends with EOS."""
    ids = torch.as_tensor(document, dtype=torch.int32).flatten()
    if len(ids) == 0 or ids[-1] != eos_id:
        ids = torch.cat([ids, torch.tensor([eos_id], dtype=torch.int32)])
    return ids


class PretrainingBatches:
    """An endless stream of span-corrupted batches that can stop and resume exactly."""

    def __init__(
        self,
        documents: Sequence[Any],
        collator: SpanCorruptionCollator,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Batches of `batch_size` rows from `documents`, shuffled anew each pass (seeded)."""
        _check_stream_args(documents, batch_size, rank, world_size)
        self.documents = [_as_document(doc, collator.eos_id) for doc in documents]
        self.collator, self.batch_size = collator, batch_size
        self.rank, self.world_size = rank, world_size
        self.order_generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._start_pass()

    def _start_pass(self) -> None:
        """Draw this pass's document order and join the documents into one token stream."""
        self.pass_state = self.order_generator.get_state()  # what rebuilds this pass
        order = torch.randperm(len(self.documents), generator=self.order_generator)
        self.tokens = torch.cat([self.documents[i] for i in order.tolist()])  # (pass_tokens,)
        self.batches_per_pass = len(self.tokens) // (self.batch_size * self.collator.raw_length)
        if self.batches_per_pass == 0:
            raise ValueError(
                f"the documents hold {len(self.tokens):,} tokens, fewer than batch_size * "
                f"raw_length = {self.batch_size * self.collator.raw_length:,}: not one batch"
            )
        self.index = 0  # batches taken from this pass

    def __iter__(self) -> PretrainingBatches:
        """The stream is its own iterator."""
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        """The next batch (with several processes, this process's rows of it)."""
        if self.index == self.batches_per_pass:
            self.epoch += 1
            self._start_pass()
        size = self.batch_size * self.collator.raw_length
        block = self.tokens[self.index * size : (self.index + 1) * size]
        self.index += 1
        batch = self.collator(block.view(self.batch_size, -1))  # rows of raw_length tokens
        return {key: value.tensor_split(self.world_size)[self.rank] for key, value in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the pass, the batches taken from it, both generators."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "order_state": self.pass_state,
            "noise_state": self.collator.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`: rebuild its pass, then skip what was taken."""
        self.order_generator.set_state(state["order_state"])
        self.epoch = state["epoch"]
        self._start_pass()
        self.index = state["index"]
        self.collator.generator.set_state(state["noise_state"])


@torch.no_grad()
def evaluate_loss(
    model: T5ForConditionalGeneration,
    batches: Iterable[dict[str, torch.Tensor]],
    precision: str = "fp32",
) -> float:
    """Mean cross-entropy per label token over `batches` (dropout off)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        count = num_label_tokens(batch)
        if count == 0:
            continue
        batch = {key: value.to(device) for key, value in batch.items()}
        with autocast(precision, device):
            total_loss += model(**batch).loss.item() * count
        total_tokens += count
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("batches: no label tokens to evaluate on")
    return total_loss / total_tokens


@torch.no_grad()
def predict_spans(
    model: T5ForConditionalGeneration,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy targets for corrupted inputs, decoded with their sentinels visible."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    ids = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens)
    model.train(was_training)
    texts = []
    for row in ids.cpu().tolist():
        row = row[1:]  # the decoder start token
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode([i for i in row if i != tokenizer.pad_id]))
    return texts


def _check_pretrain_args(
    num_steps: int, eval_every: int, log_every: int, validation_batches: Any
) -> None:
    """Raise a clear error for arguments `pretrain` cannot use."""
    check_int("num_steps", num_steps, 0)
    check_int("eval_every", eval_every, 1)
    check_int("log_every", log_every, 0)
    if isinstance(validation_batches, Iterator):
        raise TypeError(
            "validation_batches is a one-shot iterator (a generator?); every evaluation "
            "reads the batches again, so pass a list, e.g. list(collator.batches(...))"
        )


def _next_batch(batches: Iterator[dict[str, torch.Tensor]], done: int, num_steps: int) -> dict:
    """The next training batch, or an error that says the stream ran out."""
    try:
        return next(batches)
    except StopIteration:
        raise ValueError(
            f"batches ran out after {done} of num_steps={num_steps} steps; pass an endless "
            "stream (PretrainingBatches) or at least num_steps batches"
        ) from None


def pretrain(
    trainer: Trainer,
    batches: Iterable[dict[str, torch.Tensor]],
    num_steps: int,
    validation_batches: Iterable[dict[str, torch.Tensor]] = (),
    eval_every: int = 100,
    log_every: int = 50,
    log: Callable[[str], Any] = print,
    callback: Callable[[dict[str, float]], Any] | None = None,
) -> list[dict[str, float]]:
    """Train `num_steps` more steps, evaluating every `eval_every`; returns the evaluations."""
    _check_pretrain_args(num_steps, eval_every, log_every, validation_batches)
    batches = iter(batches)
    evaluations = []

    def record(entry: dict[str, float]) -> None:
        if callback is not None:
            callback(entry)

    def evaluate() -> None:
        loss = evaluate_loss(trainer.model, validation_batches, trainer.precision)
        evaluations.append({"step": trainer.global_step, "validation_loss": loss})
        log(f"step {trainer.global_step:>6} | validation loss {loss:.4f}")
        record(evaluations[-1])

    has_validation = bool(validation_batches)
    if has_validation and trainer.global_step == 0:
        evaluate()  # the untrained model, once per run
    for done in range(num_steps):
        stats = trainer.step(_next_batch(batches, done, num_steps))
        record(stats)
        if log_every and stats["step"] % log_every == 0:
            log(format_stats(stats))
        if has_validation and (stats["step"] % eval_every == 0 or done + 1 == num_steps):
            evaluate()
    return evaluations


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
    """The flags of `python -m t5mini.pretrain` (the `t5mini-pretrain` command)."""
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
KEPT_ON_RESUME = ("size", "batch_size", "seed", "precision", "text", "tokenizer")


def _check_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run); never a run to overwrite."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} exists and is not a directory")
    checkpoint = output_dir / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise UsageError(f"--resume: there is no {checkpoint} to resume from")
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


def load_corpus(run: dict[str, Any]) -> tuple[Tokenizer, list[torch.Tensor]]:
    """The tokenizer and the tokenised documents of a run (`--tokenizer`, `--text`)."""
    for flag, path in [("--tokenizer", run["tokenizer"])] + [
        ("--text", p) for p in run["text"] or ()
    ]:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    tokenizer = Tokenizer(run["tokenizer"])
    try:
        documents = tokenize_documents(tokenizer, read_documents(run["text"]))
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


def open_log(path: Path, keep_until: int) -> TextIO:
    """`log.jsonl` opened for appending, without the records after step `keep_until`."""
    if path.exists():
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= keep_until
        ]
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(temporary, path)
    return path.open("a", encoding="utf-8")


def save_final(model: T5ForConditionalGeneration, tokenizer: Tokenizer, output_dir: Path) -> Path:
    """Write `output_dir/final` (transformers layout, with `spiece.model`), replacing it whole."""
    final, new, old = (output_dir / name for name in ("final", ".final.new", ".final.old"))
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    new.mkdir()
    model.save_pretrained(new)
    shutil.copyfile(tokenizer.model_file, new / "spiece.model")
    if final.exists():
        final.rename(old)
    new.rename(final)
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
    log_file = open_log(output_dir / "log.jsonl", trainer.global_step) if is_main else None
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
    bar.close()
    if trainer.global_step % settings.save_every:
        save()
    if log_file is not None:
        log_file.close()


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
    """`python -m t5mini.pretrain`: pre-train or resume a run in `--output-dir`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rank, world_size, device = init_distributed()
    try:
        try:
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
            args.output_dir.mkdir(parents=True, exist_ok=True)
            print(
                f"t5mini-pretrain: {settings.size} size, {trainer.model.num_parameters():,} "
                f"parameters, {trainer.precision} on {device} x {world_size}; "
                f"{run['corpus']['tokens']:,} tokens; steps {trainer.global_step} -> "
                f"{settings.num_steps} of {settings.batch_size} sequences"
            )
        if world_size > 1:
            dist.barrier()  # every process has read DIR before rank 0 writes to it
        train(trainer, batches, validation, settings, run, args.output_dir, rank == 0)
        if rank == 0:
            final = save_final(trainer.model, tokenizer, args.output_dir)
            print(f"step {trainer.global_step}: wrote {final} and checkpoint.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# A notebook also runs its cells as __main__, but of no package: here this starts nothing.
if __name__ == "__main__" and __package__ == "t5mini":
    sys.exit(main())
