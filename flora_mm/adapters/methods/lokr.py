"""LoKr (LyCORIS): a Kronecker product of two small factors, as peft's LoKrModel."""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..cost import tucker_macs
from ..layers import ALPHA, AdapterLayer, Option, boolean, unfolded_size
from ..registry import register_adapter
from ..tucker import tucker_to_tensor


@functools.lru_cache(maxsize=None)
def factorize(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``m * n`` as LyCORIS / peft do.

    ``factor`` dividing ``dimension`` gives ``(factor, dimension // factor)`` as is. Otherwise
    (and for -1, no bound) the divisors are walked upward while the smaller side stays
    <= ``factor`` and below the other side, which brings the pair as close to the square root
    as the bound allows; the result is ordered ``m <= n``.

    Args:
        dimension: A channel count.
        factor: -1 or a positive integer.

    Returns:
        ``(m, n)`` with ``m * n == dimension``.
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        divisor = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)
        if divisor > bound:
            break
        m, n = divisor, dimension // divisor
    return min(m, n), max(m, n)


def _decompose_factor(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value > 0):
        return 'must be -1 (factors near the square root) or a positive integer'
    return None


@register_adapter
class LoKrLayer(AdapterLayer):
    """LoKr: ``dW = s * kron(W1, W2)``, ``s = alpha / r``.

    The output and (per-group) input channels are factorized, ``out = l * k`` and
    ``in/groups = m * n`` (:func:`factorize` with ``decompose_factor``); ``W1`` ``(l, m)`` acts
    on the outer channel blocks, ``W2`` ``(k, n, *kernel)`` within them and carries the
    kernel, so ``kron(W1, W2)`` has the weight's shape ``(out, in/groups, *kernel)``.
    Parameters (peft's names, shapes and initialisation):

    * ``lokr_w1`` ``(l, m)`` (zero), or with ``decompose_both`` and ``r < max(l, m) / 2``
      ``lokr_w1_a`` ``(l, r)`` (zero) and ``lokr_w1_b`` ``(r, m)``;
    * ``lokr_w2`` ``(k, n, *kernel)`` when ``r >= max(k, n) / 2``; otherwise ``lokr_w2_a``
      ``(k, r)`` and ``lokr_w2_b`` ``(r, n * prod(kernel))``, or for a conv with a kernel
      and ``use_effective_conv2d`` the Tucker form ``lokr_t2 x_0 lokr_w2_a^T x_1 lokr_w2_b^T``
      with ``lokr_t2`` ``(r, r, *kernel)``, ``lokr_w2_a`` ``(r, k)``, ``lokr_w2_b`` ``(r, n)``
      (peft's Conv1d core is ``(r, r, k, 1)``);

    every factor but the zero ones kaiming-uniform (``a=sqrt(5)``). Any rank is accepted: a
    rank past half a factor's larger side makes that factor full. LoKr runs merged.
    """

    adapter_type = 'LoKr'
    adapter_prefix = 'lokr_'
    adapter_layer_names = ('lokr_w1', 'lokr_w1_a', 'lokr_w1_b', 'lokr_w2', 'lokr_w2_a',
                           'lokr_w2_b', 'lokr_t2')
    adapter_keys = {
        'alpha': ALPHA,
        'decompose_both': Option(False, boolean, 'also make W1 low-rank'),
        'decompose_factor': Option(-1, _decompose_factor, 'channel factorization bound'),
        'use_effective_conv2d': Option(False, boolean, 'keep the kernel of a conv in a Tucker '
                                       'core (r, r, *kernel)'),
    }
    count_grows_with_rank = False  # a factor turning full can be smaller than its low rank

    @classmethod
    def _blocks(cls, weight_shape: tuple[int, ...], options: Mapping[str, Any]
                ) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((l, k), (m, n))``: the output and input channel factorizations."""
        factor = options['decompose_factor']
        return factorize(weight_shape[0], factor), factorize(weight_shape[1], factor)

    @classmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        (l, k), (m, n) = cls._blocks(weight_shape, options)
        kernel = weight_shape[2:]
        if options['decompose_both'] and rank < max(l, m) / 2:
            shapes = {'lokr_w1_a': (l, rank), 'lokr_w1_b': (rank, m)}
        else:
            shapes = {'lokr_w1': (l, m)}
        if rank >= max(k, n) / 2:
            shapes['lokr_w2'] = (k, n, *kernel)
        elif options['use_effective_conv2d'] and math.prod(kernel) > 1:
            shapes.update(lokr_t2=(rank, rank, *kernel), lokr_w2_a=(rank, k),
                          lokr_w2_b=(rank, n))
        else:
            shapes.update(lokr_w2_a=(k, rank), lokr_w2_b=(rank, n * math.prod(kernel)))
        return shapes

    @classmethod
    def saturation_rank(cls, weight_shape: tuple[int, ...], options: Mapping[str, Any]) -> int:
        (l, k), (m, n) = cls._blocks(weight_shape, options)
        return math.ceil(max(k, n, *((l, m) if options['decompose_both'] else ())) / 2)

    def reset_adapter_parameters(self) -> None:
        if hasattr(self, 'lokr_w1'):
            nn.init.zeros_(self.lokr_w1)
        else:
            nn.init.zeros_(self.lokr_w1_a)
            nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5))
        for name in ('lokr_w2', 'lokr_w2_a', 'lokr_w2_b', 'lokr_t2'):
            if hasattr(self, name):
                nn.init.kaiming_uniform_(getattr(self, name), a=math.sqrt(5))

    def _w1(self) -> torch.Tensor:
        if hasattr(self, 'lokr_w1'):
            return self.lokr_w1
        return self.lokr_w1_a @ self.lokr_w1_b

    def _w2(self) -> torch.Tensor:
        """``W2`` as ``(k, n, *kernel)``."""
        if hasattr(self, 'lokr_w2'):
            return self.lokr_w2
        if hasattr(self, 'lokr_t2'):
            spatial = [None] * (self.lokr_t2.dim() - 2)
            return tucker_to_tensor(self.lokr_t2, [self.lokr_w2_a.t(), self.lokr_w2_b.t(),
                                                   *spatial])
        k, kernel = self.lokr_w2_a.shape[0], self.weight.shape[2:]
        return (self.lokr_w2_a @ self.lokr_w2_b).reshape(k, -1, *kernel)

    def compute_delta_weight(self) -> torch.Tensor:
        w1, w2 = self._w1(), self._w2().contiguous()  # kron views its inputs
        w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - 2))  # W1 is constant over the kernel
        return self.adapter_scale * torch.kron(w1, w2)

    def rebuild_macs(self) -> int:
        macs = 3 * self.weight.numel()  # Kronecker product, scale, + W0
        if hasattr(self, 'lokr_w1_a'):
            macs += self.lokr_w1_a.shape[0] * math.prod(self.lokr_w1_b.shape)
        if hasattr(self, 'lokr_t2'):
            core = self.lokr_t2.shape
            macs += tucker_macs(core, [tuple(self.lokr_w2_a.shape[::-1]),
                                       tuple(self.lokr_w2_b.shape[::-1]),
                                       *[None] * (len(core) - 2)])
        elif hasattr(self, 'lokr_w2_a'):
            macs += self.lokr_w2_a.shape[0] * math.prod(self.lokr_w2_b.shape)
        return macs

    def update_rank(self) -> int:
        # The unfolding of kron(W1, W2) is kron(W1, unfold(W2)): the ranks multiply.
        w1, w2 = self._w1(), self._w2()
        r1 = min(*w1.shape, self.adapter_rank) if hasattr(self, 'lokr_w1_a') else min(w1.shape)
        r2 = min(unfolded_size(w2.shape))
        if not hasattr(self, 'lokr_w2'):
            r2 = min(r2, self.adapter_rank)
        return r1 * r2
