"""lensutil.transformer_lens: TransformerLens 2.x's module paths, the opt-in alias, FactoredMatrix and the utils helpers."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lensutil
from lensutil.errors import FactoredMatrixBroadcastError, FactoredMatrixShapeError, LensError
from lensutil.factored_matrix import FactoredMatrix, composition_scores
from lensutil.tensor_helpers import Slice, is_lower_triangular, is_square, remove_batch_dim, to_numpy
from lensutil.model.init_functions import calc_fan_in_and_fan_out, init_kaiming_uniform_, init_xavier_normal_


def _run(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter: the alias changes sys.modules and sys.meta_path, which this process must keep."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_importing_lensutil_does_not_touch_transformer_lens():
    out = _run("""
        import sys, lensutil
        assert 'transformer_lens' not in sys.modules, 'alias made by import lensutil'
        assert 'lensutil.transformer_lens' not in sys.modules
        try:
            import transformer_lens
        except ImportError:
            print('no transformer_lens')
        else:
            assert not transformer_lens.__name__.startswith('lensutil'), transformer_lens
            print('real transformer_lens')
    """)
    assert out.returncode == 0, out.stderr


def test_use_as_transformer_lens_makes_plain_imports_give_lensutil():
    out = _run("""
        import lensutil.transformer_lens as tl
        tl.use_as_transformer_lens()
        import transformer_lens
        import transformer_lens.utils as utils
        from transformer_lens.hook_points import HookPoint
        from transformer_lens.HookedTransformer import HookedTransformer
        from transformer_lens import FactoredMatrix, HookedTransformerConfig
        import lensutil
        assert transformer_lens is tl and utils is tl.utils
        assert HookPoint is lensutil.HookPoint and HookedTransformer is lensutil.HookedTransformer
        assert transformer_lens.HookedTransformer is HookedTransformer  # the class, not the module of that name
        assert HookedTransformerConfig is lensutil.HookedTransformerConfig
        assert tl.utils.__spec__.name == 'lensutil.transformer_lens.utils'  # its own name kept
        try:
            import transformer_lens.no_such_module
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError('a missing submodule imported')
        tl.stop_using_as_transformer_lens()
        import sys
        assert not [m for m in sys.modules if m.startswith('transformer_lens')]
        print('ok')
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_use_as_transformer_lens_refuses_when_a_real_one_is_imported():
    out = _run("""
        import sys, types
        sys.modules['transformer_lens'] = types.ModuleType('transformer_lens')  # stands for TL 4, imported first
        import lensutil.transformer_lens as tl
        from lensutil.errors import LensError
        try:
            tl.use_as_transformer_lens()
        except LensError as e:
            print(str(e))
        else:
            raise AssertionError('not refused')
        assert not tl.__name__ == sys.modules['transformer_lens'].__name__
    """)
    assert out.returncode == 0, out.stderr
    assert "already imported" in out.stdout and "use_as_transformer_lens() before" in out.stdout


# ---- FactoredMatrix ----------------------------------------------------------------------------
def test_factored_matrix_products_equal_the_full_matrix():
    torch.manual_seed(0)
    a, b, m = torch.randn(2, 5, 3), torch.randn(3, 6), torch.randn(6, 4)
    fm = FactoredMatrix(a, b)
    assert fm.shape == (2, 5, 6) and fm.ndim == 3 and fm.mdim == 3
    torch.testing.assert_close((fm @ m).AB, a @ b @ m)
    left = torch.randn(7, 5)
    torch.testing.assert_close((left @ fm).AB, left @ a @ b)
    v = torch.randn(6)
    torch.testing.assert_close(fm @ v, a @ b @ v)
    other = FactoredMatrix(torch.randn(6, 2), torch.randn(2, 4))
    torch.testing.assert_close((fm @ other).AB, a @ b @ other.AB)
    torch.testing.assert_close((3 * fm).AB, 3 * (a @ b))
    torch.testing.assert_close(fm.T.AB, (a @ b).transpose(-1, -2))


def test_factored_matrix_svd_norm_and_eigenvalues():
    torch.manual_seed(1)
    fm = FactoredMatrix(torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64))
    U, S, Vh = fm.svd()
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh.mT, fm.AB)  # TransformerLens' Vh is V
    torch.testing.assert_close(fm.norm(), fm.AB.norm(dim=(-2, -1)))
    torch.testing.assert_close(fm.make_even().AB, fm.AB)
    torch.testing.assert_close(U @ fm.collapse_l(), fm.AB)
    torch.testing.assert_close(fm.collapse_r() @ Vh.mT, fm.AB)
    top = torch.linalg.eigvals(fm.AB).abs().sort(descending=True).values[..., :4]
    torch.testing.assert_close(fm.eigenvalues.abs().sort(descending=True).values, top)


def test_factored_matrix_svd_follows_an_in_place_edit():
    fm = FactoredMatrix(torch.randn(4, 2), torch.randn(2, 4))
    before = fm.S.clone()
    fm.A.mul_(2)  # TransformerLens' lru_cache would still answer with the old SVD
    torch.testing.assert_close(fm.S, 2 * before)


def test_factored_matrix_indexing_keeps_rows_and_columns():
    fm = FactoredMatrix(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 4, 6))
    assert fm[0].shape == (3, 5, 6)
    assert fm[0, 1, 2].shape == (1, 6)
    torch.testing.assert_close(fm[0, 1, 2, 3].AB.squeeze(), fm.AB[0, 1, 2, 3])
    torch.testing.assert_close(fm.get_corner(2), fm.AB[:2, :2, :2, :2])
    with pytest.raises(IndexError):
        fm[0, 0, 0, 0, 0]


def test_factored_matrix_shape_errors_are_lens_errors_and_what_tl_raised():
    with pytest.raises(FactoredMatrixShapeError, match="inner dimension") as e:
        FactoredMatrix(torch.randn(3, 4), torch.randn(5, 6))
    assert isinstance(e.value, AssertionError) and isinstance(e.value, LensError)
    with pytest.raises(FactoredMatrixBroadcastError, match="Shape mismatch") as e:
        FactoredMatrix(torch.randn(9, 5, 3), torch.randn(2, 4, 3, 7))
    assert isinstance(e.value, RuntimeError)
    with pytest.raises(AssertionError):
        FactoredMatrix(torch.randn(3, 4), torch.randn(4, 6)) @ torch.randn(5, 6)
    with pytest.raises(AssertionError):
        _ = FactoredMatrix(torch.randn(3, 4), torch.randn(4, 6)).BA


def test_model_ov_and_qk_circuits_and_composition_scores():
    cfg = lensutil.HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=2, d_mlp=32, d_vocab=20, act_fn="gelu_new", seed=0
    )
    model = lensutil.HookedTransformer(cfg)
    assert model.OV.shape == (2, 2, 16, 16) and model.QK.shape == (2, 2, 16, 16)
    block = model.blocks[1].attn
    torch.testing.assert_close(model.OV[1, 0].AB, block.W_V[0] @ block.W_O[0])
    torch.testing.assert_close(model.QK[1, 1].AB, block.W_Q[1] @ block.W_K[1].T)
    assert model.b_Q.shape == (2, 2, 4) and model.b_O.shape == (2, 16) and model.W_gate is None
    scores = model.all_composition_scores("Q")
    assert scores.shape == (2, 2, 2, 2)
    assert (scores[1, :, 0] == 0).all() and (scores[0, :, 1] > 0).all()  # only later heads compose
    direct = composition_scores(model.OV[0, 1], model.QK[1, 0])
    torch.testing.assert_close(scores[0, 1, 1, 0], direct)
    torch.testing.assert_close(model.accumulated_bias(1), model.blocks[0].attn.b_O + model.blocks[0].mlp.b_out)


# ---- utils -----------------------------------------------------------------------------------
def test_slice_forms():
    x = torch.arange(12).reshape(4, 3)
    assert Slice(1).apply(x).shape == (3,)  # an int drops the dimension
    assert Slice([1]).apply(x).shape == (1, 3)  # a list keeps it
    assert Slice((1, 3)).apply(x).tolist() == x[1:3].tolist()
    assert Slice(None).apply(x) is not None and Slice(None).apply(x).shape == (4, 3)
    assert Slice(torch.tensor([0, 2])).apply(x, dim=-1).tolist() == x[:, [0, 2]].tolist()
    assert Slice(-1).indices().tolist() == [-1]
    assert Slice((1, None)).indices(4).tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        Slice([0, 2]).indices()
    assert Slice.unwrap(2).apply(x).shape == (1, 3)


def test_shape_predicates_and_conversions():
    assert is_square(torch.ones(3, 3)) and not is_square(torch.ones(3, 3, 3)) and not is_square(torch.ones(2, 3))
    assert is_lower_triangular(torch.ones(4, 4).tril()) and not is_lower_triangular(torch.ones(4, 4).triu())
    assert remove_batch_dim(torch.ones(1, 2, 3)).shape == (2, 3) and remove_batch_dim(torch.ones(2, 3)).shape == (2, 3)
    assert isinstance(to_numpy(torch.ones(2, requires_grad=True)), np.ndarray) and to_numpy([1, 2]).tolist() == [1, 2]


def test_initialisers_use_transformer_lens_fans():
    assert calc_fan_in_and_fan_out(torch.empty(2, 25, 5)) == (25, 10)
    assert calc_fan_in_and_fan_out(torch.empty(7)) == (1, 7)
    with pytest.raises(ValueError):
        calc_fan_in_and_fan_out(torch.empty(()))
    torch.manual_seed(0)
    w = init_kaiming_uniform_(torch.empty(400, 300), nonlinearity="relu")
    bound = (2.0 ** 0.5) * (3.0 / 400) ** 0.5  # gain sqrt(2) for relu, fan_in 400
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    w = init_xavier_normal_(torch.empty(2000, 1000))
    assert abs(w.std().item() - (2.0 / 3000) ** 0.5) < 0.01 * (2.0 / 3000) ** 0.5
