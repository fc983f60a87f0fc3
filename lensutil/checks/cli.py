"""`lensutil doctor`: is this machine, and this model, set up right?

Prints the environment (never a token, only whether one is configured), loads a model, runs
`validate_model_setup` and the HuggingFace comparisons, and prints ✓/✗ per check with the fix and
the notebook that explains each ✗. Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

from ..config import DEFAULT_ATTN_IMPLEMENTATION
from ..errors import LensError
from ..loading import hf_source, zoo
from ..loading.pretrained import from_pretrained, from_pretrained_no_processing
from .compare import compare_with_hf
from .error_table import ErrorTable
from .setup import bound_check, notebook_readiness, validate_model_setup
from .support_table import support_table

# How far from HuggingFace each dtype may be. float32 with no processing computes the same thing in
# the same order with the same kernels on the same weights: exactly 0 (measured on every zoo model;
# tests/test_equivalence.py asserts it). Half precision is judged against HuggingFace in that same dtype: a few units in the last place of a
# logit of ~40 (bfloat16/float16 steps there are 0.25/0.03; measured on smollm2-135m: 0 and 0.11).
LOGIT_BOUND = {"float32": 0.0, "bfloat16": 0.25, "float16": 0.25}
# Weight processing must keep log-probs: within 1e-4 of HuggingFace in float32 (measured 5.3e-5).
# In half precision processing re-rounds the weights, so it is judged against the float32 answer:
# it may cost at most 1.5x what the dtype costs without processing (measured, bfloat16: 1.08x).
LOGPROB_BOUND = {"float32": 1e-4}
HALF_PROCESSING_RATIO = 1.5

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def hf_token_configured() -> bool:
    """Whether a HuggingFace token is set up: env vars or the hub's stored login. Never its value."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - an old or broken huggingface_hub just means "not configured"
        return False


def environment_report() -> list[str]:
    import torch

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return [
        f"python        {platform.python_version()}",
        f"torch         {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"transformers  {_version('transformers')}",
        f"bitsandbytes  {_version('bitsandbytes')}",
        f"lensutil      {_version('lensutil')}",
        f"device        {device}",
        f"HF token      {'configured' if hf_token_configured() else 'not configured'}",
    ]


def doctor(model_name: str, dtype: str) -> int:
    import torch

    print("== environment")
    print("\n".join(environment_report()))
    print(f"\n== {model_name} ({dtype})")
    start = time.perf_counter()
    try:  # HuggingFace in float32 is both the conversion source and the float32 reference
        hf32, tokenizer = hf_source.load_hf(model_name, dtype=torch.float32, attn_implementation=DEFAULT_ATTN_IMPLEMENTATION)
        model = from_pretrained_no_processing(model_name, hf_model=hf32, tokenizer=tokenizer, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
        print(f"✗ loading {model_name}: {type(err).__name__}: {err}")
        print("    fix: use a zoo name (lensutil.loading.zoo.ZOO_NAMES), a local save_pretrained() directory, or see notebooks/01_quickstart.ipynb")
        return 1
    hf32.to(model.cfg.device)
    reference = hf32 if dtype == "float32" else hf_source.load_hf(
        model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)[0].to(model.cfg.device)
    rows = validate_model_setup(model).rows
    raw = compare_with_hf(model, reference, on="logits")
    rows.append(bound_check(
        f"logits equal HuggingFace's in {dtype} (no processing)", raw.max, LOGIT_BOUND[dtype], "max |Δ logit|",
        "Load with from_pretrained_no_processing and float32; run checks.locate_divergence(model, hf_model) to find the first component that differs."))
    processed = from_pretrained(model_name, hf_model=hf32, tokenizer=tokenizer, dtype=dtype)
    table = ErrorTable(model_name, "logprobs")
    table.add(dtype, "none", compare_with_hf(model, reference))
    table.add(dtype, "all", compare_with_hf(processed, reference))
    fix = ("Weight processing should preserve log-probs; compare each option alone with checks.error_table(name) to find "
           "the one that does not, or load with from_pretrained_no_processing.")
    if dtype == "float32":
        rows.append(bound_check("log-probs equal HuggingFace's (all weight processing)", table.rows[1]["max"],
                                       LOGPROB_BOUND[dtype], "max |Δ log-prob|", fix))
    else:  # in half precision both models round; ask whether processing makes the rounding worse
        cost = {o: compare_with_hf(m, hf32).max for o, m in (("none", model), ("all", processed))}
        ratio = cost["all"] / max(cost["none"], 1e-12)
        rows.append(bound_check(
            f"weight processing costs little in {dtype} (vs float32: all {cost['all']:.2g}, none {cost['none']:.2g})",
            ratio, HALF_PROCESSING_RATIO, "ratio", fix + " In half precision prefer float32 for exact comparisons."))
    print("\n".join(str(r) for r in rows))
    print(f"\n== error against HuggingFace ({dtype}, log-probs)")
    print(table)
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed ({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


def default_notebook_dir() -> Path:
    """The project's notebooks/ (beside the lensutil package in a checkout), else ./notebooks."""
    beside = Path(__file__).resolve().parents[2] / "notebooks"  # lensutil/checks/cli.py -> the checkout
    return beside if beside.is_dir() else Path("notebooks")


def doctor_notebooks(notebook_dir: Path) -> int:
    """Which notebooks will run here. Exit 1 if one lacks something installable (a package, a zoo model)."""
    print("== environment")
    print("\n".join(environment_report()))
    print(f"\n== notebooks in {notebook_dir}")
    rows = notebook_readiness(notebook_dir)
    if not rows:
        print(f"✗ no notebooks (NN_name.ipynb) in {notebook_dir}: pass the directory, lensutil doctor --notebooks DIR")
        return 1
    print("\n".join(str(r) for r in rows))
    ready = [r for r in rows if r.passed]
    print(f"\n{len(ready)} of {len(rows)} notebooks will run here")
    return 0 if all(r.passed or r.hardware_only for r in rows) else 1


def zoo_fetch(names: list[str], everything: bool) -> int:
    if not names and not everything:
        print(f"name the models to fetch, or --all. Zoo names: {', '.join(zoo.ZOO_NAMES)}", file=sys.stderr)
        return 2
    try:
        paths = zoo.fetch(list(zoo.ZOO_NAMES) if everything else names)
    except LensError as err:
        print(f"✗ {err}", file=sys.stderr)
        return 1
    print(f"{len(paths)} zoo models ready in {zoo.cache_home()} (copy that directory and set LENSUTIL_CACHE to use it elsewhere)")
    return 0


def zoo_list() -> int:
    entries = zoo.cached_entries()
    print(f"zoo cache: {zoo.cache_home()} (set LENSUTIL_CACHE to move it)")
    for name in zoo.ZOO_NAMES:
        path, size = entries.get(name, (None, 0))
        print(f"  {name:14} {f'{size / 1e6:8.1f} MB' if path else '     not cached'}")
    total = sum(size for _, size in entries.values())
    print(f"{len(entries)} of {len(zoo.ZOO_NAMES)} cached, {total / 1e6:.1f} MB; fetch the rest with `lensutil zoo fetch --all`")
    return 0


def architectures(families: list[str], markdown: bool, quantization: bool) -> int:
    """`lensutil architectures`: the support table, measured now. Exit 1 if a row is not exact."""
    try:
        table = support_table(families or None, quantization=quantization)
    except LensError as err:
        print(f"✗ {err}", file=sys.stderr)
        return 2
    print(table.to_markdown() if markdown else table)
    return 0 if all(r.exact for r in table.rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lensutil", description="lensutil: a troubleshooting kit for hooked transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser("doctor", help="check the environment and a model against HuggingFace")
    doc.add_argument("--model", default="smollm2-135m", help="zoo name, local directory or hub name (default: smollm2-135m)")
    doc.add_argument("--dtype", default="float32", choices=sorted(LOGIT_BOUND), help="dtype to check (default: float32)")
    doc.add_argument("--notebooks", nargs="?", const=True, default=None, metavar="DIR",
                     help="instead of a model, say which notebooks will run here and why not (default DIR: the project's notebooks/)")
    zoo_cmd = sub.add_parser("zoo", help="the offline model zoo: build it ahead of time, see what is cached")
    zoo_sub = zoo_cmd.add_subparsers(dest="zoo_command", required=True)
    fetch = zoo_sub.add_parser("fetch", help="build zoo models into the cache now, with a progress bar")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="zoo names (see `lensutil zoo list`)")
    fetch.add_argument("--all", action="store_true", help="every zoo model")
    zoo_sub.add_parser("list", help="what is cached, and its size")
    arch = sub.add_parser("architectures", help="the support table: each family's small model measured against HuggingFace")
    arch.add_argument("families", nargs="*", metavar="FAMILY", help="family or zoo names (default: every family)")
    arch.add_argument("--markdown", action="store_true", help="print a markdown table (as docs/support_table.md)")
    arch.add_argument("--no-quantization", dest="quantization", action="store_false",
                      help="skip the bitsandbytes column (the one that depends on this machine)")
    args = parser.parse_args(argv)
    if args.command == "architectures":
        return architectures(args.families, args.markdown, args.quantization)
    if args.command == "zoo":
        return zoo_fetch(args.names, args.all) if args.zoo_command == "fetch" else zoo_list()
    if args.notebooks is not None:
        return doctor_notebooks(default_notebook_dir() if args.notebooks is True else Path(args.notebooks))
    return doctor(args.model, args.dtype)


if __name__ == "__main__":
    sys.exit(main())
