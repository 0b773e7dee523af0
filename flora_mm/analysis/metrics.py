"""Weight-space diagnostics of adapted layers (paper Fig. 4, LoRA paper section 7).

For an adapted layer with frozen base weight ``W`` and update ``dW = delta_weight()``, both
unfolded to matrices ``(out, in/groups * prod(kernel))``:

* ``delta_norm = ||dW||_F``;
* ``amplification = ||dW||_F / ||U^T W V||_F`` with ``U`` (``out x r``) and ``V``
  (``n x r``) the top-``r`` left / right singular vectors of ``dW``: how strongly the update
  amplifies directions that the pretrained weight barely uses (Hu et al., 2021).

Pure torch, no OpenMMLab imports.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from flora_mm.adapters import AdapterLayer, adapter_layers
from flora_mm.adapters.layers import unfold

# Oversampling and power iterations of the randomized range finder: for an exactly rank-r
# update (FLoRA, LoRA) the range is recovered exactly; DoRA's update is full rank, and two
# power iterations make its top-r subspace accurate to well below the curves' resolution.
OVERSAMPLE = 8
POWER_ITERS = 2
# Stage names from qualified layer names: ConvNeXt / Swin (``stages.2``), ResNet (``layer3``).
DEFAULT_STAGE_PATTERNS = (r'(?:.*\.)?stages\.(\d+)(?:\..*)?', r'(?:.*\.)?layer(\d+)(?:\..*)?')


def top_singular_vectors(mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` left and right singular vectors of ``mat``.

    Small matrices get an exact SVD; large ones a randomized range finder driven by a private,
    fixed-seed generator, so training RNG streams are never touched.

    Args:
        mat: A 2-D tensor ``(m, n)``.
        rank: Number of singular vectors (clipped to ``min(m, n)``).

    Returns:
        ``(U, V)`` of shapes ``(m, r)`` and ``(n, r)``.
    """
    m, n = mat.shape
    rank = max(1, min(rank, m, n))
    q = rank + OVERSAMPLE
    if 2 * q >= min(m, n):
        u, _, vh = torch.linalg.svd(mat, full_matrices=False)
        return u[:, :rank], vh[:rank].t()
    gen = torch.Generator(device=mat.device).manual_seed(0)
    omega = torch.randn(n, q, generator=gen, device=mat.device, dtype=mat.dtype)
    basis = torch.linalg.qr(mat @ omega).Q
    for _ in range(POWER_ITERS):
        basis = torch.linalg.qr(mat @ torch.linalg.qr(mat.t() @ basis).Q).Q
    u, _, vh = torch.linalg.svd(basis.t() @ mat, full_matrices=False)
    return (basis @ u)[:, :rank], vh[:rank].t()


def amplification_factor(delta: torch.Tensor, base: torch.Tensor, rank: int) -> float:
    """``||dW||_F / ||U^T W V||_F`` on the matrix unfoldings.

    Args:
        delta: The update ``dW`` (any weight shape).
        base: The frozen weight ``W`` (same shape).
        rank: ``r``, the number of singular directions of ``dW`` to project ``W`` on.

    Returns:
        The factor; 0.0 for a zero update (nothing is amplified yet, e.g. at initialization),
        ``inf`` if ``W`` has no energy in the update's directions.
    """
    d = unfold(delta).double()
    norm = torch.linalg.matrix_norm(d).item()
    if norm == 0.0:
        return 0.0
    u, v = top_singular_vectors(d, rank)
    projected = torch.linalg.matrix_norm(u.t() @ unfold(base).double() @ v).item()
    return norm / projected if projected > 0 else math.inf


def update_rank(layer: AdapterLayer) -> int:
    """Rank of the update's unfolding as built by the adapter (its nominal rank).

    Each method says (``AdapterLayer.update_rank``): FLoRA ``min(J_1, prod(J_2..J_N))`` (mode-1
    unfolding of the Tucker tensor); LoRA / DoRA the rank of ``B A`` (DoRA's magnitude
    rescaling makes the full update dense, its low-rank direction change still has this
    rank); a method that does not say gets the numerical rank of ``delta_weight()``.
    """
    return layer.update_rank()


def stage_of(name: str, patterns: Sequence[str] = DEFAULT_STAGE_PATTERNS) -> str:
    """``'stage<i>'`` for the first pattern whose group 1 matches ``name``, else ``'other'``."""
    for pattern in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return f'stage{match.group(1)}'
    return 'other'


@torch.no_grad()
def layer_stats(layer: AdapterLayer) -> dict[str, float] | None:
    """``{'delta_norm', 'amplification'}`` of one adapted layer, None while merged.

    A merged layer's ``weight`` holds ``W0 + dW``, not the frozen base the factor is defined on;
    training never merges, so merged layers are simply skipped.
    """
    if layer.merged:
        return None
    delta = layer.delta_weight().detach()
    return {'delta_norm': torch.linalg.matrix_norm(unfold(delta).double()).item(),
            'amplification': amplification_factor(delta, layer.weight.detach(),
                                                  update_rank(layer))}


def model_stats(model: nn.Module, patterns: Sequence[str] = DEFAULT_STAGE_PATTERNS
                ) -> dict[str, dict[str, float]]:
    """Per-stage and overall means of :func:`layer_stats` over the adapted layers.

    Args:
        model: Any model with adapters (plain or wrapped, names are only used for stages).
        patterns: Regexes whose group 1 is the stage index (see :func:`stage_of`).

    Returns:
        ``{metric: {stage: mean, ..., 'all': mean}}``; empty without (unmerged) adapters.
    """
    grouped: Mapping[str, list[dict[str, float]]] = defaultdict(list)
    for name, layer in adapter_layers(model).items():
        stats = layer_stats(layer)
        if stats is not None:
            grouped[stage_of(name, patterns)].append(stats)
            grouped['all'].append(stats)
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for stage, rows in grouped.items():
        for metric in rows[0]:
            out[metric][stage] = sum(r[metric] for r in rows) / len(rows)
    return dict(out)
