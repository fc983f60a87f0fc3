"""Peak memory (RSS) of loading and running a model all in RAM against with its blocks offloaded to disk.

    .venv/bin/python benchmarks/bench_placement.py                  # smollm2-135m, float32, 3 rounds
    .venv/bin/python benchmarks/bench_placement.py --rounds 5 --model tiny-llama

Each measurement runs in a fresh Python process (peak RSS only grows, so processes cannot be
shared), and the placements are interleaved round by round, so that load from other processes on
the machine hits all of them; the table gives each figure's median over the rounds. A process
reports its RSS after importing lensutil (torch and transformers included), its peak after loading,
and its peak after running (a forward on 4 x 64 tokens, run_with_cache of the residual stream, and
8 greedily generated tokens). The weights' own size is printed beside them, and the part of them held
in memory after loading ("resident": each storage once, so a tied W_U that shares W_E's adds nothing).
With --no-processing the weights load as HuggingFace's (a tied model's W_U equals W_E.T, held as its own parameter, as TransformerLens holds it).

Placements:
- ram:           from_pretrained(name), everything in RAM (the HF model is loaded, then converted)
- most-on-disk:  the first two blocks, the embeddings and the unembedding in RAM, the other blocks on disk
- all-on-disk:   every module on disk (device_map={"": "disk"}): only one module's weights in RAM at a time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PLACEMENTS = ("ram", "most-on-disk", "all-on-disk")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(name: str, placement: str, threads: int, processing: bool) -> dict:
    import torch

    import lensutil  # noqa: F401  (its imports count in the baseline)
    from lensutil.loading import placement as pl
    from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing

    load = from_pretrained if processing else from_pretrained_no_processing
    torch.set_num_threads(threads)
    out = {"after_import": _rss_mib()}
    with tempfile.TemporaryDirectory() as folder:
        if placement == "ram":
            model = load(name)
        else:
            device_map = _most_on_disk(name, processing) if placement == "most-on-disk" else {"": "disk"}
            model = load(name, device_map=device_map, offload_folder=folder)
        out["after_load_peak"] = _peak_mib()
        storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters() if not p.is_meta}
        out["resident"] = sum(storages.values()) / 2**20
        tokens = torch.randint(0, model.cfg.d_vocab, (4, 64), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            model(tokens)
            model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
            model.generate(tokens[:1, :16], 8, do_sample=False)
        out["after_run_peak"] = _peak_mib()
        out["weights"] = sum(pl.memory_footprint(model).values()) / 2**20
        out["devices"] = sorted(set(getattr(model, "hf_device_map", {"": "cpu"}).values()))
    return out


def _most_on_disk(name: str, processing: bool) -> dict:
    from lensutil.loading import placement as pl
    from lensutil.loading.convert import PROCESSING_OPTIONS
    from lensutil.loading.placed import empty_model

    units = pl.units(empty_model(name, **({} if processing else {o: False for o in PROCESSING_OPTIONS})))
    return {u: ("disk" if u.startswith("blocks.") and int(u.split(".")[1]) >= 2 else "cpu") for u in units}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-processing", action="store_true", help="load with every processing option off")
    parser.add_argument("--child", choices=PLACEMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.threads, not args.no_processing)))
        return
    runs: dict[str, list[dict]] = {p: [] for p in PLACEMENTS}
    for r in range(args.rounds):
        for placement in PLACEMENTS if r % 2 == 0 else reversed(PLACEMENTS):
            cmd = [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads), "--child", placement]
            cmd += ["--no-processing"] if args.no_processing else []
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if done.returncode:
                sys.exit(f"{placement} failed:\n{done.stderr[-3000:]}")
            runs[placement].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = lambda p, k: statistics.median(r[k] for r in runs[p])  # noqa: E731
    processing = "unprocessed" if args.no_processing else "processed"
    print(f"{args.model}, float32, {processing}, {args.rounds} rounds, torch threads {args.threads}; MiB, peak RSS medians")
    print(f"{'placement':<14}{'devices':<12}{'weights':>9}{'resident':>10}{'imports':>9}{'load peak':>11}{'run peak':>10}"
          f"{'run - imports':>15}")
    for p in PLACEMENTS:
        print(f"{p:<14}{','.join(runs[p][0]['devices']):<12}{med(p, 'weights'):9.0f}{med(p, 'resident'):10.0f}"
              f"{med(p, 'after_import'):9.0f}"
              f"{med(p, 'after_load_peak'):11.0f}{med(p, 'after_run_peak'):10.0f}"
              f"{med(p, 'after_run_peak') - med(p, 'after_import'):15.0f}")


if __name__ == "__main__":
    main()
