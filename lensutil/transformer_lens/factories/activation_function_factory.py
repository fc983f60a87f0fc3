"""TransformerLens' ActivationFunctionFactory over lensutil's activations (lensutil/model/activations.py)."""

from __future__ import annotations

from ...model.activations import make_activation


class ActivationFunctionFactory:
    @staticmethod
    def pick_activation_function(cfg):
        """The function (for "xielu" a fresh trainable XIELU module) that cfg.act_fn names."""
        if cfg.act_fn is None:
            raise ValueError("act_fn not set when trying to select Activation Function")
        return make_activation(cfg.act_fn)  # the config has checked the name
