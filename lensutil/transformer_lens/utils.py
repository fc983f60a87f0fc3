"""TransformerLens 2.x's `transformer_lens.utils`: lensutil's helpers under TransformerLens' names.

Re-exports only, except `lm_cross_entropy_loss`, whose mask argument TransformerLens calls
`attention_mask` (lensutil's is `mask`).
"""

from ..factored_matrix import composition_scores as composition_scores
from ..model.init_functions import calc_fan_in_and_fan_out as calc_fan_in_and_fan_out
from ..model.init_functions import init_kaiming_normal_ as init_kaiming_normal_
from ..model.init_functions import init_kaiming_uniform_ as init_kaiming_uniform_
from ..model.init_functions import init_xavier_normal_ as init_xavier_normal_
from ..model.init_functions import init_xavier_uniform_ as init_xavier_uniform_
from ..model.activations import ACTIVATIONS as ACTIVATION_FN_DICT
from ..model.activations import XIELU as XIELU
from ..model.activations import gelu_fast as gelu_fast
from ..model.activations import gelu_new as gelu_new
from ..model.activations import solu as solu
from ..model.activations import xielu as xielu
from ..model.transformer import lm_cross_entropy_loss as _lm_cross_entropy_loss
from ..tensor_helpers import Slice as Slice
from ..tensor_helpers import get_corner as get_corner
from ..tensor_helpers import get_cumsum_along_dim as get_cumsum_along_dim
from ..tensor_helpers import get_nested_attr as get_nested_attr
from ..tensor_helpers import get_offset_position_ids as get_offset_position_ids
from ..tensor_helpers import is_library_available as is_library_available
from ..tensor_helpers import is_lower_triangular as is_lower_triangular
from ..tensor_helpers import is_square as is_square
from ..tensor_helpers import override_or_use_default_value as override_or_use_default_value
from ..tensor_helpers import remove_batch_dim as remove_batch_dim
from ..tensor_helpers import repeat_along_head_dimension as repeat_along_head_dimension
from ..tensor_helpers import set_nested_attr as set_nested_attr
from ..tensor_helpers import to_numpy as to_numpy
from ..tensor_helpers import transpose as transpose
from ..utils import get_act_name as get_act_name


def lm_cross_entropy_loss(logits, tokens, attention_mask=None, per_token: bool = False):
    """Next-token cross-entropy (lensutil.model.transformer.lm_cross_entropy_loss), TransformerLens' argument names."""
    return _lm_cross_entropy_loss(logits, tokens, mask=attention_mask, per_token=per_token)


def lm_accuracy(logits, tokens, per_token: bool = False):
    """How often the argmax of the logits is the next token: per position ([batch, pos - 1]) or the fraction."""
    correct = logits.argmax(dim=-1)[:, :-1] == tokens[:, 1:]
    return correct if per_token else correct.sum() / correct.numel()
