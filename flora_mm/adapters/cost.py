"""The forward-mode cost model: when the factorized branch beats a rebuilt merged weight.

``'factorized'`` adds the method's low-rank branch to the frozen base output (cheap for dense
layers, the only mode that can apply dropout); ``'merged'`` runs one base op with the weight
``W0 + delta`` rebuilt on the fly (cheap for depthwise convs, whose weights are tiny);
``'auto'`` compares a multiply-accumulate estimate of the whole train (or inference) step of
both, from the :class:`Cost` a method declares for one call.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

FORWARD_MODES = ('auto', 'factorized', 'merged')
# MAC equivalents: the thin low-rank ops are memory bound, so every activation element they
# read or write counts like this many MACs (CPU measurements on ConvNeXt-V2 shapes put the
# break-even between 10 and 50), and every extra kernel + autograd node has a fixed cost.
TRAFFIC_COST = 16
OP_COST = 100_000


class Cost(NamedTuple):
    """Work of one call (multiply-accumulates and activation elements).

    Attributes:
        base: MACs of the base op.
        adapter: MACs of the factorized low-rank branch.
        rebuild: MACs of rebuilding the effective weight (merged path).
        t_in: Input elements.
        t_out: Output elements.
        t_hidden: Elements of the branch's low-rank intermediates.
        ops: Extra ops of the factorized branch in forward.
    """

    base: int
    adapter: int
    rebuild: int
    t_in: int
    t_out: int
    t_hidden: int
    ops: int


def layer_dims(layer: nn.Module) -> tuple[int, int, int, tuple[int, ...]]:
    """``(out, in_per_group, groups, kernel)`` of a linear (kernel ``()``) or conv weight."""
    shape = tuple(layer.weight.shape)
    groups = layer.groups if isinstance(layer, nn.modules.conv._ConvNd) else 1
    return shape[0], shape[1], groups, shape[2:]


def call_size(layer: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """``(input positions, output positions, base MACs)`` of one call of ``layer`` on ``x``."""
    if not isinstance(layer, nn.modules.conv._ConvNd):
        pixels = x.numel() // layer.in_features
        return pixels, pixels, pixels * layer.weight.numel()
    geo = layer._adapter_geometry
    in_spatial = x.shape[-geo.dim:]
    batch = x.numel() // (layer.in_channels * math.prod(in_spatial))
    p_in = batch * math.prod(in_spatial)
    p_out = batch * math.prod(geo.output_spatial(in_spatial, layer.kernel_size))
    return p_in, p_out, p_out * layer.weight.numel()


def tucker_macs(core_shape: Sequence[int],
                factor_shapes: Sequence[tuple[int, int] | None]) -> int:
    """Multiply-accumulates of :func:`~flora_mm.adapters.tucker.tucker_to_tensor` (same mode
    order: the most-shrinking factor first; a ``None`` factor leaves its mode untouched).

    Args:
        core_shape: ``(J_1, ..., J_N)``.
        factor_shapes: ``(I_n, J_n)`` per mode, or None.

    Returns:
        The MAC count.
    """
    shape = list(core_shape)
    order = sorted((n for n, f in enumerate(factor_shapes) if f is not None),
                   key=lambda n: factor_shapes[n][0] / max(factor_shapes[n][1], 1))
    total = 0
    for n in order:
        shape[n] = factor_shapes[n][0]
        total += math.prod(shape) * factor_shapes[n][1]
    return total


class StepMacs(NamedTuple):
    """An adapter layer's own work in one train step, beyond the limit's (see
    :func:`adapter_step_macs`).

    Attributes:
        macs: Multiply-accumulates of the cheaper path.
        path: ``'factorized'`` or ``'merged'``.
        factorized: MACs of the factorized path (None without one).
        merged: MACs of the merged path.
    """

    macs: int
    path: str
    factorized: int | None
    merged: int


def adapter_step_macs(layer: nn.Module, input_shape: Sequence[int]) -> StepMacs:
    """What an adapter adds to a train step on an input of ``input_shape``, in MACs, on top
    of the limit (the frozen base op's forward and its input gradient, which every method
    computes).

    Factorized: the branch's forward ``A`` (:meth:`forward_cost`) and its backward, input and
    parameter gradients, ``2 A``: ``3 A``. Merged: the base op's weight gradient (the base
    op's MACs again, the frozen base skips it) and the rebuild of ``W0 + delta`` with its
    backward, ``3 R`` (``R``: :meth:`forward_cost`'s ``rebuild`` or the method's
    ``rebuild_macs()``). Elementwise work counts one MAC per element, memory traffic nothing:
    this is the arithmetic a method cannot avoid on its cheaper path, not a time model.

    Args:
        layer: An adapted layer.
        input_shape: Shape of its input in the step (batch included).

    Returns:
        The :class:`StepMacs`.
    """
    x = torch.empty(tuple(input_shape), device='meta')
    base = call_size(layer, x)[2]
    if layer.has_factorized():
        cost = layer.forward_cost(x)
        factorized, merged = 3 * cost.adapter, cost.base + 3 * cost.rebuild
    else:
        factorized, merged = None, base + 3 * layer.rebuild_macs()
    if factorized is not None and factorized < merged:
        return StepMacs(factorized, 'factorized', factorized, merged)
    return StepMacs(merged, 'merged', factorized, merged)


def factorized_is_cheaper(cost: Cost, weight_numel: int, train: bool, x_grad: bool) -> bool:
    """Whether the factorized path costs less than the merged one for a step of ``cost``.

    Args:
        cost: The work of one call.
        weight_numel: Elements of the base weight.
        train: Whether the adapter parameters will receive gradients.
        x_grad: Whether the input needs a gradient.

    Returns:
        True to run factorized.
    """
    io = cost.t_in + cost.t_out
    weight_io = 3 * weight_numel  # read W0, write and read the effective weight
    if not train:
        factorized = cost.adapter + TRAFFIC_COST * (io + 2 * cost.t_hidden + 2 * cost.t_out)
        merged = cost.rebuild + TRAFFIC_COST * weight_io
        return factorized + OP_COST * cost.ops < merged
    # Backward: the frozen base op needs only its input gradient, the merged op also the
    # full-size weight gradient; branch ops need input and weight gradients (x3 work, and
    # roughly 6 passes over their inputs / outputs, gradient accumulation included).
    x_grad = int(x_grad)
    factorized = (cost.base * (1 + x_grad) + TRAFFIC_COST * io * (1 + x_grad)
                  + 3 * cost.adapter + 6 * TRAFFIC_COST * (io + cost.t_hidden)
                  + 3 * OP_COST * cost.ops)
    merged = (cost.base * (2 + x_grad) + TRAFFIC_COST * io * (2 + x_grad)
              + 3 * (cost.rebuild + TRAFFIC_COST * weight_io))
    return factorized < merged
