"""TransformerLens' model names and aliases, as data: `from_pretrained("gpt2-small")` means `gpt2`.

The table is TransformerLens' own (OFFICIAL_MODEL_NAMES and MODEL_ALIASES in
transformer_lens/loading_from_pretrained.py at v2.18.0, commit 589acd47c7a4e100754f16a840f73229d56e8196;
later versions moved them to transformer_lens/supported_models.py unchanged for these rows),
restricted to the architectures lensutil has adapters for: GPT-2, the Llama family (Llama,
CodeLlama, Mistral), Qwen2, Mixtral and BERT. As in TransformerLens, a name is looked up
case-insensitively among the official names and their aliases. Left out on purpose: the
stanford-crfm GPT-2 runs (TransformerLens loads them at a training checkpoint, a revision lensutil
does not choose for you; pass the hub name and revision=...).
"""

from __future__ import annotations

import difflib
from typing import NamedTuple
from . import zoo

# official name (a hub repository, except NOT_ON_HUB) -> TransformerLens' aliases for it
TRANSFORMERLENS_NAMES: dict[str, tuple[str, ...]] = {
    # GPT2LMHeadModel
    "gpt2": ("gpt2-small",),
    "gpt2-medium": (),
    "gpt2-large": (),
    "gpt2-xl": (),
    "distilgpt2": ("distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs"),
    # LlamaForCausalLM
    "llama-7b-hf": ("llama-7b",),
    "llama-13b-hf": ("llama-13b",),
    "llama-30b-hf": ("llama-30b",),
    "llama-65b-hf": ("llama-65b",),
    "meta-llama/Llama-2-7b-hf": ("Llama-2-7b",),
    "meta-llama/Llama-2-7b-chat-hf": ("Llama-2-7b-chat",),
    "meta-llama/Llama-2-13b-hf": ("Llama-2-13b",),
    "meta-llama/Llama-2-13b-chat-hf": ("Llama-2-13b-chat",),
    "meta-llama/Llama-2-70b-chat-hf": ("Llama-2-70b-chat", "meta-llama-2-70b-chat-hf"),
    "codellama/CodeLlama-7b-hf": ("CodeLlamallama-2-7b",),
    "codellama/CodeLlama-7b-Python-hf": ("CodeLlama-7b-python",),
    "codellama/CodeLlama-7b-Instruct-hf": ("CodeLlama-7b-instruct",),
    "meta-llama/Meta-Llama-3-8B": (),
    "meta-llama/Meta-Llama-3-8B-Instruct": (),
    "meta-llama/Meta-Llama-3-70B": (),
    "meta-llama/Meta-Llama-3-70B-Instruct": (),
    "meta-llama/Llama-3.1-8B": (),
    "meta-llama/Llama-3.1-8B-Instruct": (),
    "meta-llama/Llama-3.1-70B": (),
    "meta-llama/Llama-3.1-70B-Instruct": (),
    "meta-llama/Llama-3.2-1B": (),
    "meta-llama/Llama-3.2-1B-Instruct": (),
    "meta-llama/Llama-3.2-3B": (),
    "meta-llama/Llama-3.2-3B-Instruct": (),
    "meta-llama/Llama-3.3-70B-Instruct": (),
    # MistralForCausalLM and MixtralForCausalLM
    "mistralai/Mistral-7B-v0.1": ("mistral-7b",),
    "mistralai/Mistral-7B-Instruct-v0.1": ("mistral-7b-instruct",),
    "mistralai/Mistral-Small-24B-Base-2501": (),
    "mistralai/Mistral-Nemo-Base-2407": ("mistral-nemo-base-2407",),
    "mistralai/Mixtral-8x7B-v0.1": ("mixtral", "mixtral-8x7b"),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral-instruct", "mixtral-8x7b-instruct"),
    # Qwen2ForCausalLM
    "Qwen/Qwen2-0.5B": ("qwen2-0.5b",),
    "Qwen/Qwen2-0.5B-Instruct": ("qwen2-0.5b-instruct",),
    "Qwen/Qwen2-1.5B": ("qwen2-1.5b",),
    "Qwen/Qwen2-1.5B-Instruct": ("qwen2-1.5b-instruct",),
    "Qwen/Qwen2-7B": ("qwen2-7b",),
    "Qwen/Qwen2-7B-Instruct": ("qwen2-7b-instruct",),
    "Qwen/Qwen2.5-0.5B": ("qwen2.5-0.5b",),
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2.5-0.5b-instruct",),
    "Qwen/Qwen2.5-1.5B": ("qwen2.5-1.5b",),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2.5-1.5b-instruct",),
    "Qwen/Qwen2.5-3B": ("qwen2.5-3b",),
    "Qwen/Qwen2.5-3B-Instruct": ("qwen2.5-3b-instruct",),
    "Qwen/Qwen2.5-7B": ("qwen2.5-7b",),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b-instruct",),
    "Qwen/Qwen2.5-14B": ("qwen2.5-14b",),
    "Qwen/Qwen2.5-14B-Instruct": ("qwen2.5-14b-instruct",),
    "Qwen/Qwen2.5-32B": ("qwen2.5-32b",),
    "Qwen/Qwen2.5-32B-Instruct": ("qwen2.5-32b-instruct",),
    "Qwen/Qwen2.5-72B": ("qwen2.5-72b",),
    "Qwen/Qwen2.5-72B-Instruct": ("qwen2.5-72b-instruct",),
    # BertForMaskedLM (lensutil.HookedEncoder)
    "google-bert/bert-base-cased": ("bert-base-cased",),
    "google-bert/bert-base-uncased": ("bert-base-uncased",),
    "google-bert/bert-large-cased": ("bert-large-cased",),
    "google-bert/bert-large-uncased": ("bert-large-uncased",),
}

# TransformerLens' NON_HF_HOSTED_MODEL_NAMES: the original LLaMA weights, which Meta never put on
# the hub; TransformerLens loads them from a local directory (hf_model=... or a path).
NOT_ON_HUB: tuple[str, ...] = ("llama-7b-hf", "llama-13b-hf", "llama-30b-hf", "llama-65b-hf")

_LOOKUP: dict[str, str] = {}
for _official, _aliases in TRANSFORMERLENS_NAMES.items():
    for _name in (_official, *_aliases):
        _LOOKUP[_name.lower()] = _official


class KnownModel(NamedTuple):
    """One row of list_models(): the name to pass, where it loads from, and its other names."""

    name: str
    loads_from: str  # "zoo" (offline, built locally) or the hub repository
    aliases: tuple[str, ...] = ()


def official_name(name: str) -> str | None:
    """TransformerLens' official name for a name or alias (any case), or None if it is not one."""
    return _LOOKUP.get(str(name).lower())


def close_names(name: str, extra: tuple[str, ...] = (), n: int = 5) -> list[str]:
    """Known names (TransformerLens names, aliases, and `extra`, e.g. the zoo's) close to `name`."""
    names = {*extra, *TRANSFORMERLENS_NAMES}
    for aliases in TRANSFORMERLENS_NAMES.values():
        names.update(aliases)
    by_lower = {c.lower(): c for c in sorted(names)}
    wanted = str(name).lower()
    found = difflib.get_close_matches(wanted, by_lower, n=n, cutoff=0.6)
    if not found:  # "Mistral-7B" vs "mistralai/Mistral-7B-v0.1": compare against the part after the org
        tails = {k.rsplit("/", 1)[-1]: k for k in by_lower}
        found = [tails[t] for t in difflib.get_close_matches(wanted.rsplit("/", 1)[-1], tails, n=n, cutoff=0.6)]
    return [by_lower[f] for f in found]


def list_models(contains: str | None = None) -> list[KnownModel]:
    """The names from_pretrained knows: the zoo's (offline), then TransformerLens' official names.

    contains: keep only rows whose name or an alias contains this text (any case). lensutil's own:
    TransformerLens keeps the list as transformer_lens.loading.OFFICIAL_MODEL_NAMES (no aliases).
    """
    rows = [KnownModel(n, "zoo") for n in zoo.ZOO_NAMES]
    rows += [KnownModel(n, "(local directory only)" if n in NOT_ON_HUB else n, a) for n, a in TRANSFORMERLENS_NAMES.items()]
    if contains:
        text = contains.lower()
        rows = [r for r in rows if text in r.name.lower() or any(text in a.lower() for a in r.aliases)]
    return rows
