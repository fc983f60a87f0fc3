"""lensutil vs HuggingFace on the same machine, the same weights and the same thread count.

Run by hand (never part of the test suite):

    .venv/bin/python benchmarks/bench_vs_hf.py [--model smollm2-135m gemma3-270m] [--repeats 7]

Each model named (default: SmolLM2-135M and Gemma 3 270M, the zoo's two real checkpoints; Gemma 3's
weights are de-quantised from Q4_K_M, lensutil/loading/zoo_gemma3.py) gets the same rows, one table.

Four measurements, each against two HuggingFace references (its default attention
implementation, "sdpa" in transformers 5, and "eager"), each timed against lensutil in the same
attention mode (from_pretrained(..., attn_implementation=...); run_with_cache always writes the
pattern out, so it is eager in both):

1. forward, batch x seq tokens:             lensutil model(tokens)  vs hf_model(tokens)       goal <= 1.05
2. run_with_cache (every hook) vs HF forward                                                  goal <= 1.25
3. greedy generation, one prompt, tokens/s:  model.generate(...)    vs hf_model.generate(...)  goal >= 1.0
4. greedy generation, 8 left-padded prompts of mixed length, tokens/s                          goal >= 1.0

Timings are medians over --repeats runs after warm-up runs, all under torch.inference_mode(),
with lensutil and HF runs interleaved so that noise from other processes hits both alike.
Ratios are always lensutil / HF for times and lensutil / HF for tokens/s (so: time ratios want
to be small, throughput ratios large). `--profile` prints where the time goes in each model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lensutil.loading import hf_source, pretrained  # noqa: E402
from lensutil import release_freed_memory  # noqa: E402
from lensutil.analysis.allocator import rss_bytes as _rss_bytes  # noqa: E402
from lensutil.text.tokens import tokenize  # noqa: E402

BATCH_PROMPTS = [  # 8 prompts of mixed length for the batched-generation measurement
    "The capital of France is",
    "Once upon a time, in a small village at the edge of a dark forest, there lived",
    "def fibonacci(n):",
    "Water boils at",
    "The three most important ideas in the theory of evolution are natural selection,",
    "My favourite colour is",
    "In 1969, the first humans to walk on the Moon were",
    "Hi",
]
SOLO_PROMPT = "The quick brown fox jumps over the lazy dog. Then it"


# ---- measuring ----------------------------------------------------------------------------------


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time of each function; one run of each per round, so drift hits all alike."""
    print(f"  timing {', '.join(fns)} ...", file=sys.stderr, flush=True)
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_rss_delta(fn: Callable[[], object]) -> int | None:
    """Peak resident memory above the starting level while fn runs (sampled every ~1 ms; Linux only)."""
    if not os.path.exists("/proc/self/statm"):
        return None
    release_freed_memory()  # kept free memory would hide a second run's growth: hand it back first
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with torch.inference_mode():
        result = fn()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    del result
    return peak[0] - base


# ---- setting up -------------------------------------------------------------------------------


def load_models(name: str, processed: bool):
    from transformers import AutoModelForCausalLM

    load = pretrained.from_pretrained if processed else pretrained.from_pretrained_no_processing
    hf_eager, tokenizer = hf_source.load_hf(name)  # eager attention
    hf_default = AutoModelForCausalLM.from_pretrained(hf_source.resolve_source(name), dtype=torch.float32).eval()
    default = hf_default.config._attn_implementation
    # Like against like: each HF attention implementation is timed against lensutil's same mode.
    hfs = {f"HF {default}": hf_default, "HF eager": hf_eager}
    ours = {f"HF {default}": load(name, device="cpu", dtype=torch.float32, attn_implementation=default),
            "HF eager": load(name, device="cpu", dtype=torch.float32, attn_implementation="eager")}
    return ours, hfs, tokenizer


def check_same_logits(models: dict, hfs: dict, tokens: torch.Tensor) -> dict[str, float]:
    with torch.inference_mode():
        return {name: (models[name](tokens) - hf(tokens).logits).abs().max().item() for name, hf in hfs.items()}


def machine_report(args) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join([
        f"machine      : {platform.machine()} {cpu}; {os.cpu_count()} cores, {usable} usable by this process",
        f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op (same for both)",
        f"versions     : python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"models       : {args.model if isinstance(args.model, str) else ', '.join(args.model)}, float32, cpu, {'processed' if args.processed else 'no weight processing'}; "
        f"median of {args.repeats} runs after {args.warmup} warm-up",
    ])


# ---- the table ----------------------------------------------------------------------------------


def fmt_row(cells, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def print_table(rows: list[tuple]) -> None:
    header = ("model", "measurement", "reference", "lensutil", "HF", "ratio", "goal", "met?")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(fmt_row(header, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for row in rows:
        print(fmt_row(row, widths))


def time_row(label, ref, ours: float, theirs: float, goal: float) -> tuple:
    ratio = ours / theirs
    return (label, ref, f"{ours * 1e3:.1f} ms", f"{theirs * 1e3:.1f} ms", f"{ratio:.3f}", f"<= {goal}", "yes" if ratio <= goal else "NO")


def rate_row(label, ref, ours: float, theirs: float, goal: float) -> tuple:
    ratio = ours / theirs
    return (label, ref, f"{ours:.1f} tok/s", f"{theirs:.1f} tok/s", f"{ratio:.3f}", f">= {goal}", "yes" if ratio >= goal else "NO")


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["smollm2-135m", "gemma3-270m"], help="one or more models (zoo names, directories)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's choice)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--processed", action="store_true", help="lensutil with weight processing (default: none, same weights as HF)")
    p.add_argument("--profile", action="store_true", help="also print the top operators of each forward (torch.profiler)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(machine_report(args))
    rows: list[tuple] = []
    for name in args.model:
        print(f"\n== {name}")
        rows += [(name, *row) for row in measure(name, args)]
    print()
    print_table(rows)


def measure(name: str, args) -> list[tuple]:
    """The four measurements on one model (their rows), after printing its logit, generation and memory checks."""
    torch.manual_seed(0)  # the same random tokens for a model whatever ran before it
    models, hfs, tokenizer = load_models(name, args.processed)
    model = models["HF eager"]  # the default mode, used for everything not timed per mode
    tokens = torch.randint(100, model.cfg.d_vocab, (args.batch, args.seq))
    diffs = check_same_logits(models, hfs, tokens)
    print("max |logit diff| (lensutil in the same attention mode) vs " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items()))
    print()
    rows: list[tuple] = []
    n_new = args.new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # 1 + 2: forward and run_with_cache, against each HF forward.
    fns = {f"lens {name}": (lambda m=m: m(tokens)) for name, m in models.items()}
    fns |= {"run_with_cache": lambda: model.run_with_cache(tokens)}
    fns |= {name: (lambda hf=hf: hf(tokens)) for name, hf in hfs.items()}
    t = interleaved_medians(fns, args.repeats, args.warmup)
    shape = f"{args.batch}x{args.seq}"
    for name in hfs:
        rows.append(time_row(f"1 forward {shape}", name, t[f"lens {name}"], t[name], 1.05))
    for name in hfs:
        rows.append(time_row(f"2 run_with_cache {shape}", name, t["run_with_cache"], t[name], 1.25))

    # 3: greedy generation, one prompt.
    solo = model.to_tokens(SOLO_PROMPT)
    solo_mask = torch.ones_like(solo)
    gen_kw = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=pad)
    fns = {f"lens {name}": (lambda m=m: m.generate(solo, max_new_tokens=n_new, do_sample=False, stop_at_eos=False))
           for name, m in models.items()}
    fns |= {name: (lambda hf=hf: hf.generate(solo, attention_mask=solo_mask, **gen_kw)) for name, hf in hfs.items()}
    t = interleaved_medians(fns, args.repeats, 1)
    for name in hfs:
        rows.append(rate_row(f"3 generate 1 prompt x {n_new}", name, n_new / t[f"lens {name}"], n_new / t[name], 1.0))

    # 4: batched greedy generation, 8 left-padded prompts; the same ids and mask go to both.
    ids, mask = tokenize(model, BATCH_PROMPTS, padding_side="left")
    n_out = len(BATCH_PROMPTS) * n_new
    fns = {f"lens {name}": (lambda m=m: m.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, stop_at_eos=False))
           for name, m in models.items()}
    fns |= {name: (lambda hf=hf: hf.generate(ids, attention_mask=mask, **gen_kw)) for name, hf in hfs.items()}
    t = interleaved_medians(fns, args.repeats, 1)
    for name in hfs:
        rows.append(rate_row(f"4 generate {len(BATCH_PROMPTS)} prompts x {n_new}", name, n_out / t[f"lens {name}"], n_out / t[name], 1.0))

    # Do the generations agree token for token? Timed runs force 32 tokens (min_new_tokens suppresses
    # EOS in HF, stop_at_eos=False lets lensutil emit it), so compare the natural runs instead: both
    # stop a row at EOS and fill it with EOS (HF's pad_token_id set to EOS).
    eos = tokenizer.eos_token_id
    nat_kw = dict(do_sample=False, max_new_tokens=n_new, pad_token_id=eos)
    with torch.inference_mode():
        ours_solo = model.generate(solo, max_new_tokens=n_new, do_sample=False)
        ours_batch = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
        from_text = model.generate(BATCH_PROMPTS, max_new_tokens=n_new, do_sample=False)
        for name, hf in hfs.items():
            hf_solo = hf.generate(solo, attention_mask=solo_mask, **nat_kw)
            hf_batch = hf.generate(ids, attention_mask=mask, **nat_kw)
            width = min(hf_batch.shape[1], ours_batch.shape[1])
            rows_same = (ours_batch[:, :width] == hf_batch[:, :width]).all(-1)
            print(f"generated ids identical to {name}: 1 prompt {torch.equal(ours_solo, hf_solo)}; batch {bool(rows_same.all())} "
                  f"({int(rows_same.sum())}/{len(rows_same)} rows)")
        solo_rows = [model.generate(ids[i : i + 1, mask[i].bool()], max_new_tokens=n_new, do_sample=False)
                     for i in range(len(BATCH_PROMPTS))]
    n_done = ours_batch.shape[1] - ids.shape[1]

    def same_row(batched_new: torch.Tensor, alone_new: torch.Tensor) -> bool:  # alone may stop early at EOS
        k = len(alone_new)
        return torch.equal(batched_new[:k], alone_new) and bool((batched_new[k:] == eos).all())

    same_as_alone = all(same_row(ours_batch[i, ids.shape[1] :], s[0, int(mask[i].sum()) :]) for i, s in enumerate(solo_rows))
    new_mask = torch.cat([mask, torch.ones(len(ids), n_done, dtype=mask.dtype)], 1)
    decoded = []
    for row, m in zip(ours_batch, new_mask):
        new = row[ids.shape[1] :].tolist()
        new = new[: new.index(eos)] if eos in new else new
        decoded.append(model.to_string(torch.tensor(row[: ids.shape[1]][m[: ids.shape[1]].bool()][1:].tolist() + new)))
    print(f"lensutil batched == each prompt alone: {same_as_alone}; list-of-strings input gives the same text: {decoded == from_text}")

    # Memory: what run_with_cache keeps, and the peak resident growth while it runs.
    rss_fwd = peak_rss_delta(lambda: model(tokens))  # before run_with_cache: freed memory stays in the process
    rss_hf = peak_rss_delta(lambda: next(iter(hfs.values()))(tokens))
    rss_cache = peak_rss_delta(lambda: model.run_with_cache(tokens))
    _, cache = model.run_with_cache(tokens)
    cache_bytes = sum(v.numel() * v.element_size() for v in cache.values())
    del cache
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MB"  # noqa: E731
    print(f"memory: run_with_cache stores {mb(cache_bytes)} ({len(model.hook_names_matching(None))} hooks); "
          f"peak RSS delta run_with_cache {mb(rss_cache)}, lensutil forward {mb(rss_fwd)}, {next(iter(hfs))} forward {mb(rss_hf)}")

    if args.profile:
        profile(model, hfs, tokens)
    return rows


def profile(model, hfs: dict, tokens: torch.Tensor, top: int = 15) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    runs = {"lensutil forward": lambda: model(tokens), "lensutil run_with_cache": lambda: model.run_with_cache(tokens)}
    runs |= {f"{name} forward": (lambda hf=hf: hf(tokens)) for name, hf in hfs.items()}
    for label, fn in runs.items():
        with torch.inference_mode():
            fn()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
        print(f"\n=== {label} ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


if __name__ == "__main__":
    main()
