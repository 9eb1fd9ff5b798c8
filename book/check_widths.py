"""Check that no code block of the built site scrolls sideways, in a real (headless) browser.

``python book/check_widths.py _build/html`` serves the site on 127.0.0.1, opens every
chapter page in headless Chromium at a laptop's window (1440x900 by default) and lists each
code block (input or printed output) whose text is wider than its box. The served pages get
one extra script, added by this checker's server and never written to the site, that
measures every ``<pre>`` once the page has loaded. Exit status 1 when a block overflows.

``--width 390 --height 844`` measures at a phone's width; ``--screenshot DIR`` also saves
a screenshot of each page. Needs Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

MEASURE = b"""<script>
window.addEventListener("load", () => setTimeout(() => {
  const wide = [];
  for (const pre of document.querySelectorAll("pre")) {
    if (pre.clientWidth === 0) continue;  // hidden (a folded cell)
    if (pre.scrollWidth > pre.clientWidth + 1) {
      wide.push({first: pre.textContent.trim().split("\\n")[0].slice(0, 70),
                 text: pre.scrollWidth, box: pre.clientWidth});
    }
  }
  const pres = [...document.querySelectorAll("pre")].filter(p => p.clientWidth > 0).length;
  document.body.setAttribute("data-widths", JSON.stringify({pres: pres, wide: wide}));
}, 300));
</script>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site; adds the measuring script to every HTML page."""

    def log_message(self, *args: object) -> None:
        """Quiet."""

    def send_head(self):  # type: ignore[override]
        """An HTML file gets the script before </body>; other files pass through."""
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.exists():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", MEASURE + b"</body>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io

        return io.BytesIO(body)


def measure(url: str, width: int, height: int, screenshot: Path | None) -> dict:
    """The page's code blocks wider than their boxes, measured by Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--virtual-time-budget=8000",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    match = re.search(r'data-widths="([^"]*)"', dom)
    if screenshot is not None:
        subprocess.run(
            [*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=120
        )
    if match is None:
        return {"pres": None, "wide": [], "error": "the measuring script did not run"}
    return json.loads(html.unescape(match.group(1)))


def main(argv: list[str] | None = None) -> int:
    """Measure every chapter page; print the blocks that overflow."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--pages", nargs="*", default=None, help="pages (default: chapters/*)")
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("check_widths: no chromium here (apt-get install chromium); nothing checked")
        return 0
    handler = functools.partial(Handler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pages = args.pages or sorted(
        str(p.relative_to(args.site)) for p in (args.site / "chapters").glob("*.html")
    )
    if args.screenshot:
        args.screenshot.mkdir(parents=True, exist_ok=True)
    total = wide = 0
    try:
        for page in pages:
            shot = args.screenshot / (Path(page).stem + ".png") if args.screenshot else None
            url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
            result = measure(url, args.width, args.height, shot)
            if result.get("error"):
                print(f"{page}: {result['error']}")
                wide += 1
                continue
            total += result["pres"]
            wide += len(result["wide"])
            print(f"{page}: {len(result['wide'])} of {result['pres']} code blocks too wide")
            for block in result["wide"]:
                print(f"    {block['text']} px in a {block['box']} px box: {block['first']!r}")
    finally:
        server.shutdown()
    print(f"{wide} of {total} code blocks wider than their box at {args.width}x{args.height}")
    return 1 if wide else 0


if __name__ == "__main__":
    sys.exit(main())
