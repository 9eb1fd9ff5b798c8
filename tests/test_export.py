"""The exporter (book/export.py): chapters -> t5mini modules, Colab cell and paired .ipynb."""

from __future__ import annotations

import importlib.util
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


OWN_IMPORTS = """
```{code-cell} ipython3
from t5mini.things import add_one
```

```{code-cell} ipython3
:tags: [hide-input]

import t5mini.other as other
from t5mini import things
```

```{code-cell} ipython3
#| export
from typing import TYPE_CHECKING

from t5mini.elsewhere import helper
from t5mini.other import OTHER as AGAIN

if TYPE_CHECKING:
    from t5mini.other import OTHER
```
"""

# An exported cell of `things` that needs `other` before this chapter defines it: allowed,
# the `#| export other` cell below replaces the imported name when it runs.
EARLY_IMPORT = """```{code-cell} ipython3
#| export
from t5mini.other import OTHER as EARLY
```

```{code-cell} ipython3
#| export other"""


def line_of(text: str, needle: str) -> int:
    """1-based number of the line of ``text`` that contains ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_check_catches_chapter_importing_a_module_it_exports(tree: Path) -> None:
    chapter = tree / "chapters" / "01_things.md"
    own_cell = "```{code-cell} ipython3\n#| export other"
    chapter.write_text(CHAPTER.replace(own_cell, EARLY_IMPORT) + OWN_IMPORTS)
    run(tree)
    result = run(tree, "--check")
    assert result.returncode == 1
    text = chapter.read_text()
    for needle, module in [
        ("from t5mini.things import add_one", "t5mini.things"),
        ("import t5mini.other as other", "t5mini.other"),
        ("from t5mini import things", "t5mini.things"),
        ("from t5mini.other import OTHER as AGAIN", "t5mini.other"),
    ]:
        line = f"chapters/01_things.md:{line_of(text, needle)}: `{needle}` imports {module}"
        assert line in result.stderr, result.stderr
    assert result.stderr.count("which this chapter exports") == 4
    # Another chapter's module, one of this chapter's for type hints only, or one imported
    # by an exported cell before this chapter defines it, is fine.
    assert "elsewhere" not in result.stderr and "EARLY" not in result.stderr
    assert "import OTHER`" not in result.stderr
    assert "delete the import" in result.stderr and "re-runs the chapter" in result.stderr
    # The fix: use the chapter's own names.
    chapter.write_text(
        chapter.read_text()
        .replace("from t5mini.things import add_one\n", "add_one(1)\n")
        .replace("import t5mini.other as other\nfrom t5mini import things\n", "OTHER\n")
        .replace("from t5mini.other import OTHER as AGAIN\n", "AGAIN = OTHER\n")
    )
    run(tree)
    assert run(tree, "--check").returncode == 0


def test_intro_clone_url_comes_from_config(tree: Path) -> None:
    intro = tree / "book" / "intro.md"
    intro.write_text(
        "```bash\ngit clone <the repository> t5mini && cd t5mini\n```\n\n"
        'pip install "t5mini @ git+<the repository>"\n'
    )
    result = run(tree, "--check")
    assert result.returncode == 1 and "book/intro.md" in result.stderr
    assert "repository URL in _config.yml" in result.stderr
    run(tree)
    text = intro.read_text()
    assert "git clone https://github.com/t5mini/t5mini t5mini && cd t5mini" in text
    assert 'pip install "t5mini @ git+https://github.com/t5mini/t5mini"' in text
    assert run(tree, "--check").returncode == 0
    config = tree / "_config.yml"
    config.write_text(config.read_text().replace("github.com/", "example.org/"))
    result = run(tree, "--check")
    assert result.returncode == 1 and "book/intro.md" in result.stderr


def test_the_real_intro_and_readme_use_the_configured_url() -> None:
    spec = importlib.util.spec_from_file_location("export", ROOT / "book" / "export.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    url = export.repository_url()
    intro = (ROOT / "book" / "intro.md").read_text()
    assert f"git clone {url} t5mini" in intro and "<the repository>" not in intro
    for name in export.URL_DOCUMENTS:
        text = (ROOT / name).read_text()
        assert export.with_repository_url(text, url) == text, name


# Issue 9 part 2: a chapter runs its own definitions, so an edit to an exported cell takes
# effect when the chapter is re-run.
PLANTED = 'raise RuntimeError("planted")'


def execute_chapter(path: Path) -> None:
    """Execute a chapter (a Jupytext file) top to bottom in a fresh kernel, cwd its folder."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()


def plant_in_forward(chapter: str, class_name: str) -> str:
    """The chapter's text with ``PLANTED`` as the first line of ``class_name.forward``."""
    lines = chapter.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"class {class_name}("))
    cell_start = max(i for i in range(start) if lines[i].startswith("```{code-cell}"))
    assert lines[cell_start + 1].strip() == "#| export", "the class is defined in an export cell"
    define = next(i for i in range(start, len(lines)) if "def forward(" in lines[i])
    body = next(i for i in range(define, len(lines)) if lines[i].rstrip().endswith(":")) + 1
    indent = lines[define][: len(lines[define]) - len(lines[define].lstrip())] + "    "
    return "".join(lines[:body] + [f"{indent}{PLANTED}\n"] + lines[body:])


@pytest.mark.timeout(900)
def test_an_edit_to_an_exported_cell_changes_what_the_chapter_runs(tmp_path: Path) -> None:
    from nbclient.exceptions import CellExecutionError

    source = (ROOT / "chapters" / "02_embeddings_rmsnorm.md").read_text()
    planted = tmp_path / "planted" / "02_embeddings_rmsnorm.md"
    planted.parent.mkdir()
    planted.write_text(plant_in_forward(source, "RMSNorm"))
    assert planted.read_text().count(PLANTED) == 1
    with pytest.raises(CellExecutionError, match="planted"):
        execute_chapter(planted)
    unmodified = tmp_path / "unmodified" / "02_embeddings_rmsnorm.md"
    unmodified.parent.mkdir()
    unmodified.write_text(source)
    execute_chapter(unmodified)
