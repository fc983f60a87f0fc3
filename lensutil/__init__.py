"""lensutil: a hooked transformer with TransformerLens' API, checked against HuggingFace.

This file is the table of contents: the public names, re-exported from private modules.
"""

from .activation_cache import ActivationCache as ActivationCache
from .config import HookedTransformerConfig as HookedTransformerConfig
from .errors import LensError as LensError
from .hook_points import HookedRootModule as HookedRootModule
from .hook_points import HookPoint as HookPoint
from .model import HookedTransformer as HookedTransformer
from .encoder import HookedEncoder as HookedEncoder
from .patching import run_with_cache_from_cache as run_with_cache_from_cache
from .utils import get_act_name as get_act_name
from .collect import collect_activations as collect_activations
from .allocator import keep_freed_memory as keep_freed_memory
from .allocator import release_freed_memory as release_freed_memory
from .hub import hf_token_status as hf_token_status
from .model_names import list_models as list_models
from . import errors as errors
from . import utils as utils

from .quantization import QuantizationError as QuantizationError
from .quantization import quantize_ as quantize_
from .quantization_support import quantization_support as quantization_support
from .offloaded_weights import read_weight as read_weight
from .saving import save_pretrained as save_pretrained
from .widgets import HookExplorer as HookExplorer

__version__ = "0.1.0"
