"""TransformerLens 2.x's public surface, under its module paths, made of lensutil's objects.

Migrating code written for TransformerLens 2.x is one import line:
`from lensutil.transformer_lens import HookedTransformer` (or `import lensutil.transformer_lens as
transformer_lens`). For code you cannot edit (a library, a tutorial's helper module), call
`use_as_transformer_lens()` first: a plain `import transformer_lens` then resolves here, in this
process only. Nothing here is on by default; importing lensutil does not import this package.

The modules mirror TransformerLens 2.18's paths (`transformer_lens.hook_points`, `.utils`,
`.HookedTransformerConfig`, ...) and re-export lensutil's classes; they hold no copy of them.
Where lensutil deliberately differs from TransformerLens, docs/tl_compat.md lists it with the reason.
"""

from . import hook_points as hook_points
from . import utils as utils
from . import components as components
from . import factories as factories
from . import utilities as utilities
from . import patching as patching
from . import head_detector as head_detector
from . import past_key_value_caching as past_key_value_caching
from .past_key_value_caching import HookedTransformerKeyValueCache as HookedTransformerKeyValueCache
from .past_key_value_caching import HookedTransformerKeyValueCacheEntry as HookedTransformerKeyValueCacheEntry
from . import loading_from_pretrained as loading_from_pretrained
from . import loading_from_pretrained as loading
from .ActivationCache import ActivationCache as ActivationCache
from .BertNextSentencePrediction import BertNextSentencePrediction as BertNextSentencePrediction
from .FactoredMatrix import FactoredMatrix as FactoredMatrix
from .HookedAudioEncoder import HookedAudioEncoder as HookedAudioEncoder
from .HookedEncoder import HookedEncoder as HookedEncoder
from .HookedTransformer import HookedTransformer as HookedTransformer
from .HookedTransformerConfig import HookedTransformerConfig as HookedTransformerConfig
from .SVDInterpreter import SVDInterpreter as SVDInterpreter
from ._opt_in import stop_using_as_transformer_lens as stop_using_as_transformer_lens
from ._opt_in import use_as_transformer_lens as use_as_transformer_lens

# TransformerLens' old names for the same classes, kept by 2.x for EasyTransformer-era code.
EasyTransformer = HookedTransformer
EasyTransformerConfig = HookedTransformerConfig
EasyTransformerKeyValueCache = HookedTransformerKeyValueCache
EasyTransformerKeyValueCacheEntry = HookedTransformerKeyValueCacheEntry
