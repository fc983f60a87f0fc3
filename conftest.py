"""Shared pytest set-up.

Notebook part: `make test` runs `pytest tests notebooks --nbval` in one process, and a user may
type `pytest --nbval notebooks/` (or name one notebook). Both must compare outputs the same way, so
the rules live here, not in Makefile flags: the sanitiser (notebooks/sanitize.cfg, unless
--nbval-sanitize-with names another), the kernel of this Python (unless --nbval-kernel-name names
one), the output types nbval does not compare, and the skips for notebooks whose needs this machine
lacks. nbval's hooks must reach the notebooks wherever they are collected from, so they are
registered as a plugin object (global, not limited to this directory) when pytest starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
SANITIZE_FILE = NOTEBOOK_DIR / "sanitize.cfg"

# Outputs nbval should not compare: rich HTML/JS (circuitsvis embeds a random element id and a
# 1.3 MB script), widget state, and stderr (warnings, progress bars).
SKIP_COMPARE = ("text/html", "application/javascript", "application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json", "stderr")


def notebook_skip_reason(path: Path) -> str | None:
    """Why a notebook cannot run here (from `metadata.lensutil.requires`), or None if it can."""
    from lensutil.notebook.setup import _has_gpu, _has_internet

    needs = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("lensutil", {}).get("requires", [])
    checks = {"gpu": _has_gpu, "internet": _has_internet}
    missing = [need for need in needs if not checks.get(need, lambda: False)()]
    return f"{path.name} needs {', '.join(missing)}, which this machine lacks" if missing else None


class _NbvalSetup:
    def pytest_collectstart(self, collector):
        # nbval's documented way to ignore output types: extend the notebook collector's skip_compare.
        if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
            collector.skip_compare = tuple(collector.skip_compare) + SKIP_COMPARE

    def pytest_collection_modifyitems(self, items):
        reasons: dict[Path, str | None] = {}
        for item in items:
            if item.path.suffix != ".ipynb":
                continue
            if item.path not in reasons:
                reasons[item.path] = notebook_skip_reason(item.path)
            if reasons[item.path]:
                item.add_marker(pytest.mark.skip(reason=reasons[item.path]))


def pytest_configure(config):
    option = config.option
    if getattr(option, "nbval", False) or getattr(option, "nbval_lax", False):
        if getattr(option, "nbval_sanitize_with", None) is None and not getattr(option, "sanitize_with", None):
            option.nbval_sanitize_with = str(SANITIZE_FILE)
        if not getattr(option, "nbval_kernel_name", None) and not getattr(option, "current_env", False):
            option.nbval_current_env = True  # the kernel of the Python running pytest (the project's venv)
    if not config.pluginmanager.has_plugin("lensutil-nbval"):
        config.pluginmanager.register(_NbvalSetup(), "lensutil-nbval")
