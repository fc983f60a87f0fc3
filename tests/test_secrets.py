"""No token-shaped string in the repository, its notebooks or their stored (executed) outputs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A HuggingFace user access token is "hf_" and 34 letters and digits; anything from 30 on is suspect.
TOKEN_SHAPED = re.compile(r"hf_[A-Za-z0-9]{30,}")
AUTH_HEADER = re.compile(r"Authorization['\"]?\s*[:=]\s*['\"]?Bearer\s+[A-Za-z0-9_\-.]{8,}", re.IGNORECASE)


def repository_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore (what a commit could pick up)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]


def findings(paths) -> list[str]:
    found = []
    for path in paths:
        if path.stat().st_size > 20_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for pattern in (TOKEN_SHAPED, AUTH_HEADER):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {match.group()[:8]}...")
    return found


def test_no_token_shaped_string_in_the_repository_or_notebook_outputs():
    files = repository_files()
    assert any(p.suffix == ".ipynb" for p in files)  # the stored notebooks, outputs included, are scanned
    assert findings(files) == []


def test_the_scan_finds_a_token_and_an_authorization_header(tmp_path):
    import secrets

    leaky = tmp_path / "leaky.ipynb"
    leaky.write_text('{"outputs": ["hf_' + secrets.token_hex(17) + '"], "headers": "Authorization: Bearer '
                     + secrets.token_hex(10) + '"}')
    assert len(findings([leaky])) == 2
