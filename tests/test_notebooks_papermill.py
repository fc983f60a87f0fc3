"""Every notebook runs to the end with a second parameter set (papermill).

nbval already runs each notebook with its default parameters and compares outputs; this test runs
it again with other parameters (another model by default) to show the story does not hang on one
model. papermill raises on a failing cell, so a notebook's final assert failing fails the test.
A notebook sets its own alternate parameters in `metadata.lensutil.papermill_parameters`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import NOTEBOOK_DIR, notebook_skip_reason

papermill = pytest.importorskip("papermill")

DEFAULT_ALTERNATE = {"model_name": "tiny-llama"}
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))


def alternate_parameters(path: Path) -> dict:
    meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("lensutil", {})
    return meta.get("papermill_parameters", DEFAULT_ALTERNATE)


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter (the project's venv), found before any user kernelspec."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "lensutil-test"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "lensutil (tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield "lensutil-test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_alternate_parameters(path, tmp_path, kernel_name):
    reason = notebook_skip_reason(path)
    if reason:
        pytest.skip(reason)
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=alternate_parameters(path),
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
        execution_timeout=600,
    )
    executed = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
