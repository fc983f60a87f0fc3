"""lensutil: a hooked transformer with TransformerLens' API, checked against HuggingFace.

This file is the table of contents: the public names, re-exported from private modules.
"""

from .hooks.activation_cache import ActivationCache as ActivationCache
from .config import HookedTransformerConfig as HookedTransformerConfig
from .errors import LensError as LensError
from .hooks.root_module import HookedRootModule as HookedRootModule
from .hooks.hook_points import HookPoint as HookPoint
from .model.transformer import HookedTransformer as HookedTransformer
from .model.encoder import HookedEncoder as HookedEncoder
from .analysis.patching import run_with_cache_from_cache as run_with_cache_from_cache
from .utils import get_act_name as get_act_name
from .analysis.collect import collect_activations as collect_activations
from .analysis.allocator import keep_freed_memory as keep_freed_memory
from .analysis.allocator import release_freed_memory as release_freed_memory
from .loading.hub import hf_token_status as hf_token_status
from .loading.names import list_models as list_models
from . import errors as errors
from . import utils as utils

from .errors import QuantizationError as QuantizationError
from .loading.quantization import quantize_ as quantize_
from .checks.quantization_support import quantization_support as quantization_support
from .loading.offloaded_weights import read_weight as read_weight
from .loading.saving import save_pretrained as save_pretrained
from .notebook.widgets import HookExplorer as HookExplorer

__version__ = "0.1.0"
