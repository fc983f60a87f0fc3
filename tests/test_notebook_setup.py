"""Every notebook's Colab set-up: one project address, an install before any import, silence elsewhere."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

import lensutil.notebook.setup as nbsetup
from lensutil.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def run_install_cell(monkeypatch, *, colab: bool) -> tuple[str, list]:
    """Run the install cell as IPython would (magics turned into calls); return (stdout, magics run)."""
    magics = []

    class FakeIPython:
        def run_line_magic(self, name, line):
            magics.append((name, line))

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    code = TransformerManager().transform_cell(nbsetup.colab_install_cell())
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(code, "<install cell>", "exec"), {"get_ipython": FakeIPython})
    return out.getvalue(), magics


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_is_the_colab_install_cell(path):
    first_code = next(c for c in cells(path) if c["cell_type"] == "code")
    assert first_code is cells(path)[1] or first_code == cells(path)[1]
    assert source(first_code) == nbsetup.colab_install_cell(), f"{path.name}: run python scripts/sync_notebook_urls.py"
    assert not first_code.get("outputs"), f"{path.name}: the install cell printed something outside Colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nothing_imports_lensutil_before_the_install(path):
    before = [source(c) for c in cells(path)[:2] if c["cell_type"] == "code"]
    assert not any(re.search(r"^\s*(import|from)\s+lensutil", s, re.M) for s in before)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_badge_and_install_use_the_project_url(path):
    title = source(cells(path)[0])
    assert nbsetup.colab_badge(path.name) in title.split("\n"), f"{path.name}: run python scripts/sync_notebook_urls.py"
    assert nbsetup.colab_url(path.name).startswith(
        "https://colab.research.google.com/github/" + nbsetup.PROJECT_URL.removeprefix("https://github.com/") + "/")
    # No other address for the project anywhere in the notebook: every Colab link and git install is this one.
    text = path.read_text(encoding="utf-8")
    for link in re.findall(r"colab\.research\.google\.com/github/([\w.\-]+/[\w.\-]+)/", text):
        assert f"https://github.com/{link}" == nbsetup.PROJECT_URL
    for url in re.findall(r"git\+(https://[^\s\"'\\]+)", text):
        assert url == nbsetup.PROJECT_URL


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    printed, magics = run_install_cell(monkeypatch, colab=False)
    assert printed == "" and magics == []


def test_install_cell_pip_installs_the_project_in_colab(monkeypatch):
    printed, magics = run_install_cell(monkeypatch, colab=True)
    assert magics == [("pip", f'install --quiet "{nbsetup.PIP_SPEC}"')]
    assert nbsetup.PIP_SPEC == f"lensutil[notebooks] @ git+{nbsetup.PROJECT_URL}"


def test_install_cell_sees_colab_by_its_environment_variable(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    code = TransformerManager().transform_cell(nbsetup.colab_install_cell())
    magics = []
    ipython = type("FakeIPython", (), {"run_line_magic": lambda self, name, line: magics.append(name)})
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": ipython})
    assert magics == ["pip"] and nbsetup.in_colab()


def test_sync_script_rewrites_badge_and_install_cell_from_project_url(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("sync_notebook_urls", ROOT / "scripts" / "sync_notebook_urls.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    original = NOTEBOOKS[0].read_text(encoding="utf-8")
    assert sync.dumps(json.loads(original)) == original  # the script writes notebooks exactly as nbformat does
    copy = tmp_path / NOTEBOOKS[0].name
    copy.write_text(original, encoding="utf-8")
    monkeypatch.setattr(nbsetup, "PROJECT_URL", "https://github.com/someone-else/lensutil-fork")
    monkeypatch.setattr(nbsetup, "PIP_SPEC", "lensutil[notebooks] @ git+https://github.com/someone-else/lensutil-fork")
    assert sync.main(["--check", str(copy)]) == 1 and copy.read_text(encoding="utf-8") == original
    assert sync.main([str(copy)]) == 0
    new = cells(copy)
    assert "colab.research.google.com/github/someone-else/lensutil-fork/blob/main/notebooks/" in source(new[0])
    assert "git+https://github.com/someone-else/lensutil-fork" in source(new[1])
    old = json.loads(original)["cells"]
    assert [c["source"] for c in new[2:]] == [c["source"] for c in old[2:]]  # nothing else touched
    assert [c.get("outputs") for c in new[2:]] == [c.get("outputs") for c in old[2:]]
    assert sync.main(["--check", str(copy)]) == 0


def test_colab_links_need_a_github_project_url(monkeypatch):
    monkeypatch.setattr(nbsetup, "PROJECT_URL", "https://gitlab.com/lensutil/lensutil")
    with pytest.raises(ConfigError, match="GitHub"):
        nbsetup.colab_badge("01_quickstart.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_open_in_colab_is_a_text_link_that_reads_offline(path):
    # Colab's badge is a remote image: offline (JupyterLab in a workshop room) it showed as a broken icon.
    title = source(cells(path)[0])
    assert "colab-badge.svg" not in title and "![" not in nbsetup.colab_badge(path.name)
