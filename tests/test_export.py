"""The exporter (book/export.py): chapters -> t5mini modules, Colab cell and paired .ipynb."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHAPTER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
    jupytext_version: 1.19.6
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---

# 1. A chapter

```{code-cell} ipython3
print("placeholder, replaced by the Colab cell")
```

```{code-cell} ipython3
#| default_exp things
```

```{code-cell} ipython3
#| export
def add_one(x: int) -> int:
    \"\"\"Add one.\"\"\"
    return x+1
```

```{code-cell} ipython3
assert add_one(1) == 2
```

```{code-cell} ipython3
#| export other
OTHER = 3
```
"""


def run(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the exporter in a copy of the project."""
    return subprocess.run(
        [sys.executable, "book/export.py", *args], cwd=tree, capture_output=True, text=True
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A minimal project: the exporter, _config.yml and one chapter."""
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "export.py", tmp_path / "book" / "export.py")
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "chapters").mkdir()
    (tmp_path / "t5mini").mkdir()
    (tmp_path / "chapters" / "01_things.md").write_text(CHAPTER)
    return tmp_path


def test_export_writes_modules_cell_and_notebook(tree: Path) -> None:
    assert run(tree).returncode == 0
    module = (tree / "t5mini" / "things.py").read_text()
    assert module.startswith(
        "# Generated from chapters/01_things.md — edit the chapter, not this file.\n"
    )
    assert "def add_one(x: int) -> int:" in module and "return x + 1" in module  # formatted
    assert "OTHER" not in module and "OTHER = 3" in (tree / "t5mini" / "other.py").read_text()
    chapter = (tree / "chapters" / "01_things.md").read_text()
    assert "placeholder" not in chapter and '"google.colab" in sys.modules' in chapter
    assert ":tags: [remove-cell]" in chapter
    assert "git+https://" in chapter
    assert (tree / "chapters" / "01_things.ipynb").exists()


def test_export_is_idempotent(tree: Path) -> None:
    run(tree)
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    second = run(tree)
    assert second.returncode == 0 and second.stdout == ""
    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before
    assert run(tree, "--check").returncode == 0


def test_check_catches_hand_edit_of_generated_module(tree: Path) -> None:
    run(tree)
    module = tree / "t5mini" / "things.py"
    module.write_text(module.read_text() + "\nHACK = 1\n")
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "t5mini/things.py" in result.stderr and "make export" in result.stderr
    assert "HACK" in module.read_text()  # --check writes nothing


def test_check_catches_chapter_edited_without_export(tree: Path) -> None:
    run(tree)
    chapter = tree / "chapters" / "01_things.md"
    chapter.write_text(chapter.read_text().replace("x + 1", "x + 2").replace("x+1", "x+2"))
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "t5mini/things.py" in result.stderr and "chapters/01_things.ipynb" in result.stderr
    assert "make export" in result.stderr


def test_check_catches_edited_notebook_and_colab_url(tree: Path) -> None:
    run(tree)
    notebook = tree / "chapters" / "01_things.ipynb"
    notebook.write_text(notebook.read_text().replace("add_one", "add_two"))
    assert "01_things.ipynb" in run(tree, "--check").stderr
    run(tree)
    config = tree / "_config.yml"
    config.write_text(config.read_text().replace("github.com/", "example.org/"))
    result = run(tree, "--check")
    assert result.returncode == 1 and "chapters/01_things.md" in result.stderr
    run(tree)
    assert "git+https://example.org/" in (tree / "chapters" / "01_things.md").read_text()


def test_stale_generated_module_is_reported_and_removed(tree: Path) -> None:
    run(tree)
    chapter = tree / "chapters" / "01_things.md"
    chapter.write_text(chapter.read_text().replace("#| export other", "# no longer exported"))
    result = run(tree, "--check")
    assert result.returncode == 1 and "t5mini/other.py" in result.stderr
    run(tree)
    assert not (tree / "t5mini" / "other.py").exists()


def test_two_chapters_exporting_one_module_is_an_error(tree: Path) -> None:
    (tree / "chapters" / "02_again.md").write_text(CHAPTER)
    result = run(tree)
    assert result.returncode != 0 and "one definition" in (result.stdout + result.stderr)
