"""`lensutil zoo fetch|list` and `lensutil doctor --notebooks` (workshops: everything ready before the Wi-Fi fails)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensutil.checks import cli
from lensutil.notebook import setup as notebook
from lensutil.loading import zoo

ROOT = Path(__file__).resolve().parent.parent


def _fake_builder(out: Path) -> None:
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"\0" * 2_000_000)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path / "zoo"))
    monkeypatch.setitem(zoo._BUILDERS, "tiny-gpt2", _fake_builder)  # a stand-in: no real build in a unit test
    return tmp_path / "zoo"


def test_zoo_fetch_builds_into_the_cache_with_a_progress_bar(empty_cache, capsys):
    assert cli.main(["zoo", "fetch", "tiny-gpt2"]) == 0
    out, err = capsys.readouterr()
    assert (empty_cache / "tiny-gpt2-v1" / "config.json").is_file()
    assert "1 zoo models ready in" in out and str(empty_cache) in out
    assert "zoo: 100%" in err and "1/1" in err  # tqdm's bar (a widget in a notebook, text here)


def test_zoo_list_shows_what_is_cached_and_its_size(empty_cache, capsys):
    zoo.fetch(["tiny-gpt2"], progress=False)
    assert cli.main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2           2.0 MB" in out
    assert "smollm2-135m        not cached" in out
    assert f"1 of {len(zoo.ZOO_NAMES)} cached, 2.0 MB" in out


def test_zoo_fetch_refuses_unknown_names_before_building_anything(empty_cache, capsys):
    assert cli.main(["zoo", "fetch", "tiny-gpt2", "tiny-gtp2"]) == 1
    err = capsys.readouterr().err
    assert "not zoo models: 'tiny-gtp2'" in err and "tiny-gpt2" in err.split("Zoo names:")[1]
    assert not (empty_cache / "tiny-gpt2-v1").exists()
    assert cli.main(["zoo", "fetch"]) == 2  # neither names nor --all


def _notebook(directory: Path, name: str, **lensutil_meta) -> None:
    nb = {"cells": [], "metadata": {"lensutil": lensutil_meta}, "nbformat": 4, "nbformat_minor": 5}
    (directory / f"{name}.ipynb").write_text(json.dumps(nb))


def test_doctor_notebooks_says_which_will_run_and_why_not(empty_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebook, "_has_gpu", lambda: False)
    zoo.fetch(["tiny-gpt2"], progress=False)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs, "01_fine", requires=[], zoo=["tiny-gpt2"], packages=["numpy"])
    _notebook(nbs, "02_gpu", requires=["gpu"], zoo=[], packages=[])
    assert cli.main(["doctor", "--notebooks", str(nbs)]) == 0  # a missing GPU is no fault of the set-up
    out = capsys.readouterr().out
    assert "✓ 01_fine: will run (tiny-gpt2)" in out
    assert "✗ 02_gpu: will not run here: needs a CUDA GPU" in out and "Runtime > Change runtime type > GPU" in out
    assert "1 of 2 notebooks will run here" in out

    _notebook(nbs, "03_offline", requires=[], zoo=["smollm2-135m"], packages=["no_such_package_here"])
    _notebook(nbs, "04_undeclared", requires=[])
    assert cli.main(["doctor", "--notebooks", str(nbs)]) == 1
    out = capsys.readouterr().out
    assert "✗ 03_offline: will not run here: zoo models not cached: smollm2-135m; packages not installed: no_such_package_here" in out
    assert "fix: lensutil zoo fetch smollm2-135m" in out and "pip install no_such_package_here" in out
    assert "✗ 04_undeclared: will not run here: its metadata does not declare lensutil.zoo or lensutil.packages" in out


def test_doctor_notebooks_reads_the_projects_notebooks_by_default(capsys, monkeypatch):
    monkeypatch.setattr(notebook, "_has_internet", lambda: False)  # no network probe in a unit test
    zoo.resolve("smollm2-135m")  # cached already wherever the suite has run (built once if not)
    cli.main(["doctor", "--notebooks"])
    out = capsys.readouterr().out
    assert f"== notebooks in {ROOT / 'notebooks'}" in out
    assert "01_quickstart: will run (smollm2-135m)" in out  # this machine runs the suite, so it has the zoo
