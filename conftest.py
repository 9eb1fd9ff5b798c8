"""pytest set-up: run the chapters (Jupytext MyST notebooks) under nbval.

nbval collects ``.ipynb`` files only. The chapters' source of truth is ``chapters/*.md``,
so this collector reads those through Jupytext and hands nbval the notebook. The paired
``.ipynb`` copies are skipped: they hold the same cells (``make check`` proves it).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

collect_ignore_glob = ["chapters/*.ipynb", ".venv/*", "_build/*"]


class _JupytextReader:
    """Stands in for ``nbformat`` inside nbval, reading any Jupytext format."""

    def __init__(self, nbformat_module):
        self._nbformat = nbformat_module

    def read(self, path, as_version=4):
        return jupytext.read(path)

    def __getattr__(self, name):
        return getattr(self._nbformat, name)


def _myst_notebook_class():
    from nbval import plugin

    class MystNotebook(plugin.IPyNbFile):
        """A chapter ``.md`` collected as a notebook."""

        def collect(self):
            original = plugin.nbformat
            plugin.nbformat = _JupytextReader(original)
            try:
                yield from super().collect()
            finally:
                plugin.nbformat = original

    return MystNotebook


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """Collect ``chapters/NN_*.md`` as notebooks when nbval is on."""
    opt = parent.config.option
    if not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)):
        return None
    if file_path.suffix == ".md" and file_path.parent.name == "chapters":
        return _myst_notebook_class().from_parent(parent, path=file_path)
    return None
