"""TransformerLens 2.x's `transformer_lens.utils`: lensutil's helpers under TransformerLens' names."""

from ..utils import get_act_name as get_act_name
