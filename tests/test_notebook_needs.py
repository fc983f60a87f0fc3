"""Each notebook declares what it needs (metadata lensutil.zoo and lensutil.packages), and the
declaration matches its code: the zoo names in its string literals (plus, optionally, the model of
its papermill re-run) and the packages it imports beyond what lensutil (and the Jupyter kernel)
already install. `lensutil doctor --notebooks` and
workshop preparation (`lensutil zoo fetch`) trust these lists."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import pytest

from lensutil.loading.zoo import ZOO_NAMES

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))
# lensutil modules that import an optional package for the notebook (lazily, so no scan finds it)
IMPLIED = {"lensutil.notebook.widgets": "ipywidgets"}


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _closure(dist: str, seen: set[str]) -> set[str]:
    """`dist` and everything it requires (not its extras), by distribution name."""
    if _norm(dist) in seen:
        return seen
    seen.add(_norm(dist))
    try:
        requirements = md.requires(dist) or []
    except md.PackageNotFoundError:
        return seen
    for req in requirements:
        if "extra ==" not in req:
            _closure(re.match(r"[A-Za-z0-9_.\-]+", req).group(0), seen)
    return seen


def _provided_imports() -> set[str]:
    """Import names that come with lensutil's own dependencies and the kernel (ipykernel, IPython)."""
    dists = _closure("lensutil", set()) | _closure("ipykernel", set())
    return {name for name, owners in md.packages_distributions().items() if any(_norm(d) in dists for d in owners)}


def _code(nb: dict) -> list[str]:
    # IPython magics (%pip) and shell lines (!ls) are not Python: keep their indentation, drop the rest.
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return ["\n".join(re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in src.splitlines()) for src in cells]


def used(nb: dict) -> tuple[set[str], set[str]]:
    """(zoo names used as string literals, modules imported) in a notebook's code cells."""
    names, modules = set(), set()
    for src in _code(nb):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Constant) and node.value in ZOO_NAMES:
                names.add(node.value)
    return names, modules


def needed_packages(modules: set[str], provided: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    extra = {t for t in tops if t not in sys.stdlib_module_names and t not in provided and t != "lensutil"}
    return extra | {pkg for mod, pkg in IMPLIED.items() if any(m == mod or m.startswith(mod + ".") for m in modules)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_declares_the_zoo_models_and_packages_its_code_uses(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    meta = nb["metadata"].get("lensutil", {})
    assert "zoo" in meta and "packages" in meta, (
        f"{path.name}: add metadata lensutil.zoo (zoo models it loads) and lensutil.packages (imports beyond lensutil's "
        "dependencies), lists, [] for none; `lensutil doctor --notebooks` reads them")
    names, modules = used(nb)
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    if "use_as_transformer_lens()" in code:  # `import transformer_lens` is then lensutil.transformer_lens
        modules = {m for m in modules if m.split(".")[0] != "transformer_lens"}
    # The papermill re-run (metadata lensutil.papermill_parameters, by default tiny-llama) may be declared too.
    alternate = set(meta.get("papermill_parameters", {"model_name": "tiny-llama"}).values()) & set(ZOO_NAMES)
    declared = set(meta["zoo"])
    assert names <= declared <= names | alternate, (
        f"{path.name}: lensutil.zoo is {meta['zoo']}, its code names {sorted(names)} (papermill's re-run: {sorted(alternate)})")
    # Every package it needs is declared; a declared one is one it imports (it may come with the kernel anyway).
    packages = needed_packages(modules, _provided_imports())
    imported = {m.split(".")[0] for m in modules} | set(IMPLIED.values())
    assert packages <= set(meta["packages"]) <= imported, (
        f"{path.name}: lensutil.packages is {meta['packages']}; its code imports {sorted(packages)} beyond lensutil's "
        f"dependencies (and may declare only what it imports: {sorted(imported - {'lensutil'})})")


def test_the_scan_finds_what_a_notebook_uses():
    cell = {"cell_type": "code", "source": [
        "import os\n", "if False:\n", "    %pip install x\n", "import circuitsvis as cv\n", "from lensutil.notebook.widgets import HookExplorer\n",
        "import torch, matplotlib.pyplot as plt\n", "m = HookedTransformer.from_pretrained('tiny-gpt2')  # not 'tiny-llama'\n",
        "print(f'{model_name} is not tiny-bert')\n"]}
    names, modules = used({"cells": [cell]})
    assert names == {"tiny-gpt2"}  # a comment or a longer string is not a use
    assert needed_packages(modules, _provided_imports()) == {"circuitsvis", "ipywidgets", "matplotlib"}
