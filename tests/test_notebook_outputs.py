"""What the notebooks store is what a reader should see: no machine paths, no set-up noise.

nbval compares these outputs on other machines and the book shows them, so a path of the machine
that ran a notebook, a warning about a package the set-up should have installed, or a progress bar
left behind by a model load is a defect of the notebook, not of the reader's machine.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import NOTEBOOK_DIR

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))

# A path of the machine that ran the notebook (its home, its virtual environment, its packages).
MACHINE_PATH = re.compile(r"site-packages|dist-packages|/\.venv/|/root/|/home/[A-Za-z]|/tmp/|/work/")
# Noise from a missing set-up step or from loading: tqdm without ipywidgets, transformers' load bar.
SETUP_NOISE = re.compile(r"TqdmWarning|IProgress not found|Loading weights|Loading checkpoint shards")


def _output_texts(nb: dict):
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            texts = [out.get("text", "")]
            texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/") and k != "text/html"]
            texts += out.get("traceback", [])
            for text in texts:
                yield index, "".join(text) if isinstance(text, list) else str(text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_hold_no_machine_paths_or_setup_noise(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for index, text in _output_texts(nb):
        for pattern in (MACHINE_PATH, SETUP_NOISE):
            match = pattern.search(text)
            if match:
                start = max(0, match.start() - 60)
                problems.append(f"cell {index}: ...{text[start:match.end() + 60]!r}")
    assert not problems, f"{path.name} stores outputs a reader should not see:\n" + "\n".join(problems[:5])
