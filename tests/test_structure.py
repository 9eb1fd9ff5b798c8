"""The book's shape: T5 chapters stay lean, and the speed tricks live in the Engineering part.

A T5 chapter (every chapter outside the part whose caption names "Engineering") is at most
1,000 lines, and no code cell a reader must read has more than 40 non-blank lines. A
module exported by a T5 chapter holds no compiler special case: the fast paths belong to
the Engineering appendices' modules.
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 1000
MAX_CELL_LINES = 40
FOLDED = {"remove-cell", "hide-input", "hide-cell", "remove-input"}
# What a T5 module must not contain: compiler branches, compiler options, private APIs.
BANNED = (
    "is_compiling",
    "inductor",
    "_dynamo",
    "_reparametrize_module",
    "cudagraph",
    "mark_static_address",
)


def parts() -> dict[str, list[Path]]:
    """Each part's caption -> its chapter sources, from `_toc.yml`."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return {
        part["caption"]: [ROOT / f"{entry['file']}.md" for entry in part["chapters"]]
        for part in toc["parts"]
    }


def engineering_chapters() -> list[Path]:
    """The chapters of the Engineering part."""
    return [c for caption, files in parts().items() if "Engineering" in caption for c in files]


def t5_chapters() -> list[Path]:
    """Every chapter of the book outside the Engineering part (and the back matter)."""
    engineering = set(engineering_chapters())
    return [
        c
        for files in parts().values()
        for c in files
        if c.parent.name == "chapters" and c not in engineering
    ]


def exported_modules(chapter: Path) -> set[str]:
    """The modules a chapter's `#| default_exp` and `#| export OTHER` cells write."""
    text = chapter.read_text()
    names = set(re.findall(r"^#\|[ \t]*default_exp[ \t]+([\w.]+)", text, re.M))
    names |= set(re.findall(r"^#\|[ \t]*export[ \t]+([\w.]+)[ \t]*$", text, re.M))
    return names


def test_engineering_part_has_at_least_three_chapters() -> None:
    chapters = engineering_chapters()
    assert len(chapters) >= 3, f"the Engineering part has {len(chapters)} chapters"
    for chapter in chapters:
        assert chapter.exists(), chapter
        assert exported_modules(chapter), f"{chapter.name} exports no module"


def test_every_chapter_is_in_the_table_of_contents() -> None:
    listed = {c for files in parts().values() for c in files}
    assert set((ROOT / "chapters").glob("[0-9][0-9]_*.md")) <= listed


@pytest.mark.parametrize("chapter", t5_chapters(), ids=lambda p: p.name)
def test_t5_chapter_is_lean(chapter: Path) -> None:
    lines = chapter.read_text().count("\n")
    assert lines <= MAX_LINES, f"{chapter.name} has {lines} lines (at most {MAX_LINES})"
    notebook = jupytext.read(chapter)
    for cell in notebook.cells:
        if cell.cell_type != "code" or FOLDED & set(cell.metadata.get("tags", [])):
            continue
        body = [line for line in cell.source.splitlines() if line.strip()]
        assert len(body) <= MAX_CELL_LINES, (
            f"{chapter.name}: a code cell of {len(body)} non-blank lines (at most "
            f"{MAX_CELL_LINES} unless folded); it starts {body[0]!r}"
        )


@pytest.mark.parametrize("chapter", t5_chapters(), ids=lambda p: p.name)
def test_t5_module_has_no_compiler_special_case(chapter: Path) -> None:
    for module in sorted(exported_modules(chapter)):
        source = (ROOT / "t5mini" / f"{module.replace('.', '/')}.py").read_text()
        found = [word for word in BANNED if word in source]
        assert not found, f"t5mini/{module}.py (from {chapter.name}) contains {found}"


def test_planted_banned_word_is_found(tmp_path: Path) -> None:
    """The check above can fail: a module with a compiler branch is caught."""
    planted = "if torch.compiler.is_compiling():\n    pass\n"
    assert [word for word in BANNED if word in planted] == ["is_compiling"]
