"""The setup checklist (SYMPTOMS.md item 18): shapes, hooks, cache keys, masks, generation, config.

Each check is a ✓/✗ row with the fix and the notebook that explains it; `lensutil doctor` prints
them. Re-exported from lensutil.checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loading import zoo
from ..notebook.setup import _has_gpu, _has_internet
from ..text import tokens as tok


def _dtype_name(d: torch.dtype | str) -> str:
    return str(d if isinstance(d, torch.dtype) else getattr(torch, d)).removeprefix("torch.")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""  # what to do when it fails
    notebook: str = ""  # the notebook that explains it

    def __str__(self) -> str:
        line = f"{'✓' if self.passed else '✗'} {self.name}: {self.detail}"
        if not self.passed:
            line += f"\n    fix: {self.fix}" + (f"\n    see: notebooks/{self.notebook}.ipynb" if self.notebook else "")
        return line


@dataclass
class SetupReport:
    rows: list[Check]

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failed(self) -> list[Check]:
        return [r for r in self.rows if not r.passed]

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.rows)


NB_QUICKSTART = "01_quickstart"
NB_HOOKS = "02_hook_configuration"
NB_CACHE = "03_activation_cache_and_patching"
NB_MASKS = "04_attention_masks_and_padding"
NB_PRECISION = "05_numerical_precision_and_weight_processing"

STANDARD_CACHE_KEYS = (
    "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "ln_final.hook_normalized",
)


# A mixture-of-experts MLP has no single hook_pre/hook_post: its router's hooks stand in for them.
_MOE_CACHE_KEYS = {"blocks.0.mlp.hook_pre": "blocks.0.mlp.hook_expert_weights", "blocks.0.mlp.hook_post": "blocks.0.mlp.hook_expert_indices"}


def _hooks_expected_to_fire(model: "HookedTransformer") -> list[str]:
    return [n for n in model.hook_dict if model.hook_flag(n) is None]


def _run(name: str, fix: str, notebook: str, fn) -> Check:
    """Run one check; an exception is a failed check that shows the error, not a crashed report."""
    try:
        passed, detail = fn()
    except Exception as err:  # noqa: BLE001 - we report any failure, whatever raised it
        passed, detail = False, f"raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return Check(name, bool(passed), detail, fix, notebook)


@torch.no_grad()
def validate_model_setup(
    model: "HookedTransformer",
    prompt: str = "The quick brown fox",
    padded_prompts: tuple[str, str] = ("Hello", "The cat sat on the mat and looked"),
) -> SetupReport:
    """The checklist of SYMPTOMS.md item 18, each a ✓/✗ row with the fix for a ✗."""
    cfg = model.cfg
    state: dict = {}
    half = cfg.dtype in (torch.float16, torch.bfloat16)

    def logits_shape():
        tokens = model.to_tokens(prompt)
        logits = model(tokens)
        want = (1, tokens.shape[1], cfg.d_vocab)
        ok = tuple(logits.shape) == want and bool(torch.isfinite(logits).all())
        return ok, f"{tuple(logits.shape)}, expected (batch, pos, d_vocab) = {want}" + ("" if torch.isfinite(logits).all() else "; logits have NaN/inf")

    def hooks_fire():
        expected = _hooks_expected_to_fire(model)
        _, cache = model.run_with_cache(prompt)
        state["cache"] = cache
        silent = [n for n in expected if n not in cache.keys()]
        skipped = len(model.hook_dict) - len(expected)
        detail = f"{len(expected) - len(silent)}/{len(expected)} hooks fired ({skipped} flag-gated or unused ones skipped)"
        return not silent, detail + (f"; silent: {silent[:4]}" if silent else "")

    def cache_keys():
        cache = state.get("cache") or model.run_with_cache(prompt)[1]
        keys = STANDARD_CACHE_KEYS if not cfg.is_moe_layer(0) else tuple(_MOE_CACHE_KEYS.get(k, k) for k in STANDARD_CACHE_KEYS)
        if cfg.parallel_attn_mlp:  # attention and MLP both read resid_pre: no resid_mid (TransformerLens' rule too)
            keys = tuple(k for k in keys if k != "blocks.0.hook_resid_mid")
        if cfg.norm_position == "output":  # OLMo 2: no norm before attention; the one after it stands in
            keys = tuple("blocks.0.ln1_post.hook_normalized" if k == "blocks.0.ln1.hook_normalized" else k for k in keys)
        missing = [k for k in keys if k not in cache.keys()]
        return not missing, (f"missing {missing}" if missing else f"{len(keys)} standard keys present, incl. blocks.0.attn.hook_pattern")

    def padded_patterns():
        if "padded" not in state:
            # Left padding: the pads sit in the causal past of every real token, so only the mask keeps them out
            # (under right padding the causal mask alone would, and an unmasked batch would pass).
            tokens, mask = tok.tokenize(model, list(padded_prompts), padding_side="left")
            _, cache = model.run_with_cache(list(padded_prompts), padding_side="left",
                                            names_filter=lambda n: n.endswith("hook_pattern"))
            state["padded"] = (mask.bool(), [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(cfg.n_layers)])
        return state["padded"]

    def rows_sum_to_one():
        mask, patterns = padded_patterns()
        tol = 1e-2 if half else 1e-4
        worst = max((p.float().sum(-1) - 1).abs()[mask[:, None, :].expand(-1, p.shape[1], -1)].max().item() for p in patterns)
        return worst <= tol, f"max |row sum - 1| over real queries = {worst:.2e} (tolerance {tol:g})"

    def masked_keys_zero():
        mask, patterns = padded_patterns()
        if mask.all():
            return False, "the two prompts tokenised to the same length, so nothing was padded; use prompts of different lengths"
        # Real queries only: a pad's own row is never read (a left pad sees no key; in eager mode its row is HF
        # eager's even spread over every key, lensutil/model/context.py).
        to_pad = mask[:, None, :, None] & ~mask[:, None, None, :]
        leak = max(p[to_pad.expand_as(p)].abs().max().item() for p in patterns)
        return leak == 0, (f"largest attention of a real token to a padding key = {leak:.2e} (must be exactly 0), "
                           f"padded batch of {len(padded_prompts)}")

    def generation():
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, stop_at_eos=False)
        ok = isinstance(out, str) and len(out) > len(prompt)
        return ok, f"returned {type(out).__name__} {out!r}"[:120]

    def config_sane():
        problems = [f"{k}={getattr(cfg, k)}" for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")
                    if not (isinstance(getattr(cfg, k), int) and getattr(cfg, k) > 0)]
        if len(model.blocks) != cfg.n_layers:
            problems.append(f"{len(model.blocks)} blocks but n_layers={cfg.n_layers}")
        if tuple(model.W_E.shape) != (cfg.d_vocab, cfg.d_model):
            problems.append(f"W_E {tuple(model.W_E.shape)} != (d_vocab, d_model)")
        if model.tokenizer is not None and len(model.tokenizer) > cfg.d_vocab:
            problems.append(f"tokenizer has {len(model.tokenizer)} tokens > d_vocab={cfg.d_vocab}")
        detail = f"n_layers={cfg.n_layers} d_model={cfg.d_model} n_heads={cfg.n_heads} d_head={cfg.d_head} d_vocab={cfg.d_vocab}"
        return not problems, detail + (f"; problems: {problems}" if problems else "")

    def device_matches():
        want = torch.device(cfg.device)
        devices = {p.device for p in model.parameters()}
        # An MoE router's weight stays in float32 whatever the model's dtype (lensutil/model/moe.py): not a mismatch.
        dtypes = {p.dtype for n, p in model.named_parameters() if not (cfg.mlp_type == "moe" and n.endswith("mlp.W_gate"))}
        same = all(d.type == want.type and (want.index is None or d.index == want.index) for d in devices)
        ok = same and dtypes == {cfg.dtype}
        return ok, f"cfg.device={cfg.device}, parameters on {sorted(map(str, devices))}; cfg.dtype={_dtype_name(cfg.dtype)}, parameters {sorted(_dtype_name(d) for d in dtypes)}"

    rows = [
        _run("logits shape", "Call the model on tokens from model.to_tokens(...) and check the loaded config matches the checkpoint (reload with HookedTransformer.from_pretrained).", NB_QUICKSTART, logits_shape),
        _run("every hook fires", "A hook that never fires is not on the forward path: list them with model.print_hook_list(); flag-gated hooks need model.set_use_*(True).", NB_HOOKS, hooks_fire),
        _run("standard cache keys", "Use the TransformerLens names (the pattern is blocks.0.attn.hook_pattern, not hook_attn; MLP output is blocks.0.hook_mlp_out) and do not filter them out with names_filter.", NB_CACHE, cache_keys),
        _run("attention rows sum to one", "Softmax must run over the key axis in float32; an attention hook that edits the pattern should renormalise it.", NB_MASKS, rows_sum_to_one),
        _run("padding keys get zero attention", "Pass a list of strings (the model builds the mask) or attention_mask = 1 for real tokens, 0 for padding, of the tokens' shape; never an additive -inf mask.", NB_MASKS, masked_keys_zero),
        _run("generation returns text", "Call model.generate('text', max_new_tokens=..., do_sample=False); text in gives text out, token ids in give ids out.", NB_QUICKSTART, generation),
        _run("config sizes sane", "The config does not describe these weights: load through HookedTransformer.from_pretrained so the config comes from the checkpoint.", NB_QUICKSTART, config_sane),
        _run("cfg.device and dtype match the parameters", "Move or cast the whole model (model.to(device), .to(dtype), .half(), .float(), .cuda(), ...: each updates cfg) rather than moving parameters one by one or editing cfg.", NB_QUICKSTART, device_matches),
    ]
    return SetupReport(rows)


def bound_check(name: str, value: float, bound: float, what: str, fix: str, notebook: str = NB_PRECISION) -> Check:
    """A ✓/✗ row for `value <= bound` (used by `lensutil doctor` for the HuggingFace comparisons)."""
    return Check(name, bool(value <= bound), f"{what} {value:.2e} {'≤' if value <= bound else '>'} {bound:g}", fix, notebook)


# --- `lensutil doctor --notebooks`: which notebooks will run on this machine -------------------


def notebook_needs(path) -> dict[str, list[str] | None]:
    """A notebook's declared needs, from its metadata ``lensutil``: requires ("gpu"/"internet"),
    zoo (the zoo models it loads) and packages (import names beyond lensutil's dependencies).
    A key the notebook does not declare is None (unknown), not an empty list."""
    import json
    from pathlib import Path

    meta = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {}).get("lensutil", {})
    return {key: meta.get(key) for key in ("requires", "zoo", "packages")}


@dataclass
class NotebookCheck(Check):
    # True when the notebook lacks only a GPU or the internet here: nothing to install fixes that,
    # and the test suite skips such a notebook (so `lensutil doctor --notebooks` still exits 0).
    hardware_only: bool = False


_HARDWARE = {"gpu": "a CUDA GPU (in Colab: Runtime > Change runtime type > GPU)", "internet": "internet access"}


def notebook_readiness(notebook_dir) -> list[NotebookCheck]:
    """One ✓/✗ row per notebook in ``notebook_dir``: will it run here, and if not, why and what to do."""
    import importlib.util
    from pathlib import Path

    cached = zoo.cached_entries()
    probes = {"gpu": _has_gpu, "internet": _has_internet}
    have: dict[str, bool] = {}  # probe each need once (the internet probe waits up to 3 s)
    rows = []
    for path in sorted(Path(notebook_dir).glob("[0-9]*.ipynb")):
        needs = notebook_needs(path)
        hardware, other, fixes = [], [], []
        for need in needs["requires"] or []:
            if need not in have:
                have[need] = need in probes and bool(probes[need]())
            if not have[need]:
                hardware.append(_HARDWARE.get(need, f"{need!r} (a need lensutil does not know)"))
        if hardware:
            fixes.append("run it on a machine with " + " and ".join(hardware))
        absent = [n for n in needs["zoo"] or [] if n not in cached]
        if absent:
            other.append("zoo models not cached: " + ", ".join(absent))
            fixes.append(f"lensutil zoo fetch {' '.join(absent)} (or copy a zoo cache here and point LENSUTIL_CACHE at it)")
        lacking = [p for p in needs["packages"] or [] if importlib.util.find_spec(p) is None]
        if lacking:
            other.append("packages not installed: " + ", ".join(lacking))
            fixes.append(f"pip install 'lensutil[notebooks]' (or pip install {' '.join(lacking)})")
        undeclared = [f"lensutil.{k}" for k in ("zoo", "packages") if needs[k] is None]
        if undeclared:
            other.append("its metadata does not declare " + " or ".join(undeclared))
            fixes.append("add " + " and ".join(undeclared) + " to the notebook's metadata (lists; [] for none)")
        missing = [f"needs {h}" for h in hardware] + other
        uses = ", ".join(needs["zoo"] or []) or "no zoo model"
        detail = f"will run ({uses})" if not missing else "will not run here: " + "; ".join(missing)
        rows.append(NotebookCheck(path.stem, not missing, detail, "; ".join(fixes), hardware_only=bool(hardware) and not other))
    return rows
