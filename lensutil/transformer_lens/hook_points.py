"""TransformerLens 2.x's `transformer_lens.hook_points`: HookPoint, HookedRootModule, LensHandle."""

from ..hooks.hook_points import HookPoint as HookPoint
from ..hooks.hook_points import LensHandle as LensHandle
from ..hooks.root_module import HookedRootModule as HookedRootModule
