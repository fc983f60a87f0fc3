"""HookPoint and HookedRootModule on a toy model: hooks fire, names are checked, and every temporary
hook is gone when its call ends, however it ends."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lensutil.activation_cache import ActivationCache
from lensutil.errors import HookFlagError, HookNameError, HookShapeError, LensError
from lensutil.hook_points import HookedRootModule, HookPoint


class ToyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hook_mid = HookPoint("batch d_model")
        self.hook_extra = HookPoint("batch d_model")  # needs use_extra
        self.hook_mlp_out = HookPoint("batch d_model")


class Toy(HookedRootModule):
    """hook_in -> blocks.{0,1}: (hook_mid, [hook_extra], hook_mlp_out) -> hook_out."""

    def __init__(self, use_extra: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.use_extra = use_extra
        self.hook_in = HookPoint("batch d_model")
        self.blocks = nn.ModuleList([ToyBlock(), ToyBlock()])
        self.hook_out = HookPoint("batch d_model")
        self.setup()

    def hook_flag(self, name: str) -> str | None:
        return "use_extra" if name.endswith("hook_extra") and not self.use_extra else None

    def forward(self, x: torch.Tensor, return_loss: bool = False, fail: bool = False) -> torch.Tensor:
        x = self.hook_in(x)
        for block in self.blocks:
            h = block.hook_mid(block.lin(x))
            if self.use_extra:
                h = block.hook_extra(h.clone())
            x = x + block.hook_mlp_out(torch.relu(h))
        if fail:
            raise RuntimeError("forward failed")
        out = self.hook_out(x)
        return out.pow(2).sum() if return_loss else out


@pytest.fixture
def toy():
    return Toy()


def x_in(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 4, generator=torch.Generator().manual_seed(1))


def n_attached(model: HookedRootModule) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


# ---- HookPoint -----------------------------------------------------------------------------------

def test_setup_names_every_hook_point(toy):
    assert list(toy.hook_dict) == [
        "hook_in", "blocks.0.hook_mid", "blocks.0.hook_extra", "blocks.0.hook_mlp_out",
        "blocks.1.hook_mid", "blocks.1.hook_extra", "blocks.1.hook_mlp_out", "hook_out",
    ]
    assert all(hp.name == name for name, hp in toy.hook_dict.items())
    assert toy.mod_dict["blocks.0.lin"] is toy.blocks[0].lin
    assert toy.hook_dict["hook_in"].shape_comment == "batch d_model"


def test_hook_point_is_identity():
    x = torch.randn(3, 2)
    assert HookPoint()(x) is x


def test_hook_returning_none_keeps_activation(toy):
    seen = []
    out = toy.run_with_hooks(x_in(), fwd_hooks=[("blocks.0.hook_mid", lambda t, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.hook_mid"]
    assert torch.equal(out, toy(x_in()))


def test_hook_returning_tensor_replaces_activation(toy):
    out = toy.run_with_hooks(x_in(), fwd_hooks=[("hook_out", lambda t, hook: torch.zeros_like(t))])
    assert torch.equal(out, torch.zeros(2, 4))


def test_hook_returning_wrong_shape_raises_naming_hook(toy):
    def squash(t, hook):
        return t[:, :2]

    with pytest.raises(HookShapeError) as err:
        toy.run_with_hooks(x_in(), fwd_hooks=[("blocks.1.hook_mid", squash)])
    msg = str(err.value)
    assert "squash" in msg and "'blocks.1.hook_mid'" in msg and "(2, 2)" in msg and "(2, 4)" in msg
    assert n_attached(toy) == 0


def test_hook_returning_non_tensor_raises_lens_error(toy):
    with pytest.raises(LensError, match="returned a float"):
        toy.run_with_hooks(x_in(), fwd_hooks=[("hook_in", lambda t, hook: 1.0)])


def test_prepend_runs_first(toy):
    order = []
    toy.add_hook("hook_in", lambda t, hook: order.append("first added"))
    toy.add_hook("hook_in", lambda t, hook: order.append("prepended"), prepend=True)
    toy(x_in())
    assert order == ["prepended", "first added"]


def test_has_hooks_tracks_forward_hooks(toy):
    hp = toy.hook_dict["blocks.0.hook_mid"]
    assert not hp.has_hooks
    with toy.hooks(fwd_hooks=[("blocks.0.hook_mid", lambda t, hook: None)]):
        assert hp.has_hooks
    assert not hp.has_hooks


def test_hook_ctx_is_shared_between_calls_and_cleared_by_reset(toy):
    def count(t, hook):
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    toy.add_hook("hook_in", count)
    toy(x_in())
    toy(x_in())
    assert toy.hook_dict["hook_in"].ctx["calls"] == 2
    toy.reset_hooks()
    assert toy.hook_dict["hook_in"].ctx == {}


def test_bwd_hook_receives_gradient_of_hook_output(toy):
    grads = {}
    toy.add_hook("hook_out", lambda g, hook: grads.__setitem__("out", g.clone()), dir="bwd")
    x = x_in()
    out = toy(x)
    out.pow(2).sum().backward()
    assert torch.allclose(grads["out"], 2 * out.detach())


def test_bwd_hook_returning_tensor_replaces_gradient(toy):
    toy.add_hook("hook_out", lambda g, hook: torch.zeros_like(g), dir="bwd")
    toy(x_in(), return_loss=True).backward()
    assert all(p.grad is None or not p.grad.any() for p in toy.parameters())


# ---- names ---------------------------------------------------------------------------------------

def test_unknown_hook_name_lists_close_matches(toy):
    with pytest.raises(HookNameError) as err:
        toy.add_hook("blocks.0.mlp.hook_mlp_out", lambda t, hook: None)
    msg = str(err.value)
    assert "No hook named 'blocks.0.mlp.hook_mlp_out'" in msg
    assert "'blocks.0.hook_mlp_out'" in msg and "list_hooks()" in msg


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.run_with_hooks(x_in(), fwd_hooks=[("blocks.0.hook_mdi", lambda t, hook: None)]),
        lambda m: m.run_with_hooks(x_in(), bwd_hooks=[("blocks.0.hook_mdi", lambda t, hook: None)], reset_hooks_end=False),
        lambda m: m.run_with_cache(x_in(), names_filter="blocks.0.hook_mdi"),
        lambda m: m.run_with_cache(x_in(), names_filter=["hook_in", "blocks.0.hook_mdi"]),
    ],
    ids=["fwd_hooks", "bwd_hooks", "names_filter_str", "names_filter_list"],
)
def test_unknown_hook_name_is_refused_everywhere(toy, call):
    with pytest.raises(HookNameError, match="Did you mean: 'blocks.0.hook_mid'"):
        call(toy)
    assert n_attached(toy) == 0


def test_flag_gated_hook_raises_flag_error_naming_flag_and_call(toy):
    with pytest.raises(HookFlagError) as err:
        toy.add_hook("blocks.0.hook_extra", lambda t, hook: None)
    assert str(err.value) == (
        "Hook 'blocks.0.hook_extra' only fires when use_extra=True; call model.set_use_extra(True) first."
    )
    with pytest.raises(HookFlagError):
        toy.run_with_cache(x_in(), names_filter=["blocks.0.hook_extra"])


def test_flag_gated_hook_is_accepted_once_flag_is_on():
    model = Toy(use_extra=True)
    _, cache = model.run_with_cache(x_in(), names_filter="blocks.0.hook_extra")
    assert list(cache) == ["blocks.0.hook_extra"]


def test_callable_filter_skips_flag_gated_hooks_whose_flag_is_off(toy):
    seen = []
    toy.run_with_hooks(x_in(), fwd_hooks=[(lambda name: "hook_" in name, lambda t, hook: seen.append(hook.name))])
    assert "blocks.0.hook_extra" not in seen
    assert len(seen) == 6
    assert n_attached(toy) == 0


def test_bad_name_leaves_nothing_attached(toy):
    good = ("hook_in", lambda t, hook: None)
    with pytest.raises(HookNameError):
        with toy.hooks(fwd_hooks=[good, good, ("hook_typo", lambda t, hook: None)]):
            pass
    assert n_attached(toy) == 0
    assert toy.context_level == 0


def test_malformed_hook_list_entry_is_refused(toy):
    with pytest.raises(LensError, match="pair"):
        toy.run_with_hooks(x_in(), fwd_hooks=["hook_in"])


# ---- cleanup -------------------------------------------------------------------------------------

def test_run_with_hooks_removes_its_hooks(toy):
    toy.run_with_hooks(x_in(), fwd_hooks=[("hook_in", lambda t, hook: None), (lambda n: True, lambda t, hook: None)])
    assert n_attached(toy) == 0


def test_hooks_removed_after_exception_in_hook(toy):
    def boom(t, hook):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        toy.run_with_hooks(x_in(), fwd_hooks=[("hook_in", lambda t, hook: None), ("blocks.1.hook_mid", boom)])
    assert n_attached(toy) == 0


def test_hooks_removed_after_exception_in_forward(toy):
    with pytest.raises(RuntimeError, match="forward failed"):
        toy.run_with_hooks(x_in(), fail=True, fwd_hooks=[("hook_in", lambda t, hook: None)])
    with pytest.raises(RuntimeError, match="forward failed"):
        toy.run_with_cache(x_in(), fail=True)
    assert n_attached(toy) == 0


def test_nested_hooks_inner_exit_removes_only_inner(toy):
    outer_hp, inner_hp = toy.hook_dict["hook_in"], toy.hook_dict["hook_out"]
    with toy.hooks(fwd_hooks=[("hook_in", lambda t, hook: None)]):
        with toy.hooks(fwd_hooks=[("hook_out", lambda t, hook: None)]):
            assert outer_hp.has_hooks and inner_hp.has_hooks
        assert outer_hp.has_hooks and not inner_hp.has_hooks
    assert n_attached(toy) == 0


def test_nested_hooks_exception_removes_both(toy):
    with pytest.raises(KeyError):
        with toy.hooks(fwd_hooks=[("hook_in", lambda t, hook: None)]):
            with toy.hooks(fwd_hooks=[("hook_out", lambda t, hook: None)]):
                raise KeyError("unwind")
    assert n_attached(toy) == 0
    assert toy.context_level == 0


def test_nested_context_leaves_hooks_added_outside_contexts(toy):
    toy.add_hook("hook_in", lambda t, hook: None)
    with toy.hooks(fwd_hooks=[("hook_out", lambda t, hook: None)]):
        pass
    assert toy.hook_dict["hook_in"].has_hooks  # only reset_hooks() removes it
    toy.reset_hooks()
    assert n_attached(toy) == 0


def test_permanent_hooks_survive_reset_hooks(toy):
    toy.add_hook("hook_in", lambda t, hook: None, is_permanent=True)
    toy.add_hook("hook_out", lambda t, hook: None)
    toy.run_with_hooks(x_in(), fwd_hooks=[("hook_in", lambda t, hook: None)])
    toy.reset_hooks()
    assert len(toy.hook_dict["hook_in"]._forward_hooks) == 1 and not toy.hook_dict["hook_out"].has_hooks
    toy.reset_hooks(including_permanent=True)
    assert n_attached(toy) == 0


def test_reset_hooks_direction_removes_only_that_direction(toy):
    toy.add_hook("hook_in", lambda t, hook: None)
    toy.add_hook("hook_in", lambda t, hook: None, dir="bwd")
    toy.reset_hooks(direction="fwd")
    hp = toy.hook_dict["hook_in"]
    assert not hp.has_hooks and len(hp.bwd_hooks) == 1
    toy.reset_hooks(direction="bwd")
    assert n_attached(toy) == 0


def test_reset_hooks_end_false_keeps_hooks(toy):
    grads = []
    out = toy.run_with_hooks(
        x_in(), bwd_hooks=[("hook_out", lambda g, hook: grads.append(g))], reset_hooks_end=False
    )
    out.sum().backward()  # the hook is still attached, so it sees this backward pass
    assert len(grads) == 1
    toy.reset_hooks()
    assert n_attached(toy) == 0


def test_bwd_hooks_with_reset_hooks_end_warn(toy):
    with pytest.warns(UserWarning, match="reset_hooks_end=False"):
        toy.run_with_hooks(x_in(), bwd_hooks=[("hook_out", lambda g, hook: None)])


# ---- caching -------------------------------------------------------------------------------------

def test_run_with_cache_caches_every_hook_that_fires(toy):
    out, cache = toy.run_with_cache(x_in())
    assert isinstance(cache, ActivationCache)
    assert set(cache) == set(toy.hook_dict) - {"blocks.0.hook_extra", "blocks.1.hook_extra"}
    assert torch.equal(cache["hook_out"], out)
    assert n_attached(toy) == 0


def test_return_cache_object_false_gives_a_plain_dict(toy):
    _, cache = toy.run_with_cache(x_in(), names_filter="hook_in", return_cache_object=False)
    assert type(cache) is dict and list(cache) == ["hook_in"]


def test_names_filter_caches_exactly_named_hooks(toy):
    _, cache = toy.run_with_cache(x_in(), names_filter="blocks.1.hook_mid")
    assert list(cache) == ["blocks.1.hook_mid"]
    _, cache = toy.run_with_cache(x_in(), names_filter=["hook_in", "blocks.0.hook_mlp_out"])
    assert set(cache) == {"hook_in", "blocks.0.hook_mlp_out"}
    _, cache = toy.run_with_cache(x_in(), names_filter=lambda n: n.endswith("hook_mid"))
    assert set(cache) == {"blocks.0.hook_mid", "blocks.1.hook_mid"}


def test_cached_tensors_are_detached(toy):
    out, cache = toy.run_with_cache(x_in())
    assert out.requires_grad
    assert all(not t.requires_grad and t.grad_fn is None for t in cache.values())


def test_cache_sees_activation_after_earlier_hooks_edit_it(toy):
    with toy.hooks(fwd_hooks=[("hook_in", lambda t, hook: t * 0)]):
        _, cache = toy.run_with_cache(x_in(), names_filter="hook_in")
    assert not cache["hook_in"].any()


def test_run_with_cache_moves_to_device(toy):
    _, cache = toy.run_with_cache(x_in(), device="meta")
    assert all(t.device.type == "meta" for t in cache.values())


def test_remove_batch_dim_drops_a_batch_of_one(toy):
    _, cache = toy.run_with_cache(x_in(batch=1), remove_batch_dim=True)
    assert cache["hook_in"].shape == (4,) and not cache.has_batch_dim
    with pytest.raises(LensError, match="batch size 2"):
        toy.run_with_cache(x_in(batch=2), remove_batch_dim=True)
    assert n_attached(toy) == 0


def test_incl_bwd_caches_gradients_under_grad_suffix(toy):
    loss, cache = toy.run_with_cache(x_in(), return_loss=True, incl_bwd=True)
    out = cache["hook_out"]
    assert torch.allclose(cache["hook_out_grad"], 2 * out)
    assert not cache["blocks.0.hook_mid_grad"].requires_grad
    # The input needs no gradient, so torch never computes one at hook_in (as in TransformerLens).
    assert "hook_in_grad" not in cache
    assert n_attached(toy) == 0


def test_incl_bwd_on_non_scalar_output_explains(toy):
    with pytest.raises(LensError, match="must be a scalar"):
        toy.run_with_cache(x_in(), incl_bwd=True)
    assert n_attached(toy) == 0


def test_run_with_cache_reset_hooks_end_false_keeps_caching_hooks(toy):
    _, cache = toy.run_with_cache(x_in(), names_filter="hook_in", reset_hooks_end=False)
    assert toy.hook_dict["hook_in"].has_hooks
    toy.reset_hooks()
    assert n_attached(toy) == 0


# ---- discovery -----------------------------------------------------------------------------------

def test_list_hooks_matches_glob_substring_and_regex(toy):
    assert len(toy.list_hooks()) == 8
    assert toy.list_hooks("blocks.*.hook_mid") == ["blocks.0.hook_mid", "blocks.1.hook_mid"]
    assert toy.list_hooks("mlp_out") == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert toy.list_hooks(re.compile(r"^hook_")) == ["hook_in", "hook_out"]
    assert toy.list_hooks("blocks.[1].hook_m?d") == ["blocks.1.hook_mid"]


def test_print_hook_list_aligns_shapes_and_notes_flags(toy, capsys):
    toy.print_hook_list("blocks.0")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocks.0.hook_mid", "blocks.0.hook_extra", "blocks.0.hook_mlp_out"]
    assert len({line.index("batch d_model") for line in lines}) == 1  # one column for shapes
    assert lines[1].endswith("(needs use_extra=True)") and "needs" not in lines[0]


def test_print_hook_list_says_when_nothing_matches(toy, capsys):
    toy.print_hook_list("nothing_like_this")
    assert "No hook matches" in capsys.readouterr().out
