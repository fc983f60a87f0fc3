"""The generated parts of the docs are up to date, and what a reader meets first works as written:
the symptom map (docs/symptoms.yaml -> README.md, book/intro.md), `make lab`'s flags, the book's CSS."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
render_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)


@pytest.fixture(scope="module")
def symptoms() -> dict:
    return render_docs.load_symptoms()


def test_readme_notebook_table_is_rendered_from_the_symptom_source(symptoms):
    assert render_docs.generated(README(), "symptom-map") == render_docs.readme_notebook_table(symptoms), (
        "README.md's notebook table is stale: run `make symptom-map`")


def test_book_intro_symptom_map_is_rendered_from_the_symptom_source(symptoms):
    intro = (ROOT / "book" / "intro.md").read_text()
    assert render_docs.generated(intro, "symptom-map") == render_docs.intro_symptom_table(symptoms), (
        "book/intro.md's symptom map is stale: run `make symptom-map`")


def test_every_notebook_has_an_entry_and_every_entry_a_notebook(symptoms):
    shipped = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    listed = {nb["file"] for nb in symptoms["notebooks"].values()}
    assert shipped - listed == set(), f"notebooks with no entry in docs/symptoms.yaml: {sorted(shipped - listed)}"
    assert listed - shipped == set(), f"docs/symptoms.yaml names notebooks that are not there: {sorted(listed - shipped)}"
    for row in symptoms["symptoms"]:
        assert set(row["where"]) <= set(symptoms["notebooks"]), row
        assert row["where"] or row.get("note"), f"a symptom with neither a notebook nor a note: {row['seen']}"


def test_every_symptoms_item_maps_to_a_notebook(symptoms):
    covered = {row["item"] for row in symptoms["symptoms"] if row["where"]}
    assert set(range(1, 20)) - covered == set(), f"SYMPTOMS.md items with no notebook: {sorted(set(range(1, 20)) - covered)}"


@pytest.mark.parametrize("message", [
    "KeyError: 'blocks.0.attn.hook_attn'",  # 01
    "401", "Invalid credentials", "Repository Not Found", "no network",  # 09
    "Weights only load failed",  # 10
    "unexpected keyword argument",  # 12
])
def test_the_symptom_map_lists_the_messages_readers_search_for(message):
    assert message in render_docs.generated((ROOT / "book" / "intro.md").read_text(), "symptom-map")


def test_the_symptom_map_says_where_a_newcomer_starts():
    for text in (README(), (ROOT / "book" / "intro.md").read_text()):
        assert "Start with [01 Quickstart](notebooks/01_quickstart.ipynb)" in render_docs.generated(text, "symptom-map")


def test_no_run_time_is_claimed_that_was_not_measured():
    for path in (ROOT / "README.md", ROOT / "book" / "intro.md", ROOT / "book" / "running.md"):
        assert not re.search(r"under a minute|in a minute", path.read_text(), re.I), path


def test_readme_says_how_to_reach_the_lensutil_command():
    text = README()
    assert ".venv/bin/lensutil" in text and "source .venv/bin/activate" in text
    first = text[text.index("```bash"):]
    assert "make lab" in first[: first.index("```", 3)], "make lab is not among the first commands"


def test_no_remote_badge_image_in_the_readme_or_book_pages():
    for path in (ROOT / "README.md", *(ROOT / "book").glob("*.md")):
        assert "colab-badge.svg" not in path.read_text(), f"{path}: a remote image shows broken offline"


def README() -> str:
    return (ROOT / "README.md").read_text()


# ---- make lab ------------------------------------------------------------------------------------


def _make_lab_commands() -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n prints the commands without running them; the install step may print too (no .venv here).
    out = subprocess.run(["make", "-n", "-s", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out


def test_make_lab_trusts_the_shipped_notebooks():
    assert re.search(r"jupyter trust notebooks/\*\.ipynb", _make_lab_commands())


def test_make_lab_switches_off_the_news_popup_as_jupyterlab_reads_it(tmp_path):
    from jupyterlab_server.settings_utils import get_settings

    match = re.search(r"--LabApp\.app_settings_dir=(\S+)", _make_lab_commands())
    assert match, "make lab passes no app_settings_dir"
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    if not schemas.is_dir():
        pytest.skip("JupyterLab's schemas are not installed in this environment")
    plugin = "@jupyterlab/apputils-extension:notification"
    # What JupyterLab's settings API serves: the schema with overrides.json's values as its defaults.
    served, _ = get_settings(match.group(1), str(schemas), str(tmp_path), schema_name=plugin)
    assert served["schema"]["properties"]["fetchNews"]["default"] == "false"
    assert served["schema"]["properties"]["checkForUpdates"]["default"] is False
    # and without the overrides JupyterLab would ask (the pop-up)
    bare, _ = get_settings(str(tmp_path / "none"), str(schemas), str(tmp_path), schema_name=plugin)
    assert bare["schema"]["properties"]["fetchNews"]["default"] == "none"


# ---- the book ------------------------------------------------------------------------------------


def test_book_css_wraps_long_output_lines():
    css = (ROOT / "book" / "_static" / "wrap-output.css").read_text()
    rule = re.search(r"div\.cell_output pre[^{]*\{([^}]*)\}", css)
    assert rule and "white-space: pre-wrap" in rule.group(1) and "overflow-wrap: anywhere" in rule.group(1)


def test_overrides_file_is_valid_json():
    json.loads((ROOT / "jupyter" / "lab-settings" / "overrides.json").read_text())
