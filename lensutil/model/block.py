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
from .norm import Norm, make_norm


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


POST_NORM_KIND = {"LN": "LN", "LNPre": "LN", "RMS": "RMS", "RMSPre": "RMS"}  # ln1_post / ln2_post: never folded


class TransformerBlock(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, index: int):
        super().__init__()
        check_hook_flags(cfg)
        self.cfg, self.index = cfg, index
        if cfg.norm_position != "output":  # OLMo 2 has no norm before attention and the MLP
            self.ln1 = make_norm(cfg)
            if not cfg.attn_only:  # attention-only blocks have no second norm, MLP or MLP hooks (TransformerLens')
                self.ln2 = make_norm(cfg)
        if cfg.use_normalization_before_and_after or cfg.norm_position == "output":
            # Norms of attention's and the MLP's outputs (TransformerLens' ln1_post, ln2_post) keep their
            # weights after fold_ln, as in TransformerLens: no later weight reads only their output.
            kind = POST_NORM_KIND[cfg.normalization_type]
            self.ln1_post = Norm(cfg, kind)
            if not cfg.attn_only:
                self.ln2_post = Norm(cfg, kind)
        attention = GroupedQueryAttention if cfg.n_key_value_heads is not None else Attention
        self.attn = attention(cfg, cfg.attn_type(index))
        if not cfg.attn_only:
            kind = cfg.layer_mlp_type(index)  # a Qwen2-MoE has dense (gated) MLPs on some layers
            self.mlp = MoE(cfg) if kind == "moe" else MLP(cfg, gated=kind == "gated")
        self.hook_resid_pre = HookPoint("batch pos d_model")
        self.hook_attn_in = HookPoint("batch pos head_index d_model")  # needs use_attn_in
        self.hook_q_input = HookPoint("batch pos head_index d_model")  # needs use_split_qkv_input
        self.hook_k_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_v_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_attn_out = HookPoint("batch pos d_model")
        if not cfg.parallel_attn_mlp and not cfg.attn_only:  # parallel: no residual stream between attention and MLP (TransformerLens)
            self.hook_resid_mid = HookPoint("batch pos d_model")
        if not cfg.attn_only:
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
        norm_in = m["ln1"] if cfg.norm_position == "pre" else (lambda x: x)  # post-LN, "output": attention reads the raw stream
        if cfg.use_split_qkv_input:  # a separate copy of the residual per head and per q/k/v
            per_head = lambda n: resid.unsqueeze(2).expand(-1, -1, n, -1).clone()  # noqa: E731
            q_in = norm_in(m["hook_q_input"](per_head(cfg.n_heads)))
            k_in = norm_in(m["hook_k_input"](per_head(cfg.n_kv_heads)))
            v_in = norm_in(m["hook_v_input"](per_head(cfg.n_kv_heads)))
        elif cfg.use_attn_in:
            q_in = k_in = v_in = norm_in(m["hook_attn_in"](resid.unsqueeze(2).expand(-1, -1, cfg.n_heads, -1).clone()))
        else:
            q_in = k_in = v_in = norm_in(resid)
        if ctx.shortformer_pos is not None:  # shortformer: positions join the queries and keys, never the values
            pos = ctx.shortformer_pos if q_in.ndim == 3 else ctx.shortformer_pos.unsqueeze(2)  # per-head inputs
            q_in, k_in = q_in + pos, k_in + pos
        attn_out = m["attn"](q_in, k_in, v_in, ctx, kv_cache_entry)
        if "ln1_post" in m:  # Gemma 2/3, OLMo 2: hook_attn_out is what joins the residual stream
            attn_out = m["ln1_post"](attn_out)
        attn_out = m["hook_attn_out"](attn_out)
        if cfg.attn_only:
            return m["hook_resid_post"](resid + attn_out)
        if cfg.parallel_attn_mlp:  # GPT-NeoX: both read the block's input
            mlp_in = m["hook_mlp_in"](resid.clone()) if cfg.use_hook_mlp_in else resid
            mlp_out = m["hook_mlp_out"](m["mlp"](m["ln2"](mlp_in)))
            # HF's order, (mlp + attn) + resid (GPTNeoXLayer); TransformerLens adds resid + attn first,
            # which rounds otherwise.
            return m["hook_resid_post"](mlp_out + attn_out + resid)
        resid = m["hook_resid_mid"](resid + attn_out)
        mlp_in = m["hook_mlp_in"](resid.clone()) if cfg.use_hook_mlp_in else resid
        if cfg.norm_position == "post":  # BERT: LayerNorm after each residual addition, as HF's BertLayer
            resid = m["ln1"](mlp_in)
            resid_post = m["hook_resid_post"](resid + m["hook_mlp_out"](m["mlp"](resid)))
            return m["hook_normalized_resid_post"](m["ln2"](resid_post))
        mlp_out = m["mlp"](m["ln2"](mlp_in) if cfg.norm_position == "pre" else mlp_in)
        if "ln2_post" in m:
            mlp_out = m["ln2_post"](mlp_out)
        return m["hook_resid_post"](resid + m["hook_mlp_out"](mlp_out))
