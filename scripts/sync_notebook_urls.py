"""Write the project's address (lensutil.notebook.setup.PROJECT_URL) into every notebook's set-up cells.

Touches two things in each notebooks/NN_*.ipynb and nothing else: the "Open in Colab" badge line of
the first (markdown) cell, and the Colab install cell (code cell index 1). Outputs of other cells,
metadata and formatting are left as they are, so the notebooks need not be re-executed.

    python scripts/sync_notebook_urls.py           rewrite the notebooks that are out of date
    python scripts/sync_notebook_urls.py --check   only report them (exit status 1 if any)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lensutil.notebook.setup import COLAB_LINK_MARK, colab_badge, colab_install_cell  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"
INSTALL_CELL = 1  # index of the Colab install cell: right after the title cell


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)  # nbformat's on-disk form of a cell's source


def synced(nb: dict, filename: str) -> dict:
    """A copy of notebook `nb` (parsed JSON) with its badge line and install cell up to date."""
    nb = json.loads(json.dumps(nb))
    title, install = nb["cells"][0], nb["cells"][INSTALL_CELL]
    if title["cell_type"] != "markdown" or install["cell_type"] != "code":
        raise SystemExit(f"{filename}: expected a markdown title cell, then the install code cell")
    lines = "".join(title["source"]).split("\n")
    badges = [i for i, line in enumerate(lines) if COLAB_LINK_MARK in line]
    if len(badges) != 1:
        raise SystemExit(f"{filename}: expected one Colab badge line in the title cell, found {len(badges)}")
    lines[badges[0]] = colab_badge(filename)
    title["source"] = _lines("\n".join(lines))
    if "".join(install["source"]) != colab_install_cell():
        install["source"] = _lines(colab_install_cell())
        install["outputs"] = []  # outside Colab the cell prints nothing
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"  # as nbformat writes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date notebooks, change nothing")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9]*.ipynb")
    args = parser.parse_args(argv)
    stale = []
    for path in args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb")):
        text = path.read_text(encoding="utf-8")
        new = dumps(synced(json.loads(text), path.name))
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "out of date" if args.check else "updated"
    print("\n".join(f"{verb}: {p}" for p in stale) or "all notebooks up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
