"""FLoRA: a Tucker update in the core space of every mode of the real weight shape."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cost import Cost, call_size, layer_dims
from ..layers import AdapterLayer, Option, finite_number, positive_int
from ..registry import register_adapter
from ..tucker import fold_input_projection, tucker_conv, tucker_flops, tucker_to_tensor


def flora_ranks(weight_shape: tuple[int, ...], rank: int, kernel_rank: int) -> list[int]:
    """Core shape ``(J_1, ..., J_N)``: ``rank`` on both channel modes, ``kernel_rank`` on every
    spatial mode, each clipped to its mode size.

    Args:
        weight_shape: ``(out, in/groups, *kernel)`` or ``(out, in)``.
        rank: Channel-mode rank.
        kernel_rank: Spatial-mode rank.

    Returns:
        The clipped ranks, one per mode.
    """
    return [min(rank, weight_shape[0]), min(rank, weight_shape[1]),
            *(min(kernel_rank, k) for k in weight_shape[2:])]


@register_adapter
class FLoRALayer(AdapterLayer):
    """FLoRA: ``dW = s * G x_1 A_1 ... x_N A_N`` on every mode of the real weight shape.

    Parameters: ``flora_core`` ``(J_1, ..., J_N)`` (zero init, so the model is unchanged at
    step 0) and ``flora_factors.<n>`` ``(I_n, J_n)`` (kaiming-normal with ``a=sqrt(3)``, i.e.
    std ``1/sqrt(2 J_n)``, as in the published FLoRA code). For a linear layer
    ``dW = s * A G B^T`` with ``A = flora_factors.0``, ``B = flora_factors.1``. Ranks above a
    mode's size are clipped to it.
    """

    adapter_type = 'FLoRA'
    adapter_prefix = 'flora_'
    adapter_layer_names = ('flora_core', 'flora_factors')
    adapter_keys = {
        'kernel_rank': Option(1, positive_int, 'rank of every spatial mode'),
        'scale': Option(1.0, finite_number, 'the constant s'),
    }

    @classmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        ranks = flora_ranks(weight_shape, rank, options['kernel_rank'])
        factors = {f'flora_factors.{n}': (i, j)
                   for n, (i, j) in enumerate(zip(weight_shape, ranks))}
        return {'flora_core': tuple(ranks), **factors}

    @classmethod
    def scaling(cls, rank: int, options: Mapping[str, Any]) -> float:
        return float(options['scale'])

    def reset_adapter_parameters(self) -> None:
        nn.init.zeros_(self.flora_core)
        for factor in self.flora_factors:
            nn.init.kaiming_normal_(factor, a=math.sqrt(3))

    @property
    def adapter_config(self) -> dict:
        return {**super().adapter_config, 'ranks': list(self.flora_core.shape)}

    def update_rank(self) -> int:
        ranks = self.flora_core.shape  # mode-1 unfolding of the Tucker tensor
        return min(ranks[0], math.prod(ranks[1:]))

    def compute_delta_weight(self) -> torch.Tensor:
        return tucker_to_tensor(self.flora_core * self.adapter_scale, list(self.flora_factors))

    def adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        core = self.flora_core.to(x.dtype)
        factors = [f.to(x.dtype) for f in self.flora_factors]
        if self.is_conv:
            return tucker_conv(x, core, factors, self._adapter_geometry, self.adapter_scale)
        # x B G^T A^T with s G B^T (J_0, in) folded once per call: two thin matmuls per token.
        down = (core * self.adapter_scale) @ factors[1].t()
        return F.linear(F.linear(x, down), factors[0])

    def forward_cost(self, x: torch.Tensor) -> Cost:
        p_in, p_out, base = call_size(self, x)
        out, cin_g, groups, kernel = layer_dims(self)
        r_out, r_in = self.flora_core.shape[:2]
        k = math.prod(kernel)
        if fold_input_projection(p_in, p_out, cin_g, r_in, r_out, k):
            down, hidden, ops = p_out * groups * r_out * cin_g * k, p_out * groups * r_out, 3
        else:
            down = p_in * groups * cin_g * r_in + p_out * groups * r_out * r_in * k
            hidden, ops = p_in * groups * r_in + p_out * groups * r_out, 4
        rebuild = tucker_flops(self.flora_core.shape, self.weight.shape) + self.weight.numel()
        return Cost(base, down + p_out * out * r_out, rebuild, x.numel(), p_out * out, hidden,
                    ops)
