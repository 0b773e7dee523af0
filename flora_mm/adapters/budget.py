"""Parameter counts and rank solving for equal-budget comparisons of FLoRA / LoRA / DoRA."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch.nn as nn

from .inject import POLICY_METHODS, adapter_layers, parse_adapter_cfg, select_layers
from .layers import flora_ranks, lora_rank


def layer_param_count(weight_shape: tuple[int, ...], method: str, rank: int,
                      kernel_rank: int = 1) -> int:
    """Adapter parameters of one layer, computed analytically.

    FLoRA: ``sum(I_n * J_n) + prod(J_n)``; LoRA: ``r * (in/g * prod(k)) + out * r``;
    DoRA: LoRA plus the ``out`` magnitudes.

    Args:
        weight_shape: The base weight shape ``(out, in/groups, *kernel)`` or ``(out, in)``.
        method: 'FLoRA', 'LoRA' or 'DoRA'.
        rank: Channel rank before clipping.
        kernel_rank: FLoRA spatial rank before clipping.

    Returns:
        The number of adapter parameter elements.
    """
    if method == 'FLoRA':
        ranks = flora_ranks(weight_shape, rank, kernel_rank)
        return sum(i * j for i, j in zip(weight_shape, ranks)) + math.prod(ranks)
    r = lora_rank(weight_shape, rank)
    count = r * (math.prod(weight_shape[1:]) + weight_shape[0])
    return count + weight_shape[0] if method == 'DoRA' else count


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
    by ``rank_pattern`` keep their rank; FLoRA's ``kernel_rank`` is kept. Ties go to the
    smaller rank. Ranks are searched up to the largest value that still changes some layer.

    Args:
        model: The (plain) model the config will be applied to.
        cfg: An ``inject_adapters`` config; its ``rank`` is ignored.
        budget: The target number of adapter parameters.

    Returns:
        The best rank (>= 1).

    Raises:
        ValueError: For an invalid config or a policy-only method (BitFit / Full / Frozen).
    """
    spec = parse_adapter_cfg({**cfg, 'rank': cfg.get('rank', 1)})
    if spec.type in POLICY_METHODS:
        raise ValueError(f'solve_rank: {spec.type!r} has no rank')
    plans = select_layers(model, spec)
    fixed = sum(layer_param_count(tuple(p.module.weight.shape), spec.type, p.rank, p.kernel_rank)
                for p in plans if p.rank_pinned)
    free = [(tuple(p.module.weight.shape), p.kernel_rank) for p in plans if not p.rank_pinned]
    max_rank = max([max(shape[0], math.prod(shape[1:])) for shape, _ in free] or [1])

    def count(rank: int) -> int:
        return fixed + sum(layer_param_count(shape, spec.type, rank, kr) for shape, kr in free)

    best_rank, best_gap = 1, abs(count(1) - budget)
    for rank in range(2, max_rank + 1):
        n = count(rank)
        if abs(n - budget) < best_gap:
            best_rank, best_gap = rank, abs(n - budget)
        if n > budget:
            break  # counts grow with the rank
    return best_rank
