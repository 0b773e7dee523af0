"""Turning a plain layer into an adapted one in place, and back."""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from .layers import STANDARD_BASES, AdapterLayer, adapter_class, qualified_class_name
from .registry import adapter_method

# Subclasses that override ``forward`` but keep its semantics for non-empty inputs.
FORWARD_COMPATIBLE = frozenset({
    'mmcv.cnn.bricks.wrappers.Linear',
    'mmcv.cnn.bricks.wrappers.Conv2d',
    'mmcv.cnn.bricks.wrappers.Conv3d',
    'timm.layers.linear.Linear',
    'timm.models.layers.linear.Linear',
})


def _standard_base(cls: type) -> type | None:
    return next((b for b in STANDARD_BASES if issubclass(cls, b)), None)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be adapted, or None if it can.

    Args:
        module: Any module.

    Returns:
        A human-readable reason, or None for a supported layer.
    """
    cls = type(module)
    if isinstance(module, AdapterLayer):
        return f'it already has a {module.adapter_type} adapter (inject once per layer)'
    base = _standard_base(cls)
    if base is None:
        return (f'{cls.__name__} is not a supported layer type (supported: nn.Linear, '
                'nn.Conv1d/2d/3d and subclasses with the same forward)')
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return f'{cls.__name__} is lazy and not initialized yet (run a forward pass first)'
    if cls is nn.modules.linear.NonDynamicallyQuantizableLinear:
        return ('nn.MultiheadAttention reads out_proj.weight directly, so an adapter on it '
                'would never run')
    if qualified_class_name(cls) in FORWARD_COMPATIBLE:
        return None
    for attr in ('forward', '_conv_forward'):
        if getattr(cls, attr, None) is not getattr(base, attr, None):
            return (f'{qualified_class_name(cls)} overrides {attr}() of {base.__name__} '
                    '(e.g. dynamic "same" padding or weight standardization), which the adapter '
                    'forward would bypass; exclude it')
    return None


def wrap_layer(module: nn.Module, method: str, *, rank: int,
               options: Mapping[str, Any] | None = None, scale: float | None = None,
               dropout: float = 0.0, forward_mode: str = 'auto') -> AdapterLayer:
    """Turn ``module`` into an adapted layer in place (values validated by the caller).

    Args:
        module: A supported layer (see :func:`unsupported_reason`).
        method: A registered method name ('FLoRA', 'LoRA', ...).
        rank: The rank.
        options: The method's own keys (e.g. FLoRA's ``kernel_rank``); defaults fill in the
            others.
        scale: The constant ``s`` when given (a saved layer's, a profiled one's); by default
            the method computes it from ``rank`` and ``options`` (e.g. ``alpha / rank``).
        dropout: Dropout on the factorized branch input.
        forward_mode: 'auto', 'factorized' or 'merged'.

    Returns:
        The same object, now an instance of the adapted class.
    """
    cls = adapter_method(method)
    options = cls.resolve_options(rank, options or {})
    scale = cls.scaling(rank, options) if scale is None else scale
    base_class = type(module)
    module.__class__ = adapter_class(cls, base_class)
    module._adapter_setup(base_class, rank, scale, options, dropout, forward_mode)
    return module


def unwrap_layer(module: AdapterLayer) -> nn.Module:
    """Drop the adapter of ``module`` in place (after merging, for deployment).

    Restores the original class and the original ``requires_grad`` and dtype of weight and
    bias.

    Args:
        module: An adapted layer.

    Returns:
        The same object as an instance of its original class.
    """
    weight_rg, bias_rg = module._adapter_requires_grad
    base_class = module.adapter_base_class
    original_dtype = module._adapter_dtypes[0]
    for name in (*module.adapter_layer_names, *module.adapter_attr_names,
                 *module._generic_attr_names()):
        if name in module._parameters or name in module._modules or name in module.__dict__:
            delattr(module, name)
    module.__class__ = base_class
    for param, requires_grad in ((module.weight, weight_rg), (module.bias, bias_rg)):
        if param is not None:
            param.data = param.data.to(original_dtype)
            param.requires_grad_(requires_grad)
    return module
