"""lensutil: a hooked transformer with TransformerLens' API, checked against HuggingFace.

This file is the table of contents: the public names, re-exported from private modules, part by part
(docs/design.md has the map).
"""

# Errors, config and helpers
from . import errors as errors
from . import utils as utils
from .config import HookedTransformerConfig as HookedTransformerConfig
from .errors import LensError as LensError
from .errors import QuantizationError as QuantizationError
from .utils import get_act_name as get_act_name

# The hooked models
from .hooks.activation_cache import ActivationCache as ActivationCache
from .hooks.hook_points import HookPoint as HookPoint
from .hooks.root_module import HookedRootModule as HookedRootModule
from .model.encoder import HookedEncoder as HookedEncoder
from .model.next_sentence import BertNextSentencePrediction as BertNextSentencePrediction
from .model.transformer import HookedTransformer as HookedTransformer

# Loading, placing, quantising, saving
from .loading.hub import hf_token_status as hf_token_status
from .loading.names import list_models as list_models
from .loading.offloaded_weights import read_weight as read_weight
from .loading.quantization import quantize_ as quantize_
from .loading.saving import save_pretrained as save_pretrained

# Analysis (and the opt-in allocator tuning for loops of large caches)
from .analysis.collect import collect_activations as collect_activations
from .analysis.patching import run_with_cache_from_cache as run_with_cache_from_cache
from .analysis.allocator import keep_freed_memory as keep_freed_memory
from .analysis.allocator import release_freed_memory as release_freed_memory

# Checks and notebooks
from .checks.quantization_support import quantization_support as quantization_support
from .notebook.widgets import HookExplorer as HookExplorer

# The modules behind the model's doors (from_pretrained, load_and_process_state_dict, ...; lensutil/model/doors.py):
# importing them opens the doors, so they are imported here whether or not anything above needs them.
from .loading import audio as _audio_loading  # noqa: F401
from .loading import encoder as _encoder_loading  # noqa: F401
from .loading import pretrained as _pretrained  # noqa: F401
from .loading import saving as _saving  # noqa: F401
from .loading import state_dict as _state_dict  # noqa: F401

__version__ = "0.1.0"
