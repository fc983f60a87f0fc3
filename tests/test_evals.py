"""lensutil.analysis.evals (TransformerLens 2.x's evals), on a zoo model offline (issue 27)."""

import random

import pytest
import torch

from _models import lens
from lensutil.analysis.evals import IOIDataset, induction_loss, ioi_eval, mmlu_eval, sanity_check


@pytest.fixture(scope="module")
def model():
    return lens("tiny-gpt2")


def test_ioi_prompts_end_with_the_indirect_object_and_vary(model):
    ds = IOIDataset(model.tokenizer, names=["Alice", "Bob", "Carol", "Dave"], num_samples=20)
    for i in range(len(ds)):
        item = ds[i]
        assert item["prompt"][-len(item["IO"]):].tolist() == item["IO"].tolist()
    assert len({s["text"] for s in ds.samples}) > 1  # TransformerLens' reseeding makes every sample the same


def test_ioi_symmetric_pairs_swap_the_names(model):
    ds = IOIDataset(model.tokenizer, num_samples=4, symmetric=True)
    assert len(ds) == 4 and ds.samples[0]["IO"] == ds.samples[1]["S"] and ds.samples[0]["S"] == ds.samples[1]["IO"]


def test_ioi_eval_reads_the_logits_where_the_name_is_predicted(model):
    ds = IOIDataset(model.tokenizer, num_samples=3)
    result = ioi_eval(model, dataset=ds, batch_size=2)
    diffs = []
    for i in range(len(ds)):
        item = ds[i]
        logits = model(item["prompt"][None])[0, -len(item["IO"]) - 1]
        diffs.append((logits[item["IO"][0]] - logits[item["S"][0]]).item())
    assert result["Logit Difference"] == pytest.approx(sum(diffs) / 3, abs=1e-4)
    assert result["Accuracy"] == sum(d > 0 for d in diffs) / 3


def test_evals_leave_the_global_random_state_alone(model):
    torch.manual_seed(1)
    random.seed(1)
    expected = (torch.rand(1), random.random())
    torch.manual_seed(1)
    random.seed(1)
    IOIDataset(model.tokenizer, num_samples=2)
    induction_loss(model, batch_size=1, subseq_len=8)
    assert (torch.rand(1), random.random()) == expected


def test_induction_loss_is_the_loss_on_the_second_copy(model):
    loss = induction_loss(model, batch_size=2, subseq_len=6, prepend_bos=False, seed=3)
    half = torch.randint(100, min(20000, model.cfg.d_vocab), (2, 6), generator=torch.Generator().manual_seed(3))
    tokens = half.repeat(1, 2)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert loss == pytest.approx(per_token[:, 7:].mean().item(), abs=1e-5)


def test_mmlu_eval_scores_the_most_likely_answer_letter(model):
    data = [{"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"},
            {"question": "Red?", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "miscellaneous"}]
    result = mmlu_eval(model, data=data)
    letters = [model.tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in "ABCD"]
    right = 0
    for ex in data:
        prompt = f"Question: {ex['question']}\nChoices:\n" + "".join(f"{'ABCD'[i]}. {c}\n" for i, c in enumerate(ex["choices"]))
        last = model(model.tokenizer.encode(prompt + "Answer:", return_tensors="pt"))[0, -1]
        right += int(last[letters].argmax().item() == ex["answer"])
    assert result["num_total"] == 2 and result["num_correct"] == right


def test_sanity_check_is_a_scalar_loss(model):
    assert sanity_check(model).ndim == 0
