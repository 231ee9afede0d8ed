"""The crawl path imports and extracts on the dependency set that was installed.

An upstream release once broke this with no change of ours: lxml 6.2 stopped
providing the `html_clean` extra that jusText (under trafilatura) imports,
so `import trafilatura` failed on every fresh install.  Checked in a fresh
interpreter, so nothing this test process imported earlier can hide it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

TIMEOUT_S = 120.0  # a hang guard only

_EXTRACT_A_PAGE = """
import lxml.html.clean  # what jusText needs, from lxml_html_clean
from engine.crawl.extraction import extract_page

article = " ".join(["The river rose through the night and the town kept watch."] * 12)
html = (
    "<html lang='en'><head><title>Flood</title></head><body>"
    "<nav><a href='/a'>Home</a></nav>"
    f"<article><h1>Flood</h1><p>{article}</p></article>"
    "<footer>Copyright</footer></body></html>"
).encode()
page = extract_page(html, "https://news.example/", "text/html; charset=utf-8")
assert "The river rose through the night" in page.text, page.text
assert page.title == "Flood", page.title
print("extracted", page.n_chars)
"""


def test_the_crawl_path_imports_and_extracts_in_a_fresh_interpreter() -> None:
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_EXTRACT_A_PAGE)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("extracted ")
