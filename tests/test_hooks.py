"""HookPoint and HookedRootModule on a toy model: hooks fire, names are checked, and every temporary
hook is gone when its call ends, however it ends."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from lensutil.hooks.activation_cache import ActivationCache
from lensutil.errors import HookFlagError, HookNameError, HookShapeError, LensError, close_matches
from lensutil.hooks.root_module import HookedRootModule
from lensutil.hooks.hook_points import HookPoint, LensHandle


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


@pytest.mark.parametrize("wrap", [lambda g: (g,), lambda g: g], ids=["one_tuple", "bare_tensor"])
def test_bwd_hook_may_return_a_one_tuple_or_a_bare_tensor(toy, wrap):
    # TransformerLens' own tests return (grad,) from backward hooks; both forms replace the gradient.
    toy.add_hook("hook_out", lambda g, hook: wrap(torch.zeros_like(g)), dir="bwd")
    toy(x_in(), return_loss=True).backward()
    assert all(p.grad is None or not p.grad.any() for p in toy.parameters())


def test_bwd_hook_returning_none_keeps_the_gradient(toy):
    toy(x_in(), return_loss=True).backward()
    plain = [p.grad.clone() for p in toy.parameters()]
    toy.zero_grad()
    toy.add_hook("hook_out", lambda g, hook: None, dir="bwd")
    toy(x_in(), return_loss=True).backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(toy.parameters(), plain))


@pytest.mark.parametrize("result", [lambda g: (g, g), lambda g: (None,), lambda g: [g]],
                         ids=["two_tuple", "tuple_of_none", "list"])
def test_bwd_hook_returning_another_container_raises_lens_error(toy, result):
    toy.add_hook("hook_out", lambda g, hook: result(g), dir="bwd")
    with pytest.raises(LensError, match=r"'hook_out' returned .*\(grad,\)"):
        toy(x_in(), return_loss=True).backward()


def test_backward_pre_hook_registered_directly_fires(toy):
    # torch's own register_full_backward_pre_hook, on a hook point with nothing else attached.
    seen = []
    toy.hook_dict["hook_out"].register_full_backward_pre_hook(lambda module, grad_out: seen.append(grad_out[0].shape))
    toy(x_in(), return_loss=True).backward()
    assert seen == [torch.Size([2, 4])]


@pytest.mark.parametrize("register", [
    lambda hp: hp.register_forward_hook(lambda m, i, o: None),
    lambda hp: hp.register_forward_pre_hook(lambda m, i: None),
    lambda hp: hp.register_full_backward_hook(lambda m, gi, go: None),
    lambda hp: hp.register_full_backward_pre_hook(lambda m, go: None),
], ids=["forward", "forward_pre", "backward", "backward_pre"])
def test_has_hooks_counts_every_hook_kind(toy, register):
    hp = toy.hook_dict["blocks.0.hook_mid"]
    handle = register(hp)
    assert hp.has_hooks
    handle.remove()
    assert not hp.has_hooks


def test_hook_point_runs_forward_hooks_as_nn_module_does(toy):
    # HookPoint calls plain forward hooks itself (skipping nn.Module's call machinery) and hands
    # the rest to nn.Module: the same hooks in the same order must give the same result either way.
    hp, x = toy.hook_dict["hook_in"], x_in()
    seen = []
    hp.register_forward_hook(lambda m, args, out: seen.append(("torch", args[0] is x)) or out * 2)
    with toy.hooks(fwd_hooks=[("hook_in", lambda t, hook: seen.append(("lens", t.clone())) or t + 1)]):
        fast = hp(x)
        assert seen[0] == ("torch", True) and torch.equal(seen[1][1], x * 2)  # each sees the output so far
        hp.register_forward_pre_hook(lambda m, args: None)  # a pre-hook sends the call through nn.Module
        slow = hp(x)
    assert torch.equal(fast, x * 2 + 1) and torch.equal(slow, fast)


def test_hook_point_keeps_torch_hooks_that_take_kwargs_or_always_run(toy):
    hp, x = toy.hook_dict["hook_in"], x_in()
    calls = []
    hp.register_forward_hook(lambda m, args, kwargs, out: calls.append("kwargs") or out + 1, with_kwargs=True)
    hp.register_forward_hook(lambda m, args, out: calls.append("always"), always_call=True)
    assert torch.equal(hp(x), x + 1) and calls == ["kwargs", "always"]


# ---- names ---------------------------------------------------------------------------------------

def test_unknown_hook_name_lists_close_matches(toy):
    with pytest.raises(HookNameError) as err:
        toy.add_hook("blocks.0.mlp.hook_mlp_out", lambda t, hook: None)
    msg = str(err.value)
    assert "No hook named 'blocks.0.mlp.hook_mlp_out'" in msg
    assert "'blocks.0.hook_mlp_out'" in msg and "model.find_hooks()" in msg


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


def test_names_filter_that_is_part_of_many_names_lists_them_and_the_callable_form(toy):
    with pytest.raises(HookNameError) as err:
        toy.run_with_cache(x_in(), names_filter="mlp_out")
    msg = str(err.value)
    assert "No hook named 'mlp_out'" in msg
    assert "'blocks.0.hook_mlp_out', 'blocks.1.hook_mlp_out'" in msg
    assert "names_filter=lambda name: 'mlp_out' in name" in msg
    assert n_attached(toy) == 0


def test_hook_name_that_is_part_of_many_names_shows_a_filter_for_add_hook(toy):
    with pytest.raises(HookNameError, match=r"lambda name: 'hook_mid' in name"):
        toy.add_hook("hook_mid", lambda t, hook: None)


class DeepToy(HookedRootModule):
    """24 blocks, so that a typo in layer 0 has near namesakes in blocks.10 and blocks.20."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ToyBlock() for _ in range(24)])
        self.setup()


def _layers(message: str) -> list[str]:
    return re.findall(r"'(blocks\.\d+)\.", message.split("Did you mean:")[1])


def _same_layer_first(found: list[str], layer: str) -> bool:
    return found == sorted(found, key=lambda f: not f.startswith(layer + "."))  # a stable sort moves nothing


def test_close_matches_list_the_same_layer_first():
    model = DeepToy()
    with pytest.raises(HookNameError) as err:
        model.add_hook("blocks.0.hook_mdi", lambda t, hook: None)
    assert str(err.value).split("Did you mean: ")[1].startswith("'blocks.0.hook_mid'")
    layers = _layers(str(err.value))
    assert layers[:2] == ["blocks.0", "blocks.0"] and layers == sorted(layers, key=lambda l: l != "blocks.0")
    with pytest.raises(HookNameError) as err:
        model.add_hook("blocks.0.mlp.hook_mlp_out", lambda t, hook: None)
    assert str(err.value).split("Did you mean: ")[1].startswith("'blocks.0.hook_mlp_out', 'blocks.0.")


def test_close_matches_on_a_30_layer_name_set_prefer_the_typed_layer():
    names = [f"blocks.{i}.attn.{h}" for i in range(30) for h in ("hook_pattern", "hook_attn_scores", "hook_z", "hook_q")]
    for layer in (0, 7, 29):
        found = close_matches(f"blocks.{layer}.attn.hook_patern", names)
        assert found[0] == f"blocks.{layer}.attn.hook_pattern"
        assert found[1].startswith(f"blocks.{layer}.") and _same_layer_first(found, f"blocks.{layer}")
    # a layer the model does not have: the nearest names of any layer
    assert close_matches("blocks.31.attn.hook_pattern", names)[0].endswith("attn.hook_pattern")


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
    assert not hp.fwd_hooks and not hp._forward_hooks and len(hp.bwd_hooks) == 1
    assert hp.has_hooks  # has_hooks counts the backward hook too
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


def test_bwd_hooks_removed_on_return_still_see_this_runs_backward(toy):
    # PyTorch 2.x binds backward hooks into the graph during forward, so removing them afterwards
    # does not stop them for this graph (TransformerLens 2.x warns otherwise); no warning is due.
    grads = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = toy.run_with_hooks(x_in(), bwd_hooks=[("hook_out", lambda g, hook: grads.append(g))])
    assert n_attached(toy) == 0
    out.sum().backward()
    assert len(grads) == 1


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

def test_find_hooks_matches_glob_substring_and_regex(toy):
    assert len(toy.find_hooks()) == 8
    assert toy.find_hooks("blocks.*.hook_mid") == ["blocks.0.hook_mid", "blocks.1.hook_mid"]
    assert toy.find_hooks("mlp_out") == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert toy.find_hooks(re.compile(r"^hook_")) == ["hook_in", "hook_out"]
    assert toy.find_hooks("blocks.[1].hook_m?d") == ["blocks.1.hook_mid"]


def test_list_hooks_returns_attached_hooks_by_name_like_transformerlens_3(toy):
    def mine(t, hook):
        return None

    def grad_hook(g, hook):
        return None

    assert toy.list_hooks() == {}
    toy.add_hook("hook_in", mine, is_permanent=True)
    toy.add_hook("blocks.1.hook_mid", mine)
    toy.add_hook("blocks.1.hook_mid", grad_hook, dir="bwd")
    attached = toy.list_hooks()
    assert list(attached) == ["hook_in", "blocks.1.hook_mid"]  # hook points with nothing attached are left out
    assert all(isinstance(h, LensHandle) for hs in attached.values() for h in hs)
    assert [h.user_hook for h in attached["blocks.1.hook_mid"]] == [mine, grad_hook]
    assert attached["hook_in"][0].is_permanent
    assert [h.user_hook for h in toy.list_hooks(dir="bwd")["blocks.1.hook_mid"]] == [grad_hook]
    assert list(toy.list_hooks(including_permanent=False)) == ["blocks.1.hook_mid"]
    assert list(toy.list_hooks("hook_in")) == ["hook_in"]  # a string is one exact name
    assert list(toy.list_hooks(["hook_out", "blocks.1.hook_mid"])) == ["blocks.1.hook_mid"]
    assert list(toy.list_hooks(lambda name: name.startswith("blocks"))) == ["blocks.1.hook_mid"]
    toy.reset_hooks(including_permanent=True)
    assert toy.list_hooks() == {}


def test_list_hooks_with_a_search_pattern_points_to_find_hooks(toy):
    # lensutil's old list_hooks(pattern) searched names; TransformerLens 3.3+'s lists attached hooks.
    with pytest.raises(HookNameError, match=r"model\.find_hooks\('mlp_out'\)"):
        toy.list_hooks("mlp_out")


def test_print_hook_list_aligns_shapes_and_notes_flags(toy, capsys):
    toy.print_hook_list("blocks.0")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocks.0.hook_mid", "blocks.0.hook_extra", "blocks.0.hook_mlp_out"]
    assert len({line.index("batch d_model") for line in lines}) == 1  # one column for shapes
    assert lines[1].endswith("(needs use_extra=True)") and "needs" not in lines[0]


def test_print_hook_list_says_when_nothing_matches(toy, capsys):
    toy.print_hook_list("nothing_like_this")
    assert "No hook matches" in capsys.readouterr().out
