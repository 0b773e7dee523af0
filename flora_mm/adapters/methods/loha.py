"""LoHa (LyCORIS, FedPara): the Hadamard product of two low-rank updates, as peft's LoHaModel."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..cost import tucker_macs
from ..layers import ALPHA, AdapterLayer, Option, boolean, unfolded_size
from ..registry import register_adapter
from ..tucker import tucker_to_tensor


def _effective_conv(weight_shape: tuple[int, ...], options: Mapping[str, Any]) -> bool:
    # A 1x1 (or size-1) kernel has no spatial structure to keep: the flat form is the same map.
    return options['use_effective_conv2d'] and math.prod(weight_shape[2:]) > 1


@register_adapter
class LoHaLayer(AdapterLayer):
    """LoHa: ``dW = s * (W1a W1b) ⊙ (W2a W2b)`` on the ``(out, in/groups * prod(kernel))``
    unfolding, ``s = alpha / r``.

    Parameters (peft's names, shapes and initialisation): ``hada_w1_a`` / ``hada_w2_a``
    ``(out, r)``, ``hada_w1_b`` / ``hada_w2_b`` ``(r, in/groups * prod(kernel))``; all
    kaiming-uniform (``a=sqrt(5)``) but ``hada_w2_b``, zero, so the update starts at zero.
    With ``use_effective_conv2d`` a conv with a spatial kernel keeps it in two Tucker factors
    ``hada_t{i} x_0 hada_w{i}_a^T x_1 hada_w{i}_b^T`` with cores ``hada_t1`` / ``hada_t2``
    ``(r, r, *kernel)`` (kaiming-uniform), ``hada_w{i}_a`` ``(r, out)`` and ``hada_w{i}_b``
    ``(r, in/groups)``; peft's Conv1d cores carry a trailing size-1 dimension,
    ``(r, r, k, 1)``, these do not.

    The rank is at most that of the unfolding, ``min(out, in/groups * prod(kernel))``: each
    factor ``W_ia W_ib`` cannot have more. LoHa has no cheap factorized forward (the update is
    only low-rank as a product of two full-size matrices), so it runs merged.
    """

    adapter_type = 'LoHa'
    adapter_prefix = 'hada_'
    adapter_layer_names = ('hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b', 'hada_t1',
                           'hada_t2')
    adapter_keys = {
        'alpha': ALPHA,
        'use_effective_conv2d': Option(False, boolean, 'keep the kernel of a conv in Tucker '
                                       'cores (r, r, *kernel)'),
    }

    @classmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        out, cin, kernel = weight_shape[0], weight_shape[1], weight_shape[2:]
        if _effective_conv(weight_shape, options):
            return {f'hada_{name}': shape for i in (1, 2) for name, shape in (
                (f't{i}', (rank, rank, *kernel)), (f'w{i}_a', (rank, out)),
                (f'w{i}_b', (rank, cin)))}
        rest = cin * math.prod(kernel)
        return {f'hada_{name}': shape for i in (1, 2) for name, shape in (
            (f'w{i}_a', (out, rank)), (f'w{i}_b', (rank, rest)))}

    @classmethod
    def max_rank(cls, weight_shape: tuple[int, ...], options: Mapping[str, Any]) -> int:
        return min(unfolded_size(weight_shape))

    def reset_adapter_parameters(self) -> None:
        for name in ('hada_w1_a', 'hada_w1_b', 'hada_w2_a'):
            nn.init.kaiming_uniform_(getattr(self, name), a=math.sqrt(5))
        nn.init.zeros_(self.hada_w2_b)
        if hasattr(self, 'hada_t1'):
            nn.init.kaiming_uniform_(self.hada_t1, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.hada_t2, a=math.sqrt(5))

    def update_rank(self) -> int:
        # Each factor has rank <= r, their Hadamard product <= r^2.
        return min(self.adapter_rank ** 2, *unfolded_size(self.weight.shape))

    def _factor(self, i: int) -> torch.Tensor:
        w_a, w_b = getattr(self, f'hada_w{i}_a'), getattr(self, f'hada_w{i}_b')
        if hasattr(self, f'hada_t{i}'):
            core = getattr(self, f'hada_t{i}')
            return tucker_to_tensor(core, [w_a.t(), w_b.t(), *[None] * (core.dim() - 2)])
        return (w_a @ w_b).reshape(self.weight.shape)

    def compute_delta_weight(self) -> torch.Tensor:
        return self.adapter_scale * self._factor(1) * self._factor(2)

    def rebuild_macs(self) -> int:
        out, rest = unfolded_size(self.weight.shape)
        numel = self.weight.numel()
        if hasattr(self, 'hada_t1'):
            core = self.hada_t1.shape
            factor = tucker_macs(core, [tuple(self.hada_w1_a.shape[::-1]),
                                        tuple(self.hada_w1_b.shape[::-1]),
                                        *[None] * (len(core) - 2)])
        else:
            factor = out * self.adapter_rank * rest
        return 2 * factor + 3 * numel  # two factors; Hadamard product, scale, + W0
