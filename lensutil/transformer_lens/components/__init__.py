"""TransformerLens 2.x's `transformer_lens.components`: the model's parts, built from a config or a dict.

Each is lensutil's own component (lensutil/model/), taking TransformerLens' arguments; where
TransformerLens has several classes for what lensutil reads from one field (its four norms, MLP and
GatedMLP), `isinstance` answers by that field, so `isinstance(model.blocks[0].ln1, LayerNorm)` holds
for a model lensutil built.
"""

from ...model.block import TransformerBlock as TransformerBlock
from .attention import Attention as Attention
from .attention import GroupedQueryAttention as GroupedQueryAttention
from .embeddings import Embed as Embed
from .embeddings import PosEmbed as PosEmbed
from .embeddings import Unembed as Unembed
from .mlps.can_be_used_as_mlp import CanBeUsedAsMLP as CanBeUsedAsMLP
from .mlps.gated_mlp import GatedMLP as GatedMLP
from .mlps.mlp import MLP as MLP
from .mlps.moe import MoE as MoE
from .norms import LayerNorm as LayerNorm
from .norms import LayerNormPre as LayerNormPre
from .norms import RMSNorm as RMSNorm
from .norms import RMSNormPre as RMSNormPre
