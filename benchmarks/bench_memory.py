"""Memory and speed (issues 14, 24): lensutil's ratios to HuggingFace's forward, side by side in one run.

Run by hand (never part of the test suite):

    .venv/bin/python benchmarks/bench_memory.py [--model smollm2-135m] [--pairs 7] [--stream 1024] [--keep-freed-memory never|always]

A. Ratios to HuggingFace's default forward (attn_implementation "sdpa"), float32, batch x seq tokens;
   lensutil loaded with from_pretrained_no_processing in its default mode ("sdpa" too):
   1 forward, default settings                               lensutil time / HF time     goal <= 1.05
   2 run_with_cache() of every hook                          lensutil time / HF time     goal <= 1.25
   2b the same, against HF doing the same work: its eager forward (the attention pattern written out, as
      run_with_cache of every hook does) with output_hidden_states=True, output_attentions=True
                                                             lensutil time / HF time     goal <= 1.05
   3 greedy generation, one prompt (tokens/s)                lensutil tok/s / HF tok/s   goal >= 1.0
   4 run_with_cache(names_filter=every hook_resid_post)      lensutil time / HF time     goal <= 1.05
   TransformerLens 4.x (TransformerBridge) and nnsight rows when they are importable.
B. Weight memory: distinct parameter storage, lensutil (no processing; processed) vs HuggingFace.
C. Collecting blocks.10.hook_resid_post over 64 sequences x 128 tokens (batches of 8) with
   collect_activations, against a loop of run_with_cache(batch) of every hook keeping that hook:
   peak RSS growth ratio (goal >= 20x less) and time ratio (goal <= 0.5).
D. Streaming N sequences to disk (format="memmap"): peak RSS growth for N = 128 ... --stream; flat
   means the largest N's peak is within 1.25x of the smallest's.

Method: each measurement is a pair (lensutil, reference) run back to back, the order alternating
from pair to pair, after warm-up runs, under torch.inference_mode(); the ratio reported is the median
of the per-pair ratios (their min and max beside it), so load from other processes that drifts
during the run hits both sides of each pair alike. The load average is printed before and after.

--keep-freed-memory says what the allocator does, for lensutil and HuggingFace alike (it is process-wide):
"never" (the default, and lensutil's: it changes no allocator setting by itself) leaves glibc's malloc
as it comes (freed memory above its thresholds goes back to the kernel); "always" calls the opt-in
lensutil.keep_freed_memory(True) before anything is loaded. The header of part A says which setting
the run used, and the process's RSS after part A is printed beside its peak (what keeping costs).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_hf import _rss_bytes, machine_report, peak_rss_delta  # noqa: E402

from lensutil import collect_activations, keep_freed_memory  # noqa: E402
from lensutil.loading import hf_source, pretrained  # noqa: E402


def paired(ours: Callable, theirs: Callable, pairs: int, warmup: int = 1) -> dict:
    """Median (and min, max) of per-pair time ratios ours / theirs, and each side's median time."""
    with torch.inference_mode():
        for _ in range(warmup):
            ours(), theirs()
        ratios, a, b, faults = [], [], [], {"a": [], "b": []}
        for i in range(pairs):
            order = (("a", ours), ("b", theirs)) if i % 2 == 0 else (("b", theirs), ("a", ours))
            took = {}
            for side, fn in order:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                fn()
                took[side] = time.perf_counter() - start
                faults[side].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            a.append(took["a"]), b.append(took["b"]), ratios.append(took["a"] / took["b"])
    # Minor page faults per run (first touches of memory the process got from the kernel): what keeping
    # activations costs beyond the arithmetic, since kept tensors cannot reuse memory freed in the same run.
    return {"ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios),
            "ours": statistics.median(a), "theirs": statistics.median(b),
            "faults": (statistics.median(faults["a"]), statistics.median(faults["b"]))}


def storage_mib(module: torch.nn.Module) -> float:
    return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}.values()) / 2**20


def row(label: str, r: dict, goal: str, rate: bool = False) -> str:
    ratio, lo, hi = (1 / r["ratio"], 1 / r["hi"], 1 / r["lo"]) if rate else (r["ratio"], r["lo"], r["hi"])
    target = float(goal.split()[-1])
    met = ratio >= target if goal.startswith(">=") else ratio <= target
    ours_pf, theirs_pf = (f / 1e3 for f in r["faults"])
    return (f"{label:<58} {ratio:6.3f}  [{lo:.3f}-{hi:.3f}]  {r['ours'] * 1e3:8.1f} ms vs {r['theirs'] * 1e3:8.1f} ms"
            f"  {goal:<8} {'yes' if met else 'NO ':<3}  page faults {ours_pf:5.0f}k vs {theirs_pf:4.0f}k")


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--stream", type=int, default=1024, help="largest number of sequences streamed to disk (D)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: A,B,C,D")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's choice); "
                   "1 is steadier on a machine other jobs share")
    p.add_argument("--keep-freed-memory", choices=("never", "always"), default="never",
                   help="never: glibc's malloc as it comes (lensutil's default); always: the opt-in "
                        "keep_freed_memory(True). Process-wide: lensutil and HuggingFace alike")
    args = p.parse_args(argv)
    # Before anything is allocated, so that both sides run under the same allocator setting from the start.
    if args.keep_freed_memory == "always":
        allocator = str(keep_freed_memory(True))
    else:
        allocator = "glibc's malloc as it comes (lensutil's default: no mallopt, thresholds untouched)"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats, args.warmup, args.processed = args.pairs, 1, False
    skip = set(args.skip.upper().split(",")) - {""}
    torch.manual_seed(0)
    print(machine_report(args))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"allocator, lensutil and HuggingFace alike: {allocator}")

    hf, _ = hf_source.load_hf(args.model, attn_implementation="sdpa")
    hf_eager = None if "A" in skip else hf_source.load_hf(args.model, attn_implementation="eager")[0]
    model = pretrained.from_pretrained_no_processing(args.model)
    assert model.cfg.attn_implementation == hf.config._attn_implementation == "sdpa"
    tokens = torch.randint(100, model.cfg.d_vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    if "A" not in skip:
        kept = {"always": "keep_freed_memory(True)", "never": "glibc as it comes"}[args.keep_freed_memory]
        print(f"\nA. ratio to HuggingFace's forward (sdpa unless named), {args.batch} x {args.seq} tokens; "
              f"median of {args.pairs} pairs [min-max]; allocator: {kept}, for both")
        hf_fwd = lambda: hf(tokens)  # noqa: E731
        resid_post = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
        print(row("1 forward, default settings", paired(lambda: model(tokens), hf_fwd, args.pairs), "<= 1.05"))
        print(row("2 run_with_cache() of every hook", paired(lambda: model.run_with_cache(tokens), hf_fwd, args.pairs), "<= 1.25"))
        # HuggingFace asked for what it can give of a cache: every hidden state and attention pattern. sdpa
        # returns no patterns, so eager, as run_with_cache of every hook runs eager attention too.
        hf_same = lambda: hf_eager(tokens, output_hidden_states=True, output_attentions=True)  # noqa: E731
        assert hf_same().attentions[0] is not None
        print(row("2b the same vs HF eager, hidden states + attentions out", paired(lambda: model.run_with_cache(tokens),
                                                                                    hf_same, args.pairs), "<= 1.05"))
        prompt = tokens[:1, :16]
        n = args.new_tokens
        ours_gen = lambda: model.generate(prompt, max_new_tokens=n, do_sample=False, stop_at_eos=False)  # noqa: E731
        hf_gen = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,  # noqa: E731
                                     min_new_tokens=n, do_sample=False, pad_token_id=0)
        print(row(f"3 greedy generation, 1 prompt x {n} tokens (tokens/s)", paired(ours_gen, hf_gen, args.pairs), ">= 1.0", rate=True))
        print(row(f"4 {len(resid_post)} x hook_resid_post cached (names_filter)",
                  paired(lambda: model.run_with_cache(tokens, names_filter=resid_post), hf_fwd, args.pairs), "<= 1.05"))
        for pkg, what in (("transformer_lens", "TransformerLens 4.x TransformerBridge rows"), ("nnsight", "nnsight rows")):
            print(f"   {what}: {'importable but not timed here' if importable(pkg) else f'not importable ({pkg} is not installed)'}")
        # What keeping freed memory costs: RSS after the caches are dropped, beside the peak (ru_maxrss, KiB on Linux).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"   RSS of this process after part A: {_rss_bytes() / 2**20:.0f} MiB now, {peak:.0f} MiB at its peak")

    if "B" not in skip:
        processed = pretrained.from_pretrained(args.model)
        print(f"\nB. weight memory (distinct parameter storage, float32): lensutil no processing {storage_mib(model):.0f} MiB, "
              f"processed {storage_mib(processed):.0f} MiB, HuggingFace {storage_mib(hf):.0f} MiB; "
              f"ratio (no processing) {storage_mib(model) / storage_mib(hf):.3f}")
        del processed

    name = f"blocks.{min(10, model.cfg.n_layers - 1)}.hook_resid_post"
    if "C" not in skip:
        data = torch.randint(100, model.cfg.d_vocab, (64, 128), generator=torch.Generator().manual_seed(1))

        def lean():
            return collect_activations(model, data, [name], batch_size=8, progress=False)

        def everything():
            kept = []
            for i in range(0, len(data), 8):
                _, cache = model.run_with_cache(data[i:i + 8])
                kept.append(cache[name].reshape(-1, model.cfg.d_model).clone())
                del cache
            return torch.cat(kept)

        # The same rows to float32 rounding: caching everything hooks the pattern, so it runs the written-out
        # attention, while collect_activations keeps the fused kernel (both are HF-exact in their own mode).
        assert torch.allclose(lean()[name], everything(), atol=1e-4)
        mem_lean, mem_all = peak_rss_delta(lean), peak_rss_delta(everything)
        t = paired(lean, everything, max(3, args.pairs // 2))
        print(f"\nC. {name} over 64 x 128 tokens, batches of 8, vs run_with_cache of every hook per batch "
              f"(median of {max(3, args.pairs // 2)} pairs)")
        print(f"   peak RSS growth: collect_activations {mem_lean / 2**20:.0f} MiB, run_with_cache loop {mem_all / 2**20:.0f} MiB: "
              f"{mem_all / mem_lean:.1f}x less (goal >= 20x) {'yes' if mem_all / mem_lean >= 20 else 'NO'}")
        print(f"   time ratio {t['ratio']:.3f} [{t['lo']:.3f}-{t['hi']:.3f}] ({t['ours']:.2f} s vs {t['theirs']:.2f} s; "
              f"goal <= 0.5) {'yes' if t['ratio'] <= 0.5 else 'NO'}")

    if "D" not in skip:
        sizes = [n for n in (128, 256, 512, 1024, 2048, 4096) if n <= args.stream]
        peaks = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                data = torch.randint(100, model.cfg.d_vocab, (n, 128), generator=torch.Generator().manual_seed(n))
                out = Path(tmp) / f"acts-{n}"
                peaks[n] = peak_rss_delta(lambda: collect_activations(model, data, [name], batch_size=8, progress=False,
                                                                      out=out, format="memmap"))
                size = sum(f.stat().st_size for f in out.iterdir())
                print(f"   streamed {n:5d} sequences: {size / 2**20:6.0f} MiB on disk, peak RSS growth {peaks[n] / 2**20:5.0f} MiB")
        flat = peaks[sizes[-1]] / peaks[sizes[0]]
        print(f"D. peak RSS growth, {sizes[-1]} vs {sizes[0]} sequences: {flat:.2f}x (flat: <= 1.25) {'yes' if flat <= 1.25 else 'NO'}")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
