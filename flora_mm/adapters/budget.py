"""Parameter counts and rank solving for equal-budget comparisons of adapter methods."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from .inject import POLICY_METHODS, adapter_layers, parse_adapter_cfg, select_layers
from .registry import adapter_method


def layer_param_count(weight_shape: tuple[int, ...], method: str, rank: int,
                      *option_values: Any, **options: Any) -> int:
    """Adapter parameters of one layer, from the method's declared parameter shapes.

    E.g. FLoRA: ``sum(I_n * J_n) + prod(J_n)``; LoRA: ``r * (in/g * prod(k)) + out * r``;
    DoRA: LoRA plus the ``out`` magnitudes.

    Args:
        weight_shape: The base weight shape ``(out, in/groups, *kernel)`` or ``(out, in)``.
        method: A registered method name.
        rank: The rank (before any clipping by the method).
        *option_values: The method's options in declaration order
            (``layer_param_count(shape, 'FLoRA', 8, 2)``: FLoRA's ``kernel_rank`` 2).
        **options: The method's options by name; the defaults fill in the rest.

    Returns:
        The number of adapter parameter elements.
    """
    cls = adapter_method(method)
    options = {**dict(zip(cls.adapter_keys, option_values)), **options}
    return cls.param_count(tuple(weight_shape), rank, cls.resolve_options(rank, options))


def count_adapter_params(model: nn.Module) -> dict:
    """Count adapter, model and trainable parameters.

    Args:
        model: Any model.

    Returns:
        ``{'per_layer': {name: n}, 'total': adapter params, 'model_total': all params,
        'trainable': params with requires_grad}`` (shared parameters counted once).
    """
    per_layer = {name: sum(p.numel() for _, p in layer.adapter_named_parameters())
                 for name, layer in adapter_layers(model).items()}
    params = list(model.parameters())
    return {'per_layer': per_layer, 'total': sum(per_layer.values()),
            'model_total': sum(p.numel() for p in params),
            'trainable': sum(p.numel() for p in params if p.requires_grad)}


def solve_rank(model: nn.Module, cfg: Mapping, budget: int) -> int:
    """The global ``rank`` whose adapter parameter count is closest to ``budget``.

    Analytic (the model is not modified): uses the layers ``cfg`` would select; layers fixed
    by ``rank_pattern`` keep their rank; the method's options (FLoRA's ``kernel_rank``, ...)
    are kept. Ties go to the smaller rank. Ranks are searched up to the largest value that
    still changes some layer and that every layer accepts.

    Args:
        model: The (plain) model the config will be applied to.
        cfg: An ``inject_adapters`` config; its ``rank`` is ignored.
        budget: The target number of adapter parameters.

    Returns:
        The best rank (>= 1).

    Raises:
        ValueError: For an invalid config or a policy-only method (BitFit / Full / Frozen).
    """
    spec = parse_adapter_cfg({**cfg, 'rank': 1})
    if spec.type in POLICY_METHODS:
        raise ValueError(f'solve_rank: {spec.type!r} has no rank')
    cls = adapter_method(spec.type)
    plans = select_layers(model, spec)
    fixed = sum(cls.param_count(tuple(p.module.weight.shape), p.rank, p.options)
                for p in plans if p.rank_pinned)
    free = [tuple(p.module.weight.shape) for p in plans if not p.rank_pinned]
    options = cls.resolve_options(1, spec.options)
    max_rank = max([cls.saturation_rank(shape, options) for shape in free] or [1])
    limits = [cls.max_rank(shape, options) for shape in free]
    max_rank = min([max_rank, *(limit for limit in limits if limit is not None)])

    def count(rank: int) -> int:
        opts = cls.resolve_options(rank, spec.options)
        return fixed + sum(cls.param_count(shape, rank, opts) for shape in free)

    best_rank, best_gap = 1, abs(count(1) - budget)
    for rank in range(2, max_rank + 1):
        n = count(rank)
        if abs(n - budget) < best_gap:
            best_rank, best_gap = rank, abs(n - budget)
        if n > budget and cls.count_grows_with_rank:
            break
    return best_rank
