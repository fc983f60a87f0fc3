"""TransformerBlock: norm, attention, norm, MLP (or MoE), with the residual hooks."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from ..hooks.hook_points import HookPoint
from .attention import Attention, GroupedQueryAttention
from .context import AttentionContext
from .mlp import MLP
from .moe import MoE
from .norm import make_norm


def check_hook_flags(cfg: HookedTransformerConfig) -> None:
    if cfg.use_split_qkv_input and cfg.use_attn_in:
        raise ConfigError("use_split_qkv_input and use_attn_in cannot both be on; turn one off first.")
    if cfg.attn_only and cfg.norm_position == "post":
        raise ConfigError("attn_only blocks are pre-norm (TransformerLens'); norm_position='post' needs an MLP after attention.")
    if cfg.use_attn_in and cfg.n_kv_heads != cfg.n_heads:
        raise ConfigError(
            "use_attn_in gives one attention input per query head, which grouped-query attention "
            "cannot use (key/value heads are shared); use set_use_split_qkv_input(True) instead."
        )


def _moe(cfg: HookedTransformerConfig) -> nn.Module:
    return MoE(cfg)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, index: int):
        super().__init__()
        check_hook_flags(cfg)
        self.cfg, self.index = cfg, index
        self.ln1 = make_norm(cfg)
        self.attn = GroupedQueryAttention(cfg) if cfg.n_key_value_heads is not None else Attention(cfg)
        if not cfg.attn_only:  # attention-only blocks have no second norm, MLP or MLP hooks (TransformerLens')
            self.ln2 = make_norm(cfg)
            self.mlp = MLP(cfg) if cfg.mlp_type != "moe" else _moe(cfg)
        self.hook_resid_pre = HookPoint("batch pos d_model")
        self.hook_attn_in = HookPoint("batch pos head_index d_model")  # needs use_attn_in
        self.hook_q_input = HookPoint("batch pos head_index d_model")  # needs use_split_qkv_input
        self.hook_k_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_v_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_attn_out = HookPoint("batch pos d_model")
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint("batch pos d_model")
            self.hook_mlp_in = HookPoint("batch pos d_model")  # needs use_hook_mlp_in
            self.hook_mlp_out = HookPoint("batch pos d_model")
        self.hook_resid_post = HookPoint("batch pos d_model")  # post-LN: before ln2 (TransformerLens' BertBlock)
        if cfg.norm_position == "post":
            self.hook_normalized_resid_post = HookPoint("batch pos d_model")  # ln2's output: the block's output

    def forward(self, resid: Float[Tensor, "batch pos d_model"], ctx: AttentionContext, kv_cache_entry=None):
        # Submodules read from nn.Module's own dict: `self.ln1` goes through nn.Module.__getattr__, a
        # Python frame per read, ~10 reads per layer per generated token.
        cfg, m = self.cfg, self._modules
        resid = m["hook_resid_pre"](resid)
        norm_in = m["ln1"] if cfg.norm_position == "pre" else (lambda x: x)  # post-LN: attention reads the raw stream
        if cfg.use_split_qkv_input:  # a separate copy of the residual per head and per q/k/v
            per_head = lambda n: resid.unsqueeze(2).expand(-1, -1, n, -1).clone()  # noqa: E731
            q_in = norm_in(m["hook_q_input"](per_head(cfg.n_heads)))
            k_in = norm_in(m["hook_k_input"](per_head(cfg.n_kv_heads)))
            v_in = norm_in(m["hook_v_input"](per_head(cfg.n_kv_heads)))
        elif cfg.use_attn_in:
            q_in = k_in = v_in = norm_in(m["hook_attn_in"](resid.unsqueeze(2).expand(-1, -1, cfg.n_heads, -1).clone()))
        else:
            q_in = k_in = v_in = norm_in(resid)
        attn_out = m["hook_attn_out"](m["attn"](q_in, k_in, v_in, ctx, kv_cache_entry))
        if cfg.attn_only:
            return m["hook_resid_post"](resid + attn_out)
        resid = m["hook_resid_mid"](resid + attn_out)
        mlp_in = m["hook_mlp_in"](resid.clone()) if cfg.use_hook_mlp_in else resid
        if cfg.norm_position == "post":  # BERT: LayerNorm after each residual addition, as HF's BertLayer
            resid = m["ln1"](mlp_in)
            resid_post = m["hook_resid_post"](resid + m["hook_mlp_out"](m["mlp"](resid)))
            return m["hook_normalized_resid_post"](m["ln2"](resid_post))
        mlp_out = m["hook_mlp_out"](m["mlp"](m["ln2"](mlp_in)))
        return m["hook_resid_post"](resid + mlp_out)
