"""TransformerLens 2.x's `transformer_lens.utilities.activation_functions`: lensutil's activations by TL's names."""

from ...model.activations import ACTIVATIONS as SUPPORTED_ACTIVATIONS
from ...model.activations import XIELU as XIELU
from ...model.activations import gelu_fast as gelu_fast
from ...model.activations import gelu_new as gelu_new
from ...model.activations import solu as solu
from ...model.activations import xielu as xielu
