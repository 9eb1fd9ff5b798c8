"""t5mini: T5 built from scratch in PyTorch, exported from the chapters of the t5mini book.

The main names are importable from the top level; each lives in the module of the chapter
that builds it (``t5mini.tokenizer``, ``t5mini.config``, ``t5mini.model``, ...). They are
imported lazily, so ``import t5mini`` is quick and the tokenizer works without the model.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Tokenizer": "tokenizer",
    "T5Config": "config",
    "T5ForConditionalGeneration": "model",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import ``t5mini.X`` on first use of a top-level name."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"t5mini.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 't5mini' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Top-level names, for tab completion."""
    return sorted(__all__)
