"""Check the built website (``_build/html``) as a reader would meet it.

``make book`` runs this after Jupyter Book has built the site. It fails, printing each
problem with its page, when:

- a page refers to a local file the site does not contain: any ``src``/``href`` (and the
  ``url()`` in the site's stylesheets), and the files MathJax itself loads (MathJax 2's
  ``?config=`` files; MathJax 3's components, TeX extensions and fonts, resolved as its
  loader resolves them), or a page with math loads no MathJax at all;
- a page loads a script, stylesheet or image from the network (the site works offline);
- a cell output contains a warning: any stderr output, "...Warning" text, or a progress-bar
  widget (which renders as nothing on a static page);
- a chapter page (``chapters/*.html``) carries no image;
- code on a page carries a lint or formatter pragma (``# noqa``, ``# fmt: skip``, ...).

Usage: ``python book/check_site.py [_build/html]``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
VOID |= {"track", "wbr", "param"}
REFERENCING = {"a", "img", "script", "link", "source", "iframe", "video", "audio", "embed"}
# What the network must not supply: things a page loads by itself (links are fine).
LOADED = {"img", "script", "source", "iframe", "video", "audio", "embed"}
LINK_LOADS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon"}
WARNING = re.compile(r"\w*Warning\b|\bWARNING\b|^\s*warning:", re.M)
PRAGMA = re.compile(r"#\s*(noqa\b|fmt:\s*(skip|off|on)\b|type:\s*ignore\b|pylint:|ruff:)")
WIDGET = "application/vnd.jupyter.widget-view+json"


@dataclass
class Page:
    """What one HTML page refers to and contains."""

    refs: list[tuple[str, str]] = field(default_factory=list)  # (tag, url) to check
    remote: list[tuple[str, str]] = field(default_factory=list)  # (tag, url) from the network
    mathjax: list[str] = field(default_factory=list)  # src of MathJax scripts
    has_math: bool = False
    stderr: list[str] = field(default_factory=list)  # text of stderr outputs
    outputs: list[str] = field(default_factory=list)  # text of every cell output
    widgets: int = 0
    images: int = 0  # <img> inside the article
    code: list[str] = field(default_factory=list)  # text of <pre> blocks


class _PageParser(HTMLParser):
    """Collects a :class:`Page` from HTML (Sphinx writes well-formed HTML)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[tuple[str, set[str], int]] = []  # (tag, classes, index of its text)
        self.texts: dict[int, list[str]] = {}  # open collectors: id -> text pieces
        self.opened = 0  # elements opened so far: the next collector's id

    def _inside(self, tag: str | None = None, cls: str | None = None) -> bool:
        return any(
            (tag is None or t == tag) and (cls is None or cls in c) for t, c, _ in self.stack
        )

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        classes = set(attributes.get("class", "").split())
        if "math" in classes:
            self.page.has_math = True
        if tag == "img" and self._inside(cls="bd-article"):
            self.page.images += 1
        if tag == "script" and attributes.get("type") == WIDGET:
            self.page.widgets += 1
        if tag == "meta" and attributes.get("http-equiv", "").lower() == "refresh":
            url = attributes.get("content", "").partition("url=")[2].strip()
            if url and not urlsplit(url).scheme:
                self.page.refs.append((tag, url))  # the redirect of index.html
        rel = set(attributes.get("rel", "").split())
        loads = tag in LOADED or (tag == "link" and bool(rel & LINK_LOADS))
        for name in ("src", "href"):
            url = attributes.get(name)
            if url is None or tag not in REFERENCING:
                continue
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if loads:
                    self.page.remote.append((tag, url))
                continue
            if parts.scheme or not parts.path:
                continue  # mailto:, data:, javascript:, #anchor
            self.page.refs.append((tag, url))
            if tag == "script" and "mathjax" in url.lower():
                self.page.mathjax.append(url)
        if tag in VOID:
            return
        index, self.opened = self.opened, self.opened + 1
        self.texts[index] = []
        self.stack.append((tag, classes, index))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _, _ in self.stack):
            return
        while self.stack:
            name, classes, index = self.stack.pop()
            text = "".join(self.texts.pop(index))
            if self.stack:  # the parent sees its children's text
                self.texts[self.stack[-1][2]].append(text)
            if name == "div" and {"output", "stderr"} <= classes:
                self.page.stderr.append(text)
            if name == "div" and "cell_output" in classes:
                self.page.outputs.append(text)
            if name == "pre":
                self.page.code.append(text)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.texts[self.stack[-1][2]].append(data)


def parse_page(html: str) -> Page:
    """The references and contents of one page."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def local_target(page: Path, url: str) -> Path:
    """The file a relative (or site-absolute) URL on ``page`` names."""
    path = unquote(urlsplit(url).path)
    target = (page.parent / path) if not path.startswith("/") else Path(path)
    return target / "index.html" if path.endswith("/") else target


def _exists(path: Path) -> bool:
    return path.exists() or path.with_suffix(path.suffix + ".js").exists()


_MATHJAX_CACHE: dict[Path, list[str]] = {}


def mathjax_missing(script: Path, url: str) -> list[str]:
    """Files a MathJax script would load that are not next to it (relative to its folder)."""
    root = script.parent
    if "config=" in urlsplit(url).query:  # MathJax 2: MathJax.js?config=A,B
        query = dict(part.split("=", 1) for part in urlsplit(url).query.split("&") if "=" in part)
        return [
            f"config/{name}.js"
            for name in query["config"].split(",")
            if not (root / "config" / f"{name}.js").exists()
        ]
    if script in _MATHJAX_CACHE:
        return _MATHJAX_CACHE[script]
    source = script.read_text(encoding="utf-8", errors="replace") if script.exists() else ""
    wanted: set[str] = set()
    # Components the loader may fetch: "input/tex", "output/chtml", "a11y/...", "ui/menu".
    for name in re.findall(r"[\"']((?:a11y|adaptors|input|output|ui)/[\w/.-]*[\w-])[\"']", source):
        wanted.add(name)
    # Paths spelled with the loader's [mathjax] prefix (its own folder).
    for name in re.findall(r"[\"']\[mathjax\]/([\w/.-]*[\w-])[\"']", source):
        wanted.add(name)
    # TeX extensions, after the loader's own renames ("[tex]/amsCd" -> "[tex]/amscd").
    renames = dict(
        re.findall(r"[\"'](\[tex\]/[\w-]+)[\"']\s*:\s*[\"'](\[tex\]/[\w-]+)[\"']", source)
    )
    for name in re.findall(r"[\"'](\[tex\]/[\w-]+)[\"']", source):
        wanted.add("input/tex/extensions/" + renames.get(name, name).removeprefix("[tex]/"))
    # CHTML fonts: every MathJax_*.woff its stylesheet names, in its font folder.
    if "output/chtml/fonts/woff-v2" in source:
        for font in set(re.findall(r"MathJax_[\w-]+\.woff", source)):
            wanted.add(f"output/chtml/fonts/woff-v2/{font}")
    missing = sorted(name for name in wanted if not _exists(root / name))
    _MATHJAX_CACHE[script] = missing
    return missing


def stylesheet_missing(site: Path) -> list[str]:
    """Local files (fonts, images) that the site's stylesheets name and the site lacks."""
    problems = []
    for css in sorted(site.rglob("*.css")):
        text = re.sub(
            r"/\*.*?\*/", "", css.read_text(encoding="utf-8", errors="replace"), flags=re.S
        )
        for url in sorted(set(re.findall(r"url\(\s*['\"]?([^'\")]+)", text))):
            if urlsplit(url).scheme or url.startswith(("//", "#")):
                continue
            if not local_target(css, url).exists():
                name = css.relative_to(site).as_posix()
                problems.append(f"{name}: url({url}) refers to a file the site does not contain")
    return problems


def check_site(site: Path) -> list[str]:
    """Every problem on the site, as ``page: problem`` lines."""
    if not (site / "index.html").exists():
        return [f"{site}: no index.html (build the site first: make book)"]
    problems = []
    for path in sorted(site.rglob("*.html")):
        if path.relative_to(site).parts[0] in ("_static", "_sources", "_images"):
            continue
        name = path.relative_to(site).as_posix()
        page = parse_page(path.read_text(encoding="utf-8"))
        for tag, url in sorted(set(page.refs)):
            if not local_target(path, url).exists():
                problems.append(f"{name}: <{tag}> refers to {url}, which the site does not contain")
        for tag, url in sorted(set(page.remote)):
            problems.append(
                f"{name}: <{tag}> loads {url} from the network (the site must work offline)"
            )
        if page.has_math and not page.mathjax:
            problems.append(f"{name}: the page has math but loads no MathJax")
        for url in page.mathjax:
            script = local_target(path, url)
            for missing in mathjax_missing(script, url):
                problems.append(
                    f"{name}: MathJax ({url}) loads {missing}, which the site does not contain"
                )
        for text in page.stderr:
            problems.append(f"{name}: an output on stderr: {_excerpt(text)}")
        for text in page.outputs:
            if match := WARNING.search(text):
                problems.append(f"{name}: a warning in an output: {_excerpt(text, match.start())}")
        if page.widgets:
            problems.append(
                f"{name}: {page.widgets} widget output(s), e.g. a tqdm progress bar, which a static "
                "page cannot show (use `from tqdm import tqdm` or print progress)"
            )
        for text in page.code:
            for line in text.splitlines():
                if PRAGMA.search(line):
                    problems.append(f"{name}: a lint pragma in code: {line.strip()}")
        if path.parent.name == "chapters" and page.images == 0:
            problems.append(f"{name}: a chapter page with no image (every chapter has a figure)")
    return problems + stylesheet_missing(site)


def _excerpt(text: str, at: int = 0, width: int = 160) -> str:
    """One line of ``text`` around position ``at``."""
    start = text.rfind("\n", 0, at) + 1
    line = " ".join(text[start : start + width].split())
    return repr(line if line else " ".join(text.split())[:width])


def main(argv: list[str] | None = None) -> int:
    """Check the site at ``argv[0]`` (default ``_build/html``); 1 if there is a problem."""
    args = sys.argv[1:] if argv is None else argv
    site = Path(args[0] if args else "_build/html")
    problems = check_site(site)
    pages = sum(1 for _ in site.rglob("*.html"))
    if problems:
        print(f"site check: {len(problems)} problem(s) in {site}:", file=sys.stderr)
        print("\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
        return 1
    print(f"site check: {pages} pages, no problem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
