"""The website check (book/check_site.py) on a tiny synthetic site, without building the book."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_site", ROOT / "book" / "check_site.py")
check_site = importlib.util.module_from_spec(_spec)
sys.modules["check_site"] = check_site  # dataclasses look their module up there
_spec.loader.exec_module(check_site)

MATHJAX = (
    'window.MathJax={loader:{paths:{tex:"[mathjax]/input/tex/extensions",'
    'sre:"[mathjax]/sre/mathmaps"},source:{"[tex]/amsCd":"[tex]/amscd"}},'
    'load:["input/tex","output/chtml","ui/menu","[tex]/ams","[tex]/amsCd"],'
    'fontURL:"output/chtml/fonts/woff-v2"};'
    'var css="@font-face {src: url(MathJax_Main-Regular.woff)} '
    '@font-face {src: url(MathJax_Zero.woff)}";'
)

CHAPTER = """<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="../_static/book.css" />
<link rel="next" href="02_next.html" />
<script>window.MathJax = {"options": {"processHtmlClass": "math"}}</script>
<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>
</head><body>
<main><article class="bd-article" role="main">
<p>The bucket is <span class="math notranslate nohighlight">\\(\\left\\lfloor x \\right\\rfloor\\)</span>.</p>
<a href="https://example.org/paper.pdf">the paper</a> <a href="#top">top</a>
<div class="cell docutils container">
<div class="cell_input docutils container"><div class="highlight-ipython3 notranslate">
<div class="highlight"><pre><span></span>x = 1
</pre></div></div></div>
<div class="cell_output docutils container">
<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre>1
</pre></div></div>
<img alt="../_images/figure.png" src="../_images/figure.png" />
</div></div>
</article></main>
</body></html>
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site with one clean chapter page and everything it refers to."""
    (tmp_path / "index.html").write_text(
        '<meta http-equiv="Refresh" content="0; url=chapters/01_one.html" />'
    )
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "01_one.html").write_text(CHAPTER)
    (tmp_path / "chapters" / "02_next.html").write_text(CHAPTER)
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "figure.png").write_bytes(b"\x89PNG")
    static = tmp_path / "_static"
    (static / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").mkdir(parents=True)
    (static / "mathjax" / "input" / "tex" / "extensions").mkdir(parents=True)
    (static / "mathjax" / "sre" / "mathmaps").mkdir(parents=True)
    (static / "mathjax" / "ui").mkdir()
    (static / "book.css").write_text("/* url(old.woff) */ body {background: url(bg.png)}")
    (static / "bg.png").write_bytes(b"\x89PNG")
    (static / "mathjax" / "tex-chtml.js").write_text(MATHJAX)
    for name in ["input/tex.js", "output/chtml.js", "ui/menu.js"]:
        (static / "mathjax" / name).write_text("")
    for name in ["ams", "amscd"]:
        (static / "mathjax" / "input" / "tex" / "extensions" / f"{name}.js").write_text("")
    for font in ["MathJax_Main-Regular.woff", "MathJax_Zero.woff"]:
        (static / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2" / font).write_bytes(b"")
    return tmp_path


def edit(site: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the first chapter page."""
    page = site / "chapters" / "01_one.html"
    assert old in page.read_text()
    page.write_text(page.read_text().replace(old, new))


def test_a_clean_site_passes(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_site.check_site(site) == []
    assert check_site.main([str(site)]) == 0
    assert "no problem" in capsys.readouterr().out


def test_missing_image_file_is_caught(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "_images" / "figure.png").unlink()
    problems = check_site.check_site(site)
    assert (
        "chapters/01_one.html: <img> refers to ../_images/figure.png, which the site does not contain"
        in problems
    )
    assert check_site.main([str(site)]) == 1
    assert "../_images/figure.png" in capsys.readouterr().err


def test_missing_stylesheet_and_page_link_are_caught(site: Path) -> None:
    (site / "_static" / "book.css").unlink()
    (site / "chapters" / "02_next.html").unlink()
    problems = "\n".join(check_site.check_site(site))
    assert "01_one.html: <link> refers to ../_static/book.css" in problems
    assert "01_one.html: <link> refers to 02_next.html" in problems


def test_redirect_and_stylesheet_targets_are_checked(site: Path) -> None:
    (site / "_static" / "bg.png").unlink()
    (site / "chapters" / "01_one.html").rename(site / "chapters" / "01_moved.html")
    problems = check_site.check_site(site)
    assert (
        "index.html: <meta> refers to chapters/01_one.html, which the site does not contain"
        in problems
    )
    assert "_static/book.css: url(bg.png) refers to a file the site does not contain" in problems
    assert not any("old.woff" in p for p in problems)  # a comment


@pytest.mark.parametrize(
    "missing",
    [
        "output/chtml/fonts/woff-v2/MathJax_Zero.woff",  # a font its stylesheet names
        "input/tex/extensions/amscd.js",  # an extension, after the loader's rename
        "ui/menu.js",  # a component
        "sre/mathmaps",  # a [mathjax]/ path
    ],
)
def test_what_mathjax_loads_is_checked(site: Path, missing: str) -> None:
    path = site / "_static" / "mathjax" / missing
    path.rmdir() if path.is_dir() else path.unlink()
    check_site._MATHJAX_CACHE.clear()
    problems = check_site.check_site(site)
    assert any(
        p.startswith("chapters/01_one.html: MathJax (../_static/mathjax/tex-chtml.js) loads")
        and missing.removesuffix(".js") in p
        for p in problems
    ), problems


def test_mathjax2_config_file_is_checked(site: Path) -> None:
    (site / "_static" / "mathjax" / "MathJax.js").write_text("")
    (site / "_static" / "mathjax" / "config").mkdir()
    (site / "_static" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").write_text("")
    edit(site, "mathjax/tex-chtml.js", "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML")
    problems = check_site.check_site(site)
    assert any("loads config/TeX-AMS-MML_HTMLorMML.js" in p for p in problems), problems


def test_math_without_mathjax_is_caught(site: Path) -> None:
    edit(site, '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>', "")
    assert "chapters/01_one.html: the page has math but loads no MathJax" in check_site.check_site(
        site
    )


def test_a_script_from_the_network_is_caught(site: Path) -> None:
    edit(site, "../_static/mathjax/tex-chtml.js", "https://cdn.example.org/tex-chtml.js")
    problems = "\n".join(check_site.check_site(site))
    assert "loads https://cdn.example.org/tex-chtml.js from the network" in problems
    assert "example.org/paper.pdf" not in problems  # a link is not loaded by the page


STDERR = """<div class="output stderr highlight-myst-ansi notranslate"><div class="highlight"><pre>
/x/transformers/utils/logging.py:36: TqdmWarning: IProgress not found. Please update jupyter
</pre></div></div>"""


def test_warning_on_stderr_is_caught(site: Path) -> None:
    edit(site, '<img alt="../_images', STDERR + '<img alt="../_images')
    problems = check_site.check_site(site)
    assert any(
        p.startswith("chapters/01_one.html: an output on stderr:") and "TqdmWarning" in p
        for p in problems
    )
    assert any(p.startswith("chapters/01_one.html: a warning in an output:") for p in problems)


def test_warning_printed_to_stdout_is_caught(site: Path) -> None:
    edit(site, "<pre>1\n</pre>", "<pre>UserWarning: something is off\n</pre>")
    problems = check_site.check_site(site)
    assert problems == [
        "chapters/01_one.html: a warning in an output: 'UserWarning: something is off'"
    ]


def test_widget_output_is_caught(site: Path) -> None:
    widget = '<script type="application/vnd.jupyter.widget-view+json">{"model_id": "1"}</script>'
    edit(site, "<pre>1\n</pre>", widget)
    assert any("widget output" in p for p in check_site.check_site(site))


def test_chapter_without_image_is_caught(site: Path) -> None:
    edit(site, '<img alt="../_images/figure.png" src="../_images/figure.png" />', "")
    problems = check_site.check_site(site)
    assert problems == [
        "chapters/01_one.html: a chapter page with no image (every chapter has a figure)"
    ]


def test_image_outside_the_article_does_not_count(site: Path) -> None:
    edit(site, '<img alt="../_images/figure.png" src="../_images/figure.png" />', "")
    edit(site, "<main>", '<img src="../_images/figure.png" /><main>')
    assert any("no image" in p for p in check_site.check_site(site))


@pytest.mark.parametrize(
    "pragma", ["# noqa: E501", "# fmt: skip", "#noqa", "# type: ignore[arg-type]"]
)
def test_lint_pragma_in_code_is_caught(site: Path, pragma: str) -> None:
    edit(site, "x = 1\n", f"x = 1  {pragma}\n")
    assert check_site.check_site(site) == [
        f"chapters/01_one.html: a lint pragma in code: x = 1  {pragma}"
    ]
