"""LoRA (paper eq. 3 for convs): a rank-r update of the ``(out, in/groups * k)`` unfolding."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cost import Cost, call_size, layer_dims
from ..layers import ALPHA, AdapterLayer
from ..registry import register_adapter
from ..tucker import low_rank_conv


def lora_rank(weight_shape: tuple[int, ...], rank: int) -> int:
    """LoRA rank of the ``(out, in/groups * prod(kernel))`` reshaped weight, clipped to its size."""
    return min(rank, weight_shape[0], math.prod(weight_shape[1:]))


@register_adapter
class LoRALayer(AdapterLayer):
    """LoRA (paper eq. 3 for convs): ``dW = s * reshape(B @ A, W.shape)``.

    ``lora_A`` ``(r, in/groups * prod(kernel))`` (kaiming-uniform, ``a=sqrt(5)``),
    ``lora_B`` ``(out, r)`` (zero init); ``s = alpha / rank``; ``r`` is the rank clipped to
    the unfolding's size. Grouped and depthwise convs share ``A`` across groups, exactly like
    the reshaped ``(out, in/groups * k*k)`` weight does.
    """

    adapter_type = 'LoRA'
    adapter_prefix = 'lora_'
    adapter_layer_names = ('lora_A', 'lora_B')
    adapter_keys = {'alpha': ALPHA}

    @classmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        r = lora_rank(weight_shape, rank)
        a_name, b_name = cls.adapter_layer_names[:2]
        return {a_name: (r, math.prod(weight_shape[1:])), b_name: (weight_shape[0], r)}

    @property
    def _lora_a(self) -> nn.Parameter:
        return getattr(self, self.adapter_layer_names[0])

    @property
    def _lora_b(self) -> nn.Parameter:
        return getattr(self, self.adapter_layer_names[1])

    def reset_adapter_parameters(self) -> None:
        nn.init.kaiming_uniform_(self._lora_a, a=math.sqrt(5))
        nn.init.zeros_(self._lora_b)

    @property
    def adapter_config(self) -> dict:
        return {**super().adapter_config, 'ranks': [self._lora_a.shape[0]]}

    def update_rank(self) -> int:
        # DoRA: the rank of its low-rank direction change (the magnitude rescaling of the
        # whole weight makes its full update dense).
        return self._lora_a.shape[0]

    def _lora_delta(self) -> torch.Tensor:
        return ((self._lora_b * self.adapter_scale) @ self._lora_a).reshape(self.weight.shape)

    def compute_delta_weight(self) -> torch.Tensor:
        return self._lora_delta()

    def adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        down = (self._lora_a * self.adapter_scale).to(x.dtype)
        up = self._lora_b.to(x.dtype)
        if self.is_conv:
            down = down.reshape(down.shape[0], *self.weight.shape[1:])
            return low_rank_conv(x, down, up, self._adapter_geometry)
        return F.linear(F.linear(x, down), up)

    def forward_cost(self, x: torch.Tensor) -> Cost:
        _, p_out, base = call_size(self, x)
        r, a_cols = self._lora_a.shape
        out, _, groups, _ = layer_dims(self)
        adapter = p_out * (groups * r * a_cols + out * r)
        return Cost(base, adapter, out * r * a_cols + self.weight.numel(), x.numel(),
                    p_out * out, p_out * groups * r, 3)
