"""DoRA: LoRA's update as a direction change, with a trained per-channel magnitude."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..cost import TRAFFIC_COST, Cost
from ..layers import autocast_disabled
from ..registry import register_adapter
from .lora import LoRALayer

# Lower bound of DoRA's ||V||_c against 0 / 0 (the eps of ``F.normalize``).
DORA_NORM_EPS = 1e-12


def _per_channel(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """View an ``(out,)`` vector to broadcast over a weight ``(out, ...)`` of ``ndim`` dims."""
    return vector.reshape(-1, *[1] * (ndim - 1))


@register_adapter
class DoRALayer(LoRALayer):
    """DoRA: ``W = m * V / ||V||_c`` with ``V = W0 + s * reshape(B @ A)``.

    ``dora_magnitude`` ``(out,)`` starts at ``||W0||_c``, the norm over every dim but the output
    channel, so ``W = W0`` at init. As in section 4.3 of the DoRA paper, ``||V||_c`` is treated as
    a constant in backward (detached): same forward values, much less activation memory. The
    norm is clamped to ``DORA_NORM_EPS``, so an all-zero output channel of ``W0`` (``m = 0``)
    stays zero instead of giving ``0 / 0``.
    Factorized forward: ``(m / ||V||_c) * (W0 x + s B A x) + bias``; merged: one op with ``W``.
    ``merge()`` caches ``||V||_c`` so that ``unmerge()`` restores ``W0`` exactly.
    """

    adapter_type = 'DoRA'
    adapter_prefix = 'dora_'
    adapter_layer_names = ('dora_A', 'dora_B', 'dora_magnitude')
    adapter_attr_names = ('_dora_merged_norm',)

    @classmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return {**super().adapter_shapes(weight_shape, rank, options),
                'dora_magnitude': (weight_shape[0],)}

    def reset_adapter_parameters(self) -> None:
        super().reset_adapter_parameters()
        with torch.no_grad():
            self.dora_magnitude.copy_(self._column_norm(self.weight.to(self._lora_a.dtype)))
        self._dora_merged_norm = None

    @staticmethod
    def _column_norm(weight: torch.Tensor) -> torch.Tensor:
        """Per-output-channel L2 norm ``(out,)`` of a weight ``(out, ...)``."""
        return torch.linalg.vector_norm(weight.flatten(1), dim=1)

    def _unmerged_weight(self) -> torch.Tensor:
        """``W0`` in the adapter dtype, recovered from the merged weight when merged."""
        weight = self.weight.to(self._lora_a.dtype)
        if not self.merged:
            return weight
        # A channel with m = 0 was merged to zero; its V is taken as 0 (exact for the dead
        # channels of an all-zero W0 row, whose B row never receives a gradient).
        dead = self.dora_magnitude == 0
        ratio = torch.where(dead, 0., self._dora_merged_norm
                            / self.dora_magnitude.masked_fill(dead, 1.))
        return weight * _per_channel(ratio, weight.dim()) - self._lora_delta()

    def _direction_scale(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, m / ||V||_c)`` with the norm detached."""
        direction = base + self._lora_delta()
        return direction, self.dora_magnitude / self._direction_norm(direction)

    @staticmethod
    def _direction_norm(direction: torch.Tensor) -> torch.Tensor:
        return DoRALayer._column_norm(direction).detach().clamp_min(DORA_NORM_EPS)

    def compute_delta_weight(self) -> torch.Tensor:
        base = self._unmerged_weight()
        direction, scale = self._direction_scale(base)
        return direction * _per_channel(scale, base.dim()) - base

    def _effective_weight(self) -> torch.Tensor:
        direction, scale = self._direction_scale(self.weight.to(self._lora_a.dtype))
        return direction * _per_channel(scale, direction.dim())

    def _factorized_forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_disabled(x.device.type):
            _, scale = self._direction_scale(self.weight.to(self._lora_a.dtype))
        out = self._base_forward(x, self.weight, None)
        out = out + self.adapter_branch(self._dropout(x)).to(out.dtype)
        shape = (-1, *[1] * self._adapter_geometry.dim) if self.is_conv else (-1,)
        out = out * scale.to(out.dtype).reshape(shape)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).reshape(shape)
        return out

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            direction, scale = self._direction_scale(self.weight.to(self._lora_a.dtype))
            self._dora_merged_norm = self._direction_norm(direction)
            self.merged = True
            self._store_weight(direction * _per_channel(scale, direction.dim()))

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self._unmerged_weight()
            self.merged = False
            self._store_weight(weight)
            self._dora_merged_norm = None

    def forward_cost(self, x: torch.Tensor) -> Cost:
        cost = super().forward_cost(x)
        # Both paths rebuild V for its norm; factorized also rescales the output (2 ops).
        rebuild = cost.rebuild + 2 * self.weight.numel()
        return cost._replace(adapter=cost.adapter + rebuild + TRAFFIC_COST * 2 * cost.t_out,
                             rebuild=rebuild, ops=cost.ops + 2)
