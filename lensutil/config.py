"""HookedTransformerConfig: the handful of typed fields that say how one architecture differs from another.

Components read these fields and never a model's name (../shared/STYLE.md: architectures are data).
Field names follow TransformerLens so that `model.cfg.n_layers` and friends read as users expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from .config_checks import check_moe, check_rope
from .config_names import set_seed_everywhere, with_tl_names
from .errors import ConfigError


Normalization = Literal["LN", "LNPre", "RMS", "RMSPre"] | None  # None: no norms at all (TransformerLens')
Positional = Literal["standard", "rotary", "shortformer"]
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"  # from_pretrained's and the config's; the checks load HuggingFace in it too
MlpType = Literal["dense", "gated", "moe"]  # "moe": a router and num_experts gated experts (lensutil/model/moe.py)
InitMode = Literal["gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]
BIAS_NAMES = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")  # the biases a layer may lack in HuggingFace
ActFn = Literal["gelu_new", "gelu_fast", "gelu", "gelu_pytorch_tanh", "silu", "relu", "solu", "solu_ln", "xielu"]
ACT_FNS: tuple[str, ...] = ActFn.__args__  # lensutil/model/activations.py computes each

# Hooks that exist on every block but only fire when a flag is on (they cost memory or a copy).
FLAG_GATED_HOOKS: dict[str, str] = {
    "attn.hook_result": "use_attn_result",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_attn_in": "use_attn_in",
    "hook_mlp_in": "use_hook_mlp_in",
}


@with_tl_names  # also takes TransformerLens 2.x's names (gated_mlp=, use_attn_scale=, ...): config_names.py
@dataclasses.dataclass
class HookedTransformerConfig:
    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    # TransformerLens' defaults: n_heads = d_model // d_head, d_mlp = 4 * d_model, d_vocab from the
    # tokenizer (-1 until then), d_vocab_out = d_vocab.
    n_heads: int = -1
    d_mlp: int | None = None
    d_vocab: int = -1
    act_fn: ActFn = "gelu_new"
    eps: float = 1e-5
    normalization_type: Normalization = "LN"
    positional_embedding_type: Positional = "standard"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    # RoPE scaling (lensutil/model/rotary_scaling.py, as HuggingFace's modeling_rope_utils.py). Llama 3.x's
    # "llama3" scaling under TransformerLens' names (NTK-by-parts); the other kinds in rope_scaling:
    # HF's rope parameters, {"rope_type": "linear" | "dynamic" | "yarn" | "longrope", "factor": ..., ...,
    # "max_position_embeddings": HF's, which dynamic, yarn and longrope read; n_ctx may be set lower}.
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    rope_scaling: dict | None = None
    n_key_value_heads: int | None = None
    # Attention and MLP both read the block's input and add to it (GPT-NeoX's use_parallel_residual,
    # GPT-J): no hook_resid_mid. TransformerLens' name.
    parallel_attn_mlp: bool = False
    mlp_type: MlpType = "dense"
    window_size: int | None = None  # sliding-window attention: a query sees the last window_size keys
    # Which layers slide (TransformerLens' attn_types): "global" (causal) or "local" (the window_size
    # window), one per layer, as HF's config.layer_types ("full_attention"/"sliding_attention") says:
    # Qwen2's layers from max_window_layers on, Gemma 2's every other one, Gemma 3's five in six.
    # None: every layer "local" when window_size is set (Mistral), else "global". TransformerLens also
    # wants use_local_attn=True beside them; here attn_types alone says it.
    attn_types: list[str] | None = None
    rotary_base_local: float | None = None  # the local layers' rotary base (TransformerLens' name; Gemma 3); None: rotary_base
    # How an RMSNorm meets its weight w, as the HuggingFace model being matched does it:
    # norm_weight_offset: it multiplies by (offset + w). Gemma stores w and multiplies by (1 + w);
    # TransformerLens folds the 1 into w at load, lensutil keeps HF's w and adds the offset at run time
    # in float32, so that bfloat16 weights round as HF's (1 + w in bfloat16 is not 1 + w in float32).
    # norm_upcast_weight: the weight multiplies the float32 normalised value before the cast back to the
    # model's dtype (Gemma, OLMo 2), not after it (Llama). The two are the same in a float32 model.
    norm_weight_offset: float = 0.0
    norm_upcast_weight: bool = False
    # Rotary angles kept in float32 and q, k rotated in float32 before the cast back (OLMo 2's order), not
    # cast to the model's dtype first (Llama's). The same in a float32 model.
    rotary_upcast: bool = False
    # RMSNorm of the queries and keys before rotary (TransformerLens' use_qk_norm; modules attn.q_norm,
    # attn.k_norm, with their hook_scale / hook_normalized): over each head's d_head ("head": Qwen3,
    # Gemma 3, as TransformerLens 2.18), or over the whole projection ("all_heads": OLMo 2, whose
    # q_norm has n_heads * d_head weights and k_norm n_kv_heads * d_head).
    use_qk_norm: bool = False
    qk_norm_scope: Literal["head", "all_heads"] = "head"
    # Encoders (BERT): every query sees every real key ("bidirectional", TransformerLens' attention_dir);
    # "post" puts each LayerNorm after its residual addition (BERT's order, TransformerLens' BertBlock);
    # n_token_types > 0 adds a token-type (segment) embedding to the token and position embeddings.
    attention_dir: Literal["causal", "bidirectional"] = "causal"
    # "output" (OLMo 2): no norm before attention or the MLP; each one's output is normalised (ln1_post,
    # ln2_post) before it joins the residual stream.
    norm_position: Literal["pre", "post", "output"] = "pre"
    # Gemma 2/3 (TransformerLens' names): a norm before (ln1, ln2) and after (ln1_post, ln2_post) attention
    # and the MLP; hook_attn_out / hook_mlp_out are after the second, what joins the residual stream.
    use_normalization_before_and_after: bool = False
    # Gemma 2 (TransformerLens' names): scores -> cap * tanh(scores / cap) before the mask and softmax, and
    # the same for the logits; -1: none. A soft-capped model's attention is always written out (torch's
    # fused kernel cannot cap), as HuggingFace's Gemma 2, which has no sdpa path.
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    # Gemma: scores are multiplied by query_pre_attn_scalar ** -0.5 (HF's rounding of that factor), not
    # d_head ** -0.5; attn_scale (TransformerLens' divisor) is then its square root.
    query_pre_attn_scalar: float | None = None
    n_token_types: int = 0
    mlm_head: bool = False  # BertForMaskedLM's transform, LayerNorm and decoder before the unembedding
    pooler: bool = False  # BertModel's pooler (tanh of a linear map of the first token's hidden state)
    nsp_head: bool = False  # BertForNextSentencePrediction's head: the pooled state -> 2 logits (is B next?)
    # Mixture of experts (mlp_type="moe"), TransformerLens' names: experts per layer, experts each token uses.
    num_experts: int | None = None
    experts_per_token: int | None = None
    # The dtype the router's logits are computed in. None: float32 whatever the model's dtype
    # (float64 in a float64 model); the router's weight is kept in it. HuggingFace's Mixtral runs
    # its router in the model's dtype: set router_dtype=torch.bfloat16 on a bfloat16 model to match it.
    router_dtype: torch.dtype | None = None
    # Qwen2-MoE / Qwen3-MoE (HuggingFace's names in brackets; TransformerLens 2.18 has no such models):
    # the layers whose MLP is the mixture of experts (decoder_sparse_step, mlp_only_layers), None: every
    # layer; the others have a gated MLP of width d_mlp. d_mlp_expert: each routed expert's width
    # (moe_intermediate_size), None: d_mlp (Mixtral). d_mlp_shared_expert: a gated MLP every token goes
    # through beside its routed experts, scaled by sigmoid(x @ W) of a [d_model, 1] gate
    # (shared_expert_intermediate_size), None: none. norm_topk_prob: the top-k probabilities are
    # renormalised to sum to 1 (Mixtral always does). cast_routing_weights: they are cast to the router
    # logits' dtype before scaling the experts' outputs (Qwen's routers do; Mixtral's keep float32).
    moe_layers: tuple[int, ...] | None = None
    d_mlp_expert: int | None = None
    d_mlp_shared_expert: int | None = None
    norm_topk_prob: bool = True
    cast_routing_weights: bool = False
    tie_word_embeddings: bool = False
    original_architecture: str = ""
    model_name: str = "custom"
    tokenizer_name: str | None = None
    default_prepend_bos: bool = True
    default_padding_side: Literal["left", "right"] = "right"
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    attn_scale: float | None = None  # TransformerLens' divisor of the scores; sqrt(d_head) if None (or TL's -1)
    # How the scores meet attn_scale, as the HuggingFace model being matched does it (set by the adapter):
    # "divide": scores / attn_scale (TransformerLens; HF GPT-2 before transformers 5.4);
    # "multiply": scores * attn_scale_factor (HF's Llama family; HF GPT-2 from 5.4).
    # The two give the same bits when sqrt(d_head) is a power of two (d_head 4, 16, 64, 256), and
    # differ in the last bit of many scores otherwise (d_head 80, 96, 128: every 7B/8B model).
    attn_scale_rule: Literal["divide", "multiply"] = "divide"
    # "sdpa" (the default, as HuggingFace's): torch's fused kernel whenever no hook watches the scores
    # or the pattern (faster; HF's "sdpa" rounding, bit for bit), the written-out path when one does
    # (run_with_cache of everything does); "eager" always writes attention out (HF's eager rounding,
    # bit for bit). The two differ in the last bits of the logits (lensutil/model/fused_attention.py).
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"  # DEFAULT_ATTN_IMPLEMENTATION
    # How the HuggingFace model stores its attention and MLP matrices, which lensutil stores alike
    # (components._linear_param): "out_in" as nn.Linear (most models), "in_out" as GPT-2's Conv1D.
    # BLAS picks its kernel, and so its rounding, by the matrix's memory layout.
    weight_layout: Literal["out_in", "in_out"] = "out_in"
    # q, k and v computed with one matmul, as GPT-2's c_attn and Phi-3's qkv_proj do (BLAS rounds one
    # wide product otherwise than three narrow ones: model/weight_layout.py). With the "in_out" layout
    # it needs one key/value head per query head. fused_gate_up: gate and up from one matmul (Phi-3's
    # gate_up_proj), "out_in" layout only.
    fused_qkv: bool = False
    fused_gate_up: bool = False
    # Set by weight processing (lensutil.model.processing) so a saved state dict says how it was made.
    folded_ln: bool = False
    centered_writing_weights: bool = False
    centered_unembed: bool = False
    folded_value_biases: bool = False
    d_vocab_out: int = -1  # the unembedding's width (TransformerLens); -1: d_vocab
    # Initial weights of a model built from this config (lensutil/model/initialization.py), TransformerLens'
    # fields: init_weights=False leaves them empty; init_mode "gpt2" draws every matrix from
    # N(0, initializer_range), which -1 sets to 0.8 / sqrt(d_model) (for the xavier and kaiming modes it
    # is their gain, 1 unless set); seed, where set, seeds a generator of the model's own.
    init_weights: bool = True
    init_mode: InitMode = "gpt2"
    initializer_range: float = -1.0
    seed: int | None = None
    # The biases (b_Q, b_K, b_V, b_O, b_in, b_out, b_U) that the source model's layers do not have:
    # lensutil keeps each, zero, as TransformerLens does. While one is all zeros (checked at every
    # call), its layer runs as HuggingFace's bias-free layer does: a plain product (lensutil/model/zero_bias.py).
    # Set by the adapter; () for a model built from a config (every bias is passed, as in TransformerLens).
    absent_biases: tuple[str, ...] = ()
    # Attention-only blocks (TransformerLens' attn_only, the classic toy models): no ln2, no MLP, no
    # hook_resid_mid; each block adds its attention output to the residual stream.
    attn_only: bool = False
    use_hook_tokens: bool = False  # HookedTransformer.hook_tokens, on the token ids (TransformerLens')
    # TransformerLens' bookkeeping, carried for code that reads it; nothing in lensutil reads these.
    from_checkpoint: bool = False
    checkpoint_index: int | None = None
    checkpoint_label_type: str | None = None
    checkpoint_value: int | None = None
    tokenizer_prepends_bos: bool | None = None
    trust_remote_code: bool = False
    decoder_start_token_id: int | None = None

    def __post_init__(self) -> None:
        self._default_sizes()
        if self.attn_scale is None or self.attn_scale == -1.0:  # -1.0: TransformerLens' "not set"
            self.attn_scale = math.sqrt(self.query_pre_attn_scalar or self.d_head)
        for name, allowed in (("attention_dir", ("causal", "bidirectional")), ("norm_position", ("pre", "post", "output"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.attn_implementation not in ("eager", "sdpa"):
            raise ConfigError(
                f"attn_implementation must be 'sdpa' (torch's fused kernel where no hook reads the pattern; the default) "
                f"or 'eager' (attention written out, bit-exact with HuggingFace's eager); got {self.attn_implementation!r}."
            )
        if self.qk_norm_scope not in ("head", "all_heads"):
            raise ConfigError(f"qk_norm_scope must be 'head' (per head, Qwen3) or 'all_heads' (OLMo 2), got {self.qk_norm_scope!r}.")
        if self.attn_scale_rule not in ("divide", "multiply"):
            raise ConfigError(f"attn_scale_rule must be 'divide' or 'multiply', got {self.attn_scale_rule!r}.")
        if self.weight_layout not in ("out_in", "in_out"):
            raise ConfigError(f"weight_layout must be 'out_in' (nn.Linear) or 'in_out' (GPT-2's Conv1D), got {self.weight_layout!r}.")
        if self.norm_position == "output" and self.use_normalization_before_and_after:
            raise ConfigError("norm_position='output' has norms after attention and the MLP only; use_normalization_before_and_after "
                              "adds norms before them too (Gemma 2). Set one of the two.")
        if self.fused_qkv and self.n_key_value_heads is not None and self.weight_layout == "in_out":
            raise ConfigError("fused_qkv with weight_layout='in_out' (GPT-2's Conv1D) needs one key/value head per query head; "
                              "set n_key_value_heads=None, weight_layout='out_in' or fused_qkv=False.")
        if self.fused_gate_up and (self.weight_layout != "out_in" or self.mlp_type != "gated"):
            raise ConfigError("fused_gate_up needs a gated MLP (mlp_type='gated') stored as nn.Linear (weight_layout='out_in'); "
                              f"this config has mlp_type={self.mlp_type!r}, weight_layout={self.weight_layout!r}.")
        self._check_names()
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        check_rope(self)
        if self.parallel_attn_mlp and self.norm_position == "post":
            raise ConfigError("parallel_attn_mlp needs pre-norm blocks (norm_position='pre'): a post-norm block has no parallel form.")
        check_moe(self)
        self._check_attn_types()
        self._check_init_and_biases()
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}; "
                "grouped-query attention shares each key/value head among an equal number of query heads."
            )

    def _default_sizes(self) -> None:
        # As TransformerLens' __post_init__, except that sizes that do not fit are an error, not a
        # rounded-down n_heads and a log line.
        for name in ("d_model", "n_ctx", "d_head"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ConfigError(
                    f"n_heads is not set and d_model={self.d_model} is not a multiple of d_head={self.d_head}, "
                    "so n_heads = d_model // d_head would drop part of the residual stream. Pass n_heads=... "
                    "(TransformerLens rounds down here) or a d_head that divides d_model."
                )
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        for name in ("n_heads", "d_mlp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer (or left unset for the default), got {getattr(self, name)!r}.")
        for name in ("d_vocab", "d_vocab_out"):
            if getattr(self, name) < 1 and getattr(self, name) != -1:
                raise ConfigError(f"{name} must be a positive integer, or -1 to take it from the tokenizer; got {getattr(self, name)!r}.")
        if self.n_key_value_heads is not None and self.n_key_value_heads < 1:
            raise ConfigError(f"n_key_value_heads must be a positive integer or None, got {self.n_key_value_heads!r}.")

    def _check_names(self) -> None:
        for name, allowed in (("act_fn", ACT_FNS), ("normalization_type", Normalization.__args__[0].__args__ + (None,)),
                              ("positional_embedding_type", Positional.__args__)):
            if getattr(self, name) not in allowed:
                hint = ""
                if name == "positional_embedding_type" and self.positional_embedding_type == "alibi":
                    hint = " (TransformerLens' alibi positions are not implemented in lensutil)"
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}{hint}.")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer`'s MLP is the mixture of experts (mlp_type 'moe' and, where set, listed in moe_layers)."""
        return self.mlp_type == "moe" and (self.moe_layers is None or layer in self.moe_layers)

    def layer_mlp_type(self, layer: int) -> MlpType:
        """Block `layer`'s MLP: 'moe', or, in a model whose other layers are MoE, 'gated' (Qwen2-MoE's dense layers)."""
        if self.is_moe_layer(layer):
            return "moe"
        return "gated" if self.mlp_type == "moe" else self.mlp_type

    def _check_attn_types(self) -> None:
        if self.attn_types is None:
            return
        self.attn_types = list(self.attn_types)  # a tuple, or a list from a saved config
        bad = sorted({t for t in self.attn_types if t not in ("global", "local")})
        if len(self.attn_types) != self.n_layers or bad:
            raise ConfigError(
                f"attn_types needs one of 'global' or 'local' per layer ({self.n_layers}); got {self.attn_types!r}."
            )
        if "local" in self.attn_types and self.window_size is None:
            raise ConfigError("attn_types has 'local' layers but window_size is not set; set window_size=... (keys each query sees).")

    def attn_type(self, layer: int) -> str:
        """"local" (sliding window) or "global" for block `layer` (attn_types, or window_size for every layer)."""
        if self.attn_types is not None:
            return self.attn_types[layer]
        return "local" if self.window_size is not None else "global"

    def _check_init_and_biases(self) -> None:
        modes = InitMode.__args__
        if self.init_mode not in modes:
            raise ConfigError(
                f"init_mode must be one of {modes} (TransformerLens' names; its 'muP' is not implemented), got {self.init_mode!r}."
            )
        if self.initializer_range < 0:  # TransformerLens' "not set"
            self.initializer_range = 0.8 / math.sqrt(self.d_model) if self.init_mode == "gpt2" else 1.0
        self.absent_biases = tuple(self.absent_biases)  # a list, from a saved config
        unknown = set(self.absent_biases) - set(BIAS_NAMES)
        if unknown:
            raise ConfigError(f"absent_biases names {sorted(unknown)}, which are not biases; they are among {BIAS_NAMES}.")

    @property
    def attn_scale_factor(self) -> float:
        """1 / attn_scale, the number the scores are multiplied by (rule "multiply", and torch's sdpa).

        Computed as HuggingFace computes it, head_dim ** -0.5, when attn_scale is the default: in
        float64 that differs from 1 / sqrt(head_dim) in the last bit for some sizes (128 among them).
        """
        if self.query_pre_attn_scalar is not None and self.attn_scale == math.sqrt(self.query_pre_attn_scalar):
            return self.query_pre_attn_scalar**-0.5  # Gemma's scaling, as HF rounds it
        if self.attn_scale == math.sqrt(self.d_head):
            return self.d_head**-0.5
        return 1.0 / self.attn_scale

    @property
    def n_kv_heads(self) -> int:
        return self.n_key_value_heads or self.n_heads

    @property
    def gated_mlp(self) -> bool:
        """TransformerLens' name for mlp_type == "gated" (an MoE's experts are gated, but mlp_type is "moe")."""
        return self.mlp_type == "gated"

    @gated_mlp.setter
    def gated_mlp(self, value: bool) -> None:
        if self.mlp_type != "moe":
            self.mlp_type = "gated" if value else "dense"

    @property
    def use_attn_scale(self) -> bool:
        """TransformerLens': whether scores are scaled (use_attn_scale=False sets attn_scale=1.0)."""
        return self.attn_scale != 1.0

    @property
    def n_params(self) -> int:
        """TransformerLens' count: the attention and MLP matrices (no biases, norms or embeddings)."""
        n = self.n_layers * self.d_model * self.d_head * self.n_heads * 4
        if not self.attn_only:
            per_layer = self.d_model * self.d_mlp * (2 + (self.mlp_type != "dense"))
            if self.mlp_type == "moe":
                per_layer = (per_layer + self.d_model) * self.num_experts
            n += self.n_layers * per_layer
        return n

    def is_layer_norm_activation(self) -> bool:
        """TransformerLens': the activation ends in a LayerNorm ("solu_ln")."""
        return self.act_fn.endswith("_ln")

    @classmethod
    def unwrap(cls, config: "dict | HookedTransformerConfig") -> "HookedTransformerConfig":
        """A config as it is, or one built from a dict of fields (TransformerLens' unwrap)."""
        return cls.from_dict(config) if isinstance(config, dict) else config

    set_seed_everywhere = staticmethod(set_seed_everywhere)  # TransformerLens'; config_names.py says when it runs

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        if self.router_dtype is not None:
            out["router_dtype"] = str(self.router_dtype).removeprefix("torch.")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "HookedTransformerConfig":
        d = dict(d)
        if isinstance(d.get("dtype"), str):
            d["dtype"] = getattr(torch, d["dtype"])
        return cls(**d)  # unknown names: a ConfigError from config_names.translate


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision (HuggingFace's upcast), the dtype itself for float32 and float64."""
    return torch.promote_types(dtype, torch.float32)
