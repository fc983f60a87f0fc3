"""Quick behavioural evals of a model (TransformerLens 2.x's `evals`): a loss on one paragraph, induction
on repeated random tokens, indirect-object identification (IOI) and MMLU multiple choice.

Differences from TransformerLens, each on purpose: the random draws (induction tokens, IOI samples)
come from generators of their own, seeded by a `seed` argument, so calling an eval neither reads nor
moves torch's or Python's global random state; and IOIDataset draws each sample afresh (TransformerLens
reseeds `random` with 42 before every sample, so all its samples are the same prompt). MMLU's
questions come from the hub (`datasets`, cais/mmlu); everything else runs offline.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..errors import InputError, LensError

_SANITY_TEXT = (
    "Many important transition points in the history of science have been moments when science 'zoomed in.' "
    "At these points, we develop a visualization or tool that allows us to see the world in a new level of "
    "detail, and a new field of science develops to study the world through this lens."
)


def sanity_check(model) -> torch.Tensor:
    """The model's loss on one paragraph (of "Zoom In"): under ~5 is plausible for a trained model, over ~7 is not."""
    return model(_SANITY_TEXT, return_type="loss")


@torch.inference_mode()
def induction_loss(model, tokenizer=None, batch_size: int = 4, subseq_len: int = 384, prepend_bos: bool | None = None,
                   device=None, seed: int = 0) -> torch.Tensor:
    """Mean next-token loss over the second copy of random token sequences repeated twice.

    A model with induction heads predicts the second copy from the first: its loss there falls far
    below the uniform log(d_vocab). Tokens are drawn from [100, 20000) as TransformerLens does (clipped
    to the vocabulary); with prepend_bos (default cfg.default_prepend_bos) the first becomes BOS.
    """
    device = device or model.cfg.device
    high = min(20000, model.cfg.d_vocab)
    low = min(100, high - 1)
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (batch_size, subseq_len), generator=generator)
    tokens = half.repeat(1, 2).to(device)
    if model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos:
        tokenizer = tokenizer or model.tokenizer
        if tokenizer is None or tokenizer.bos_token_id is None:
            raise InputError("induction_loss with prepend_bos needs a tokenizer with a BOS token; pass prepend_bos=False.")
        tokens[:, 0] = tokenizer.bos_token_id
    logits = model(tokens, return_type="logits")
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    loss = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [batch, 2 * subseq_len - 1]
    return loss[:, subseq_len + 1:].mean()  # predictions of the second copy's tokens after its first


class IOIDataset(torch.utils.data.Dataset):
    """Indirect-object identification prompts (Wang et al. 2022): "[A] and [B] went ... [B] gave it to" -> [A].

    Items are {"prompt": token ids ending in the indirect object, "IO": its ids, "S": the subject's ids},
    as TransformerLens' IOIDataset gives. `symmetric` adds each prompt with the two names swapped.
    """

    def __init__(self, tokenizer, templates: list[str] | None = None, names: list[str] | None = None,
                 nouns: dict[str, list[str]] | None = None, num_samples: int = 1000, symmetric: bool = False,
                 prepend_bos: bool = True, seed: int = 42):
        self.tokenizer, self.prepend_bos = tokenizer, prepend_bos
        self.templates = templates if templates is not None else self.get_default_templates()
        self.names = names if names is not None else self.get_default_names()
        self.nouns = nouns if nouns is not None else self.get_default_nouns()
        if len(self.names) < 2:
            raise InputError("IOIDataset needs at least two names (the indirect object and the subject).")
        self.rng = random.Random(seed)
        self.samples: list[dict[str, str]] = []
        for _ in range(num_samples // 2 if symmetric else num_samples):
            self.samples.extend(self.get_sample(symmetric=symmetric))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        sample = self.samples[idx]
        prompt = self.tokenizer.encode(sample["text"])
        if self.prepend_bos:
            prompt = [self.tokenizer.bos_token_id] + prompt
        encode = lambda s: torch.tensor(self.tokenizer.encode(s), dtype=torch.long)  # noqa: E731
        return {"prompt": torch.tensor(prompt, dtype=torch.long), "IO": encode(sample["IO"]), "S": encode(sample["S"])}

    def get_sample(self, symmetric: bool = False) -> list[dict[str, str]]:
        template = self.rng.choice(self.templates)
        for noun_type, choices in self.nouns.items():
            template = template.replace(f"[{noun_type}]", self.rng.choice(choices))
        a, b = self.rng.sample(self.names, 2)
        pairs = [(a, b), (b, a)] if symmetric else [(a, b)]
        # " Mary", not "Mary": the name the model should predict follows a space.
        return [{"text": template.replace("[A]", io).replace("[B]", s), "IO": " " + io, "S": " " + s} for io, s in pairs]

    @staticmethod
    def get_default_names() -> list[str]:
        return ["John", "Mary"]

    @staticmethod
    def get_default_templates() -> list[str]:
        return ["[A] and [B] went to the [LOCATION] to buy [OBJECT]. [B] handed the [OBJECT] to [A]",
                "Then, [B] and [A] went to the [LOCATION]. [B] gave the [OBJECT] to [A]"]

    @staticmethod
    def get_default_nouns() -> dict[str, list[str]]:
        return {"LOCATION": ["store", "market"], "OBJECT": ["milk", "eggs", "bread"]}


@torch.inference_mode()
def ioi_eval(model, dataset=None, batch_size: int = 8, num_samples: int = 1000, tokenizer=None,
             symmetric: bool = False) -> dict[str, float]:
    """{"Logit Difference": mean logit(IO) - logit(S), "Accuracy": share with IO above S}, each read where the
    first token at which the two names differ is predicted."""
    tokenizer = tokenizer or model.tokenizer
    dataset = dataset if dataset is not None else IOIDataset(tokenizer, num_samples=num_samples, symmetric=symmetric)
    total_diff, correct = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        prompts = [item["prompt"] for item in items]
        # Right padding: a causal model's logits at real positions do not see it.
        logits = model(torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True), return_type="logits")
        for row, (item, prompt) in enumerate(zip(items, prompts)):
            io, s = item["IO"], item["S"]
            n = min(len(io), len(s))
            differs = torch.nonzero(io[:n] != s[:n])
            if len(differs) == 0:
                raise InputError(f"IOI sample {start + row}: the two names tokenize alike; they cannot be told apart.")
            first = int(differs[0])
            at = len(prompt) - len(io) + first - 1  # the position predicting the names' first differing token
            diff = (logits[row, at, io[first]] - logits[row, at, s[first]]).item()
            total_diff += diff
            correct += diff > 0
    return {"Logit Difference": total_diff / len(dataset), "Accuracy": correct / len(dataset)}


MMLU_SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
]
MMLU_ANSWER_LETTERS = ["A", "B", "C", "D"]


def make_mmlu_data_loader(subjects: str | list[str] | None = None, split: str = "test",
                          num_samples: int | None = None) -> list[dict]:
    """MMLU questions from the hub (cais/mmlu): [{"question", "choices", "answer" (0-3), "subject"}]."""
    chosen = MMLU_SUBJECTS if subjects is None else [subjects] if isinstance(subjects, str) else list(subjects)
    unknown = sorted(set(chosen) - set(MMLU_SUBJECTS))
    if unknown:
        raise InputError(f"Invalid subject(s) {unknown}: MMLU has no such subject; the subjects are lensutil.analysis.evals.MMLU_SUBJECTS.")
    try:
        from datasets import load_dataset  # optional: only MMLU needs it
    except ImportError:
        raise LensError("MMLU's questions are read with the `datasets` package: pip install datasets.") from None
    data = []
    for subject in chosen:
        rows = load_dataset("cais/mmlu", subject, split=split)
        for i in range(len(rows) if num_samples is None else min(num_samples, len(rows))):
            data.append({**{k: rows[i][k] for k in ("question", "choices", "answer")}, "subject": subject})
    return data


@torch.inference_mode()
def mmlu_eval(model, tokenizer=None, subjects: str | list[str] | None = None, split: str = "test",
              num_samples: int | None = None, data: list[dict] | None = None) -> dict:
    """Zero-shot MMLU, as TransformerLens scores it: the answer letter (" A".." D") with the highest
    log-probability after "Question: ...\\nChoices:\\nA. ...\\nAnswer:". `data` skips the hub (lensutil's)."""
    tokenizer = tokenizer or model.tokenizer
    data = data if data is not None else make_mmlu_data_loader(subjects, split, num_samples)
    if not data:
        raise InputError("No MMLU questions to evaluate; check `subjects`.")
    letter_ids = []
    for letter in MMLU_ANSWER_LETTERS:
        ids = tokenizer.encode(" " + letter, add_special_tokens=False)
        letter_ids.append(ids[0] if len(ids) == 1 else tokenizer.encode(letter, add_special_tokens=False)[0])
    per_subject: dict[str, list[int]] = {}
    for example in data:
        lines = [f"Question: {example['question']}", "Choices:"]
        lines += [f"{chr(65 + i)}. {choice}" for i, choice in enumerate(example["choices"])]
        prompt = "\n".join(lines) + "\nAnswer:"
        tokens = tokenizer.encode(prompt, return_tensors="pt").to(model.cfg.device)
        last = F.log_softmax(model(tokens, return_type="logits")[0, -1].float(), dim=-1)
        scores = [last[letter_ids[i]].item() for i in range(len(example["choices"]))]
        per_subject.setdefault(example["subject"], []).append(int(scores.index(max(scores)) == example["answer"]))
    right = sum(sum(v) for v in per_subject.values())
    total = sum(len(v) for v in per_subject.values())
    return {"accuracy": right / total, "num_correct": right, "num_total": total,
            "subject_scores": {s: sum(v) / len(v) for s, v in per_subject.items()}}
