"""TransformerLens 2.x's `transformer_lens.utils`: lensutil's helpers under TransformerLens' names."""

from ..utils import get_act_name as get_act_name

# The activation functions (lensutil/model/activations.py), where TransformerLens 2.x's utils has them.
from ..model.activations import ACTIVATIONS as ACTIVATION_FN_DICT  # noqa: E402
from ..model.activations import XIELU as XIELU  # noqa: E402
from ..model.activations import gelu_fast as gelu_fast  # noqa: E402
from ..model.activations import gelu_new as gelu_new  # noqa: E402
from ..model.activations import solu as solu  # noqa: E402
from ..model.activations import xielu as xielu  # noqa: E402
