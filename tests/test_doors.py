"""The model's methods whose work is done in loading and analysis (lensutil/model/doors.py) are open in a
fresh process after nothing but `import lensutil`, and each door names the function that does its work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LENSUTIL = Path(__file__).resolve().parent.parent / "lensutil"


def _door_names(call: str) -> set[str]:
    """Every door name passed to doors.<call>(...) anywhere in the package."""
    names = set()
    for path in LENSUTIL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == call
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "doors" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_every_door_a_model_method_calls_is_provided():
    called, provided = _door_names("call"), _door_names("provide")
    assert called and called <= provided, f"doors called but never provided: {sorted(called - provided)}"


def test_import_lensutil_alone_opens_every_door():
    code = "import lensutil\nfrom lensutil.model import doors\nprint(sorted(doors._DOORS))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    opened = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert _door_names("call") <= opened, f"not open after `import lensutil`: {sorted(_door_names('call') - opened)}"
