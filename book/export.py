"""Export the book's chapters into the t5mini package, and keep their Colab copies in step.

The chapters (``chapters/NN_name.md``, Jupytext MyST notebooks) are the source of truth.
This script derives three things from them:

1. ``t5mini/MODULE.py``: every code cell whose first line is ``#| export`` is copied, in
   order, into the module named by the chapter's ``#| default_exp MODULE`` cell
   (``#| export OTHER`` sends one cell to ``t5mini/OTHER.py`` instead).
2. The first code cell of every chapter: the hidden Colab set-up cell, rendered from the
   repository URL in ``_config.yml`` (the only place that URL is written).
3. ``chapters/NN_name.ipynb``: the paired notebook, outputs stripped, that Colab opens.

It also writes that URL into the clone and install commands of ``book/intro.md`` and
``README.md``.

``python book/export.py`` writes them all; ``python book/export.py --check`` writes nothing
and fails, naming the command that fixes it, when any of them is out of date. ``--check``
also fails when a chapter imports a module it exports itself (``from t5mini.norm import
RMSNorm`` in the chapter that exports ``t5mini.norm``): the chapter must use the names its
own cells define, so that a reader who edits a cell and re-runs the chapter sees the change.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
PACKAGE = ROOT / "t5mini"
HEADER = "# Generated from {chapter} — edit the chapter, not this file."
FIX = "run `make export` (python book/export.py) and commit the result"

DEFAULT_EXP = re.compile(r"^#\|\s*default_exp\s+([\w.]+)\s*$")
EXPORT = re.compile(r"^#\|\s*export(?:\s+([\w.]+))?\s*$")
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# Pages outside chapters/ that show the repository URL, and where they show it.
URL_DOCUMENTS = ("book/intro.md", "README.md")
URL_PLACES = (
    re.compile(r"(git clone )(<[^>\n]*>|\S+)"),  # git clone URL t5mini (or a <placeholder>)
    re.compile(r"(t5mini @ git\+)(<[^>\n]*>|[^\s\"'@]+)"),  # pip install "t5mini @ git+URL"
)
OWN_IMPORT_FIX = (
    "use the names this chapter's `#| export` cells define and delete the import, so that a "
    "reader who edits a cell and re-runs the chapter sees the change. An exported cell that "
    "needs another module of this chapter imports it under `if TYPE_CHECKING:` when only type "
    "hints use it; otherwise only before that module's first `#| export` cell"
)

COLAB_CELL = """\
:tags: [remove-cell]

# In Colab, install t5mini (Colab's own torch stays). Elsewhere this cell does nothing.
import subprocess
import sys

if "google.colab" in sys.modules:
    package = "t5mini @ git+{url}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
"""


def repository_url() -> str:
    """The repository URL, read from the one place it is written: ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def with_repository_url(text: str, url: str) -> str:
    """A page's text with every clone and pip-install URL set to the repository's."""
    for place in URL_PLACES:
        text = place.sub(lambda match: match.group(1) + url, text)
    return text


def chapter_files(paths: list[str] | None = None) -> list[Path]:
    """The chapters to process: those given, or every ``chapters/NN_*.md``."""
    if paths:
        return [Path(p).resolve() for p in paths]
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.md"))


def with_colab_cell(text: str, url: str) -> str:
    """The chapter text with its first code cell replaced by the Colab set-up cell."""
    match = CODE_CELL.search(text)
    if match is None:
        raise SystemExit("a chapter has no code cell; it needs at least the Colab set-up cell")
    return text[: match.start(1)] + COLAB_CELL.format(url=url) + text[match.end(1) :]


def format_python(source: str) -> str:
    """Sort the imports and format generated code with ruff, so modules pass ``make check``.

    A folded import cell is followed by whatever the next exported cell holds, so the blank
    lines after the import block are ruff's to set (its import-sorting rule), not the cells'.
    """
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for command in (["check", "--select", "I", "--fix", "--exit-zero"], ["format"]):
        result = subprocess.run(
            [ruff, *command, "--stdin-filename", "module.py", "-"],
            input=source,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if result.returncode != 0:
            raise SystemExit(f"ruff could not format the exported code:\n{result.stderr}")
        source = result.stdout
    return source


def modules_of(chapter: Path) -> dict[str, list[str]]:
    """Map each module name to the exported cell sources of one chapter, in order."""
    notebook = jupytext.read(chapter)
    default: str | None = None
    modules: dict[str, list[str]] = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        first, _, rest = cell.source.partition("\n")
        if match := DEFAULT_EXP.match(first.strip()):
            default = match.group(1)
            continue
        if match := EXPORT.match(first.strip()):
            name = match.group(1) or default
            if name is None:
                raise SystemExit(
                    f"{chapter.name}, cell {index}: `#| export` before any `#| default_exp`"
                )
            modules.setdefault(name, []).append(rest.strip("\n"))
    return modules


def package_exports() -> dict[str, str]:
    """Top-level names of ``t5mini/__init__.py`` (its ``_EXPORTS``) -> the module defining each."""
    init = PACKAGE / "__init__.py"
    if not init.exists():
        return {}
    for node in ast.walk(ast.parse(init.read_text())):
        if (
            isinstance(node, ast.Assign)
            and any(
                isinstance(target, ast.Name) and target.id == "_EXPORTS" for target in node.targets
            )
            and isinstance(node.value, ast.Dict)
        ):
            return ast.literal_eval(node.value)
    return {}


def code_cells(text: str) -> list[tuple[int, str]]:
    """Each code cell of a chapter's text: (line of its first source line, its source).

    Cell options (``:tags: ...`` or a ``---`` block) and IPython magics become blank lines or
    ``pass``, so the source parses as Python and keeps the chapter's line numbers.
    """
    cells = []
    for match in CODE_CELL.finditer(text):
        lines = match.group(1).split("\n")
        if lines and lines[0].strip() == "---":
            end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), 0)
            lines[: end + 1] = [""] * (end + 1)
        else:
            for i, line in enumerate(lines):
                if not line.startswith(":"):
                    break
                lines[i] = ""
        for i, line in enumerate(lines):
            stripped = line.lstrip()
            if stripped.startswith(("%", "!")):
                lines[i] = line[: len(line) - len(stripped)] + "pass"
        cells.append((text.count("\n", 0, match.start(1)) + 1, "\n".join(lines)))
    return cells


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` blocks (they never run)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for statement in node.body:
                    guarded.update(id(child) for child in ast.walk(statement))
    return guarded


def _imported_modules(node: ast.AST, top_level: dict[str, str]) -> list[str]:
    """The ``t5mini`` modules one import statement takes names from."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "t5mini":
            names = [f"t5mini.{top_level.get(alias.name, alias.name)}" for alias in node.names]
        else:
            names = [node.module]
    else:
        return []
    return [name.removeprefix("t5mini.") for name in names if name.startswith("t5mini.")]


def own_imports(chapter: Path) -> list[str]:
    """Where a chapter imports a module it exports itself: ``file:line: problem``.

    Allowed: an import under ``if TYPE_CHECKING:``, and an import in an exported cell that
    comes before the first cell exporting that module (the module needs it, and the chapter's
    own definitions replace the imported names when their cell runs).
    """
    cells = code_cells(chapter.read_text())
    first_export: dict[str, int] = {}  # module -> line of its first exported cell
    exporting: dict[int, str] = {}  # line of an exported cell -> its module
    default = None
    for first_line, source in cells:
        head = next((line.strip() for line in source.split("\n") if line.strip()), "")
        if match := DEFAULT_EXP.match(head):
            default = match.group(1)
        elif (match := EXPORT.match(head)) and (match.group(1) or default):
            exporting[first_line] = match.group(1) or default
            first_export.setdefault(exporting[first_line], first_line)
    top_level = package_exports()
    problems = []
    for first_line, source in cells:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # not Python this check can read; executing the chapter will say more
        guarded = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            for module in _imported_modules(node, top_level):
                exported = next(
                    (
                        name
                        for name in first_export
                        if module == name or module.startswith(name + ".")
                    ),
                    None,
                )
                if exported is None or (
                    first_line in exporting
                    and exporting[first_line] != exported
                    and first_line < first_export[exported]
                ):
                    continue
                where = f"{chapter.relative_to(ROOT).as_posix()}:{first_line + node.lineno - 1}"
                problems.append(
                    f"  {where}: `{ast.unparse(node)}` imports t5mini.{exported}, "
                    "which this chapter exports"
                )
    return problems


def module_path(name: str) -> Path:
    """``tokenizer`` -> ``t5mini/tokenizer.py``."""
    return PACKAGE.joinpath(*name.split(".")).with_suffix(".py")


def render_module(chapter: Path, cells: list[str]) -> str:
    """The text of one generated module."""
    header = HEADER.format(chapter=chapter.relative_to(ROOT).as_posix())
    return format_python(header + "\n\n" + "\n\n\n".join(cells) + "\n")


def render_ipynb(chapter_text: str) -> str:
    """The paired ``.ipynb`` (outputs stripped) for a chapter's text."""
    notebook = jupytext.reads(chapter_text, fmt="md:myst")
    notebook.metadata.setdefault("jupytext", {})["formats"] = "ipynb,md:myst"
    notebook.metadata["jupytext"].pop("text_representation", None)
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:03d}"  # stable ids: the same chapter gives the same file
    return jupytext.writes(notebook, fmt="ipynb")


def expected_files(chapters: list[Path], documents: bool = True) -> dict[Path, str]:
    """Every file the chapters (and, with ``documents``, the repository URL) determine."""
    url = repository_url()
    expected: dict[Path, str] = {}
    if documents:
        for name in URL_DOCUMENTS:
            if (path := ROOT / name).exists():
                expected[path] = with_repository_url(path.read_text(), url)
    owners: dict[str, Path] = {}
    for chapter in chapters:
        text = with_colab_cell(chapter.read_text(), url)
        expected[chapter] = text
        expected[chapter.with_suffix(".ipynb")] = render_ipynb(text)
        for name, cells in modules_of(chapter).items():
            if name in owners and owners[name] != chapter:
                raise SystemExit(
                    f"module t5mini.{name} is exported by both {owners[name].name} and "
                    f"{chapter.name}: one definition of everything"
                )
            owners[name] = chapter
            expected[module_path(name)] = render_module(chapter, cells)
    return expected


def stale_generated(chapters: list[Path], expected: dict[Path, str]) -> list[Path]:
    """Generated modules whose chapter no longer exports them (only on a full run)."""
    names = {chapter.relative_to(ROOT).as_posix() for chapter in chapters}
    stale = []
    for path in PACKAGE.rglob("*.py"):
        first = path.read_text().split("\n", 1)[0]
        if first.startswith("# Generated from ") and path not in expected:
            source = first.removeprefix("# Generated from ").split(" ")[0]
            if source in names or not (ROOT / source).exists():
                stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    """Export (default) or check (``--check``) the chapters."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail if stale")
    parser.add_argument("chapters", nargs="*", help="chapter files (default: all)")
    args = parser.parse_args(argv)

    chapters = chapter_files(args.chapters)
    expected = expected_files(chapters, documents=not args.chapters)
    stale = [] if args.chapters else stale_generated(chapters, expected)
    imports = [problem for chapter in chapters for problem in own_imports(chapter)]
    out_of_date = [
        path for path, text in expected.items() if not path.exists() or path.read_text() != text
    ]
    if args.check:
        documents = {ROOT / name for name in URL_DOCUMENTS}
        problems = [
            f"  {p.relative_to(ROOT)} differs from "
            + (
                "the repository URL in _config.yml"
                if p in documents
                else "what its chapter generates"
            )
            for p in out_of_date
        ]
        problems += [
            f"  {p.relative_to(ROOT)} is generated but no chapter exports it" for p in stale
        ]
        if problems:
            print(
                "The package, the notebooks or the pages are out of step with the chapters:",
                file=sys.stderr,
            )
            print("\n".join(problems), file=sys.stderr)
            print(
                f"Fix: edit the chapter (never a generated module or an .ipynb), then {FIX}.",
                file=sys.stderr,
            )
        if imports:
            print("A chapter imports a module it exports itself:", file=sys.stderr)
            print("\n".join(imports), file=sys.stderr)
            print(f"Fix: {OWN_IMPORT_FIX}.", file=sys.stderr)
        if problems or imports:
            return 1
        print(f"export check: {len(chapters)} chapters, {len(expected)} files in step")
        return 0
    for path in out_of_date:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    if imports:
        print("Note: a chapter imports a module it exports itself", file=sys.stderr)
        print("\n".join(imports), file=sys.stderr)
        print(f"Fix: {OWN_IMPORT_FIX}. (`--check` fails until then.)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
