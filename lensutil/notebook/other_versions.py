"""Other TransformerLens releases, side by side with this one, for the version-walls notebook (13).

TransformerLens 4.0 removed ``HookedTransformer``; a notebook about that wall should show the real
message, from the real release, without touching the user's environment. ``transformer_lens_4()``
installs TransformerLens 4.3.0 (the newest on PyPI when this was written, 2026-10) with only the
packages it needs at import time that the project's environment lacks, pinned, into a folder of
lensutil's cache; ``run_with_transformer_lens_4(code)`` runs Python code in a subprocess that sees it
first on its path. Nothing is installed into the running interpreter, and lensutil's opt-in
(``lensutil.transformer_lens``) is never active in that subprocess.

``requirements_of_transformer_lens_2()`` reads what TransformerLens 2.18.0's wheel declares
(its METADATA), which is what pinning 2.x pins with it.

The folder is built once (about 280 MB: pyarrow and pandas, which ``datasets`` needs, are most of it)
in a temporary directory beside its final place and moved there whole, as the zoo builds its entries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from ..errors import ZooError
from ..loading.zoo import cache_home

TRANSFORMER_LENS_4 = "transformer-lens==4.3.0"
TRANSFORMER_LENS_2 = "transformer-lens==2.18.0"
# What `import transformer_lens` (4.3.0) needs beyond this project's environment (found by importing
# it with one package more each time), at the versions that were current on 2026-12-07.
_IMPORT_NEEDS = (
    "einops==0.8.2", "fancy-einsum==0.0.3", "beartype==0.23.1", "typeguard==4.6.1", "datasets==5.2.0",
    "dill==0.4.1", "multiprocess==0.70.19", "pandas==3.1.1", "pyarrow==26.0.1", "xxhash==4.1.0",
)  # fmt: skip
_ADVICE = "This needs PyPI once (about 280 MB); on an offline machine, skip this section of the notebook."


def _pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ZooError(f"pip {' '.join(args[:2])} failed ({e}). {_ADVICE}") from e
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ZooError(f"pip {' '.join(args[:2])} failed: {last[0]}. {_ADVICE}")


def _built_once(name: str, build) -> Path:
    """cache_home()/name, made by build(tmp_dir) in a temporary directory and moved into place whole."""
    home = cache_home()
    entry = home / name
    if (entry / ".complete").is_file():
        return entry
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=home))
    try:
        build(tmp)
        (tmp / ".complete").write_text("")
        os.chmod(tmp, 0o755)
        if entry.exists():  # a half-deleted entry, or another process won the race
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never a half-installed folder
        raise
    return entry


def transformer_lens_4() -> Path:
    """A folder holding TransformerLens 4.3.0 and what it imports that this environment lacks."""

    def build(tmp: Path) -> None:
        # --no-deps with an explicit list: pip must not replace torch or transformers with other builds.
        _pip(["install", "--no-deps", "--target", str(tmp), TRANSFORMER_LENS_4, *_IMPORT_NEEDS])

    return _built_once("transformer-lens-4.3.0-v1", build)


def run_with_transformer_lens_4(code: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose `import transformer_lens` is the real 4.3.0 release."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(transformer_lens_4())
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def requirements_of_transformer_lens_2() -> list[str]:
    """The Requires-Dist lines of TransformerLens 2.18.0's wheel (its METADATA, downloaded once)."""

    def build(tmp: Path) -> None:
        _pip(["download", "--no-deps", "-d", str(tmp), TRANSFORMER_LENS_2])
        (wheel,) = tmp.glob("transformer_lens-2.18.0-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (tmp / "METADATA").write_bytes(zf.read("transformer_lens-2.18.0.dist-info/METADATA"))
        wheel.unlink()

    folder = _built_once("transformer-lens-2.18.0-metadata-v1", build)
    meta = Parser().parsestr((folder / "METADATA").read_text())
    return meta.get_all("Requires-Dist") or []
