"""The support table: every registered architecture has a line, every line is exact, and the README's
copy is what a fresh run prints (all columns but the machine-dependent bitsandbytes one)."""

from __future__ import annotations

import pytest

from lensutil.architectures.registry import supported_architectures
from lensutil.checks import support_table as st
from lensutil.checks.cli import main
from lensutil.checks.families import FAMILIES
from lensutil.errors import LensError

from test_docs_tables import README, render_docs


def test_every_registered_architecture_has_a_line_in_the_table():
    listed = {c for f in FAMILIES for c in f.hf_classes}
    missing = set(supported_architectures()) - listed
    assert not missing, f"registered without a support-table line (add one to lensutil/checks/families.py): {sorted(missing)}"
    assert listed <= set(supported_architectures()), "a table line names a class the registry does not know"


@pytest.fixture(scope="module")
def table() -> st.SupportTable:
    return st.support_table()  # every family, no bitsandbytes column (seconds per family)


def test_every_family_appears_and_every_row_is_exact(table):
    assert [r.family for r in table.rows] == [f.name for f in FAMILIES]
    for row in table.rows:
        assert row.dlogit_eager == 0 and row.dlogit_sdpa == 0, (row.family, row.dlogit_eager, row.dlogit_sdpa)
        assert row.generation_equal is not False, row.family
        assert not row.hooks.problems, (row.family, row.hooks.problems)
        assert all(status in ("✓", "skipped", "refused") for status, _ in row.processing.values()), row.processing
        assert row.exact


def test_readme_and_docs_show_the_table_a_run_prints_here(table):
    fresh = st.machine_independent(table.to_markdown())
    for name, text in (("README.md", render_docs.generated(README(), "support-table")),
                       ("docs/support_table.md", render_docs.SUPPORT_TABLE.read_text())):
        assert st.machine_independent(text) == fresh, f"{name} differs from a fresh run: run `make support-table`"


def test_delta_prints_exact_zero_as_0_and_anything_else_as_its_value():
    assert st._delta(0.0) == "0"
    assert st._delta(2.3e-7) == "2.3e-07"
    assert st._delta(-0.0) == "0"


def test_a_row_with_any_difference_is_not_exact():
    hooks = st.HookCheck(total=3, problems=[], refused={})
    exact = st.Row("X", ("XForCausalLM",), "tiny-x", 0.0, 0.0, True, hooks, {"fold_ln": ("✓", "")})
    assert exact.exact
    for change in (dict(dlogit_sdpa=1e-7), dict(generation_equal=False),
                   dict(hooks=st.HookCheck(3, ["blocks.0.hook_x: did not fire"], {})),
                   dict(processing={"fold_ln": ("✗", "log-probs moved by 0.3")})):
        row = st.Row(**{**exact.__dict__, **change})
        assert not row.exact, change
        markdown = st.SupportTable([row]).to_markdown()
        assert "✗" in markdown or "1e-07" in markdown


def test_a_hook_with_another_shape_than_documented_is_reported():
    axes = {"batch": 2, "pos": 5, "d_model": 8, "routed": None}
    assert st._shape_problem((2, 5, 8), "batch pos d_model", axes, 2, 5) is None
    assert "documented" in st._shape_problem((2, 5, 1, 8), "batch pos d_model", axes, 2, 5)
    assert "documented" in st._shape_problem((2, 4, 8), "batch pos d_model", axes, 2, 5)
    assert st._shape_problem((7, 8), "routed d_model", axes, 2, 5) is None
    assert "documented" in st._shape_problem((11, 8), "routed d_model", axes, 2, 5)
    assert "has no size" in st._shape_problem((2, 5, 3), "batch pos n_widgets", axes, 2, 5)


def test_an_axis_written_as_a_product_has_the_product_of_its_sizes():
    # OLMo 2 normalises q and k over the whole projection, heads side by side: [batch pos head_index*d_head]
    axes = {"batch": 2, "pos": 5, "head_index": 4, "d_head": 3}
    assert st._shape_problem((2, 5, 12), "batch pos head_index*d_head", axes, 2, 5) is None
    assert "documented" in st._shape_problem((2, 5, 4, 3), "batch pos head_index*d_head", axes, 2, 5)
    assert "documented" in st._shape_problem((2, 5, 4), "batch pos head_index*d_head", axes, 2, 5)
    assert "has no size" in st._shape_problem((2, 5, 12), "batch pos head_index*n_widgets", axes, 2, 5)


def test_moe_expert_hooks_are_sized_by_the_experts_width_not_the_dense_mlps():
    from lensutil.loading.pretrained import from_pretrained_no_processing

    model = from_pretrained_no_processing("tiny-qwen2-moe")
    cfg = model.cfg
    assert cfg.d_mlp_expert != cfg.d_mlp and cfg.d_mlp_shared_expert not in (None, cfg.d_mlp)  # else this proves nothing
    axes = st._axes(model, 2, 5)
    assert (axes["d_mlp_expert"], axes["d_mlp_shared_expert"]) == (cfg.d_mlp_expert, cfg.d_mlp_shared_expert)
    hooks = model.hook_dict
    assert hooks["blocks.0.mlp.experts.0.hook_gate"].shape_comment == "routed d_mlp_expert"
    assert hooks["blocks.0.mlp.shared_expert.hook_post"].shape_comment == "batch pos d_mlp_shared_expert"
    assert st._shape_problem((7, cfg.d_mlp_expert), "routed d_mlp_expert", axes, 2, 5) is None
    assert st._hooks(model).problems == []


def test_an_unknown_family_is_refused_with_the_list():
    with pytest.raises(LensError, match="Families: GPT-2"):
        st.support_table(["gpt-5"])


def test_lensutil_architectures_prints_the_table_for_one_family(capsys):
    assert main(["architectures", "tiny-gpt2", "--no-quantization", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| GPT-2 | `GPT2LMHeadModel` | `tiny-gpt2` | 0 | 0 | ✓ |" in out
