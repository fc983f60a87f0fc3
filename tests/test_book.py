"""The Jupyter Book builds offline, with warnings as errors, from the notebooks' stored outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        found = shutil.which("jupyter-book")
        if found is None:
            pytest.skip("jupyter-book is not installed (pip install -e '.[test]')")
        jupyter_book = Path(found)
    out = tmp_path_factory.mktemp("book")
    cmd = [str(jupyter_book), "build", str(BOOK), "--path-output", str(out),
           "--builder", "html", "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return out / "_build" / "html"


def test_book_builds_with_every_chapter(built_book):
    assert (built_book / "intro.html").is_file()
    for name in ("01_quickstart", "02_hook_configuration", "03_activation_cache_and_patching"):
        assert (built_book / "notebooks" / f"{name}.html").is_file(), name


def test_quickstart_page_embeds_circuitsvis(built_book):
    page = (built_book / "notebooks" / "01_quickstart.html").read_text(encoding="utf-8")
    # circuitsvis inlines its whole JavaScript bundle when rendered offline: no CDN needed to view.
    assert "var CircuitsVis=" in page
    assert "CircuitsVis.render(" in page
    assert "unpkg.com/circuitsvis" not in page


def test_every_page_wraps_long_output_lines(built_book):
    # book/_static/wrap-output.css (white-space: pre-wrap on outputs), which Jupyter Book links on every page
    assert (built_book / "_static" / "wrap-output.css").is_file()
    for page in ("intro.html", "support_table.html", "notebooks/04_attention_masks_and_padding.html"):
        assert "_static/wrap-output.css" in (built_book / page).read_text(encoding="utf-8"), page


def test_support_table_page_shows_the_generated_table(built_book):
    page = (built_book / "support_table.html").read_text(encoding="utf-8")
    assert "GPT2LMHeadModel" in page and "<table" in page
