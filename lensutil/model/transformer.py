"""HookedTransformer: construction, forward, and the hook plumbing it inherits.

Everything else a user calls on a model (loading, tokenising, generating, processing weights,
patching from a cache) lives in its own module; the methods here are one-line doors to them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import FLAG_GATED_HOOKS, HookedTransformerConfig, compute_dtype
from ..errors import ConfigError, InputError
from ..hooks.hook_points import HookPoint
from ..hooks.root_module import HookedRootModule
from ..text import tokens as tok
from ..text.generation import generate
from . import doors, initialization
from .block import TransformerBlock, check_hook_flags
from .circuit_weights import CircuitWeights
from .context import AttentionContext
from .embed import Embed, PosEmbed, Unembed
from .input_to_embed import input_to_embed
from .norm import make_norm
from .processing import process_weights_
from .rotary_scaling import RopeState

ReturnType = Literal["logits", "loss", "both"] | None


class HookedTransformer(CircuitWeights, HookedRootModule):
    def __init__(self, cfg: HookedTransformerConfig, tokenizer=None):
        super().__init__()
        if cfg.attention_dir != "causal":
            raise ConfigError(
                f"HookedTransformer is a causal decoder; this config is an encoder (attention_dir={cfg.attention_dir!r}). "
                "Build it with lensutil.HookedEncoder(cfg), or load with HookedEncoder.from_pretrained(name)."
            )
        if tokenizer is None and cfg.tokenizer_name is not None:  # as TransformerLens (loading/hf_source.py)
            tokenizer = doors.call("model.tokenizer_from_name", cfg.tokenizer_name)
        tok.take_vocab_size(cfg, tokenizer)  # d_vocab=-1: the tokenizer's, as TransformerLens
        self.cfg, self.tokenizer = cfg, tokenizer
        if cfg.use_hook_tokens:
            self.hook_tokens = HookPoint("batch pos")  # the token ids; a hook may return others
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint("batch pos d_model")
        if cfg.positional_embedding_type in ("standard", "shortformer"):  # shortformer: read by attention only
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint("batch pos d_model")
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        self.unembed = Unembed(cfg)
        self._rope_state = RopeState()  # dynamic / longrope RoPE: what HF's rotary module keeps between forwards
        initialization.init_after_construction(self)  # TransformerLens' init_weights; skipped when loading
        self.setup()
        self.to(cfg.device)

    # ---- hooks that need a flag -------------------------------------------------------------
    def hook_flag(self, name: str) -> str | None:
        for suffix, flag in FLAG_GATED_HOOKS.items():
            if name.endswith("." + suffix) and not getattr(self.cfg, flag):
                return flag
        return None

    def _set_flag(self, flag: str, value: bool) -> None:
        old = getattr(self.cfg, flag)
        setattr(self.cfg, flag, value)
        try:
            check_hook_flags(self.cfg)
        except ConfigError:
            setattr(self.cfg, flag, old)
            raise

    def set_use_attn_result(self, value: bool) -> None:
        self._set_flag("use_attn_result", value)

    def set_use_split_qkv_input(self, value: bool) -> None:
        self._set_flag("use_split_qkv_input", value)

    def set_use_attn_in(self, value: bool) -> None:
        self._set_flag("use_attn_in", value)

    def set_use_hook_mlp_in(self, value: bool) -> None:
        self._set_flag("use_hook_mlp_in", value)

    # ---- forward ----------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "logits",
        *,
        attention_mask: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        past_kv_cache=None,
        prepend_bos: bool | None = None,
        padding_side: tok.PaddingSide | None = None,
        loss_per_token: bool = False,
        shortformer_pos_embed: Float[Tensor, "batch pos d_model"] | None = None,  # with start_at_layer (input_to_embed's)
    ):
        """Run the model. `input` is text, token ids, or (with start_at_layer) a residual stream.

        Returns logits [batch, pos, d_vocab], the next-token loss, both, or None (return_type);
        with stop_at_layer, the residual stream before that block. A list of strings is padded
        (padding_side) and masked automatically.
        """
        shortformer = self.cfg.positional_embedding_type == "shortformer"
        if shortformer_pos_embed is not None and not (shortformer and start_at_layer is not None):
            raise InputError("shortformer_pos_embed is for a model with positional_embedding_type='shortformer', run "
                             "with start_at_layer (what input_to_embed returns); this run computes its own positions.")
        if return_type not in ("logits", "loss", "both", None):
            raise InputError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}.")
        if isinstance(input, (str, list)):
            input, text_mask = tok.tokenize(self, input, prepend_bos, padding_side)
            attention_mask = text_mask if attention_mask is None else attention_mask
        input = torch.as_tensor(input, device=self.cfg.device)
        if start_at_layer is None:
            if input.is_floating_point():
                raise InputError("Got a float tensor without start_at_layer; token ids must be integers.")
            input = input[None] if input.ndim == 1 else input
            if self.cfg.use_hook_tokens:
                input = self.hook_tokens(input)
            tok.check_token_ids(input, self.cfg.d_vocab)
            tokens = input
        elif input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
            raise InputError(f"With start_at_layer, input is a residual stream [batch, pos, {self.cfg.d_model}]; got {list(input.shape)}.")
        layers = range(*slice(start_at_layer, stop_at_layer).indices(self.cfg.n_layers))
        if past_kv_cache is not None and len(layers) != self.cfg.n_layers:
            # Layers outside the range would append no keys, leaving the cache's layers out of step.
            raise InputError(
                f"past_kv_cache needs every layer to run, but start_at_layer={start_at_layer}, "
                f"stop_at_layer={stop_at_layer} runs layers {list(layers)} of {self.cfg.n_layers}. Run the "
                "partial forward without past_kv_cache, or run all layers with the cache."
            )
        ctx, key_mask = self._context(input.shape[0], input.shape[1], attention_mask, past_kv_cache)
        if start_at_layer is None:
            residual = self.hook_embed(self.embed(input))
            if self.cfg.positional_embedding_type == "standard":
                residual = residual + self.hook_pos_embed(self.pos_embed(ctx.positions))
            elif shortformer:  # never added to the residual stream (TransformerLens' shortformer)
                ctx.shortformer_pos = self.hook_pos_embed(self.pos_embed(ctx.positions))
        else:
            residual = input
            if shortformer and len(layers):
                if shortformer_pos_embed is None:  # TransformerLens would run the layers with no positions at all
                    raise InputError(
                        "This shortformer model's layers add the position embedding to their queries and keys: pass "
                        "shortformer_pos_embed=... (the third value input_to_embed returns) with start_at_layer.")
                ctx.shortformer_pos = torch.as_tensor(shortformer_pos_embed, device=self.cfg.device)
        blocks = list(self.blocks)  # ModuleList indexing converts the index to a string each time
        for i in layers:
            entry = past_kv_cache[i] if past_kv_cache is not None else None
            residual = blocks[i](residual, ctx, entry)
        if past_kv_cache is not None:
            past_kv_cache.extend_mask(key_mask, input.shape[1])
        if stop_at_layer is not None:
            return residual
        logits = self.unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        if tokens is None:
            raise InputError("return_type='loss' with start_at_layer needs tokens=... to know the targets.")
        loss = lm_cross_entropy_loss(logits, tokens, None if ctx.query_is_pad is None else ~ctx.query_is_pad, loss_per_token)
        return (logits, loss) if return_type == "both" else (loss if return_type == "loss" else None)

    def _context(self, batch: int, pos: int, attention_mask, past_kv_cache) -> tuple[AttentionContext, Tensor | None]:
        past_len = past_kv_cache.past_len if past_kv_cache is not None else 0
        if past_len + pos > self.cfg.n_ctx:
            raise InputError(
                f"{past_len + pos} positions (past {past_len} + new {pos}) exceed model.cfg.n_ctx={self.cfg.n_ctx}. "
                "Shorten the input, or for rotary models load with from_pretrained(..., n_ctx=...) up to the model's trained context."
            )
        device = self.cfg.device
        mask = None
        if attention_mask is not None:  # None back when nothing is masked
            mask = tok.check_attention_mask(torch.as_tensor(attention_mask, device=device), batch, pos, past_len)
        past_mask = past_kv_cache.mask if past_kv_cache is not None else None
        if mask is not None and mask.shape[1] == past_len + pos:  # a mask over past and new tokens
            mask, past_mask = mask[:, past_len:], mask[:, :past_len]
        if mask is None and past_mask is None:
            positions = torch.arange(past_len, past_len + pos, device=device).expand(batch, pos)
            return AttentionContext.build(self.cfg, positions, None, None, past_len, self._rope_state), None
        full = torch.cat([
            past_mask if past_mask is not None else torch.ones(batch, past_len, dtype=torch.bool, device=device),
            mask if mask is not None else torch.ones(batch, pos, dtype=torch.bool, device=device),
        ], dim=1)
        query_is_pad = ~full[:, past_len:]
        positions = tok.positions_from_mask(full, past_len)
        ctx = AttentionContext.build(self.cfg, positions, full, query_is_pad if query_is_pad.any() else None, past_len,
                                    self._rope_state)
        return ctx, full

    # ---- one-line doors to the other modules ------------------------------------------------
    def init_weights(self) -> None:
        """Fill every weight afresh as cfg.init_mode says (TransformerLens' init_weights; lensutil/model/initialization.py)."""
        initialization.init_weights(self)

    def input_to_embed(self, input, prepend_bos=None, padding_side=None, attention_mask=None, past_kv_cache=None):
        return input_to_embed(self, input, prepend_bos, padding_side, attention_mask, past_kv_cache)

    def to_tokens(self, input, prepend_bos=None, padding_side=None) -> Int[Tensor, "batch pos"]:
        return tok.tokenize(self, input, prepend_bos, padding_side)[0]

    def to_str_tokens(self, input, prepend_bos=None) -> list:
        return tok.to_str_tokens(self, input, prepend_bos)

    def to_string(self, tokens) -> str | list[str]:
        return tok.to_string(self, tokens)

    def to_single_token(self, string: str) -> int:
        return tok.to_single_token(self, string)

    def generate_attention_mask(self, tokens, padding_side=None, prepend_bos=None) -> Int[Tensor, "batch pos"]:
        return tok.generate_attention_mask(self, tokens, padding_side, prepend_bos)

    def generate(self, input, max_new_tokens: int = 10, **kwargs):
        return generate(self, input, max_new_tokens, **kwargs)

    # Doors to loading and analysis, which build on this module (doors.py says why they go through a table).
    def run_with_cache_from_cache(self, cache, start_at_layer: int, **kwargs):
        return doors.call("HookedTransformer.run_with_cache_from_cache", self, cache, start_at_layer, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "HookedTransformer":
        return doors.call("HookedTransformer.from_pretrained", name_or_path, **kwargs)

    @classmethod
    def from_pretrained_no_processing(cls, name_or_path: str, **kwargs) -> "HookedTransformer":
        return doors.call("HookedTransformer.from_pretrained_no_processing", name_or_path, **kwargs)

    def save_pretrained(self, directory):  # lensutil's own; TransformerLens has none
        return doors.call("HookedTransformer.save_pretrained", self, directory)

    def load_and_process_state_dict(self, state_dict: dict, **options):
        return doors.call("HookedTransformer.load_and_process_state_dict", self, state_dict, **options)

    def process_weights_(self, **options):
        return process_weights_(self, **options)

    def read_weight(self, name: str) -> Tensor:
        """A weight by its state_dict name (lensutil's own). On a model placed with offloading, a weight kept
        on disk or in CPU memory is read from there: placement installs that reader (the model knows
        nothing of offloading; lensutil.read_weight(model, name) is the same read)."""
        reader = self.__dict__.get("_weight_reader")
        if reader is not None:
            return reader(self, name)
        module, _, attr = name.rpartition(".")
        return getattr(self.get_submodule(module), attr)

    def tokens_to_residual_directions(self, tokens) -> Float[Tensor, "... d_model"]:
        # As TransformerLens: one token (int, str, or a one-element tensor of any shape) gives [d_model].
        tokens = torch.as_tensor(tokens) if not isinstance(tokens, str) else torch.tensor(self.to_single_token(tokens))
        tokens = tokens.reshape(()) if tokens.numel() == 1 else tokens
        return self.unembed.W_U[:, tokens].movedim(0, -1)

    def _apply(self, fn, *args, **kwargs):
        # Every way of moving or casting a module (.to, .half, .float, .bfloat16, .double, .type,
        # .cuda, .cpu, ...) goes through nn.Module._apply, so cfg follows the parameters here:
        # components build rotary angles and masks from cfg.dtype and cfg.device at each forward.
        out = super()._apply(fn, *args, **kwargs)
        p = next(self.parameters(), None)
        if p is not None:
            self.cfg.device, self.cfg.dtype = str(p.device), p.dtype
        return out

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E


def lm_cross_entropy_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], mask=None, per_token: bool = False
):
    """Next-token cross-entropy; transitions whose input or target is padding do not count.

    As TransformerLens' utils.lm_cross_entropy_loss: per_token gives [batch, pos - 1] with 0 at the
    transitions that do not count, and the loss is the sum of those over the number that count.
    """
    tokens = tokens.to(logits.device)  # a model placed over devices computes its logits on the unembedding's device
    log_probs = F.log_softmax(logits[:, :-1].to(compute_dtype(logits.dtype)), dim=-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    if mask is None:
        return nll if per_token else nll.mean()
    mask = torch.as_tensor(mask, device=nll.device).bool()
    keep = mask[:, :-1] & mask[:, 1:]
    nll = nll.masked_fill(~keep, 0.0)  # not nll * keep: an infinite nll at a pad would give nan
    return nll if per_token else nll.sum() / keep.sum()
