"""The forward-mode cost model: when the factorized branch beats a rebuilt merged weight.

``'factorized'`` adds the method's low-rank branch to the frozen base output (cheap for dense
layers, the only mode that can apply dropout); ``'merged'`` runs one base op with the weight
``W0 + delta`` rebuilt on the fly (cheap for depthwise convs, whose weights are tiny);
``'auto'`` compares a multiply-accumulate estimate of the whole train (or inference) step of
both, from the :class:`Cost` a method declares for one call.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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
