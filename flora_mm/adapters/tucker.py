"""Tucker algebra and factorized convolutions for FLoRA.

Notation: a weight ``W`` of N modes ``(I_1, ..., I_N)`` is updated by
``dW = G x_1 A_1 x_2 A_2 ... x_N A_N`` with core ``G`` of shape ``(J_1, ..., J_N)`` and factors
``A_n`` of shape ``(I_n, J_n)``. For a convolution weight ``(out, in/groups, k_1, ..., k_d)``
mode 0 is the output channel mode, mode 1 the (per-group) input channel mode and modes
``2..d+1`` the spatial modes.

The factorized convolution never builds ``dW``: it projects the input channels down with
``A_1``, runs the small "core kernel" (``G`` contracted with the spatial factors only) with the
base layer's geometry and projects up with ``A_0``. Channel projections are 1x1 convolutions,
which commute with every padding mode (padding copies or zeros whole channels), so the result
equals ``conv(x, dW)`` exactly up to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_CONV_FNS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def mode_product(tensor: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-n product ``tensor x_n matrix``.

    Args:
        tensor: Tensor whose dimension ``mode`` has size ``J``.
        matrix: Matrix of shape ``(I, J)``.
        mode: The contracted dimension.

    Returns:
        Tensor equal to ``tensor`` with dimension ``mode`` replaced by size ``I``.
    """
    return torch.movedim(torch.movedim(tensor, mode, -1) @ matrix.transpose(0, 1), -1, mode)


def tucker_to_tensor(core: torch.Tensor, factors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Reconstruct ``core x_1 A_1 ... x_N A_N``; a ``None`` factor leaves its mode untouched.

    Args:
        core: Core tensor of shape ``(J_1, ..., J_N)``.
        factors: N factors of shape ``(I_n, J_n)`` or ``None``.

    Returns:
        Tensor of shape ``(I_1, ..., I_N)`` (``J_n`` kept where the factor is ``None``).
    """
    if len(factors) != core.dim():
        raise ValueError(f'{len(factors)} factors for a core of {core.dim()} modes')
    out = core
    # Contract the most-shrinking modes first: the intermediate stays as small as possible.
    order = sorted((n for n, f in enumerate(factors) if f is not None),
                   key=lambda n: factors[n].shape[0] / max(factors[n].shape[1], 1))
    for n in order:
        out = mode_product(out, factors[n], n)
    return out


def tucker_flops(core_shape: Sequence[int], full_shape: Sequence[int]) -> int:
    """Multiply-accumulates of :func:`tucker_to_tensor` for the given shapes (same mode order).

    Args:
        core_shape: ``(J_1, ..., J_N)``.
        full_shape: ``(I_1, ..., I_N)``.

    Returns:
        The MAC count.
    """
    shape = list(core_shape)
    total = 0
    order = sorted(range(len(shape)), key=lambda n: full_shape[n] / max(core_shape[n], 1))
    for n in order:
        shape[n] = full_shape[n]
        total += math.prod(shape) * core_shape[n]
    return total


@dataclass(frozen=True)
class ConvGeometry:
    """Everything of a ``_ConvNd`` besides its weight that determines its output.

    Attributes:
        dim: Number of spatial dimensions (1, 2 or 3).
        stride: Per-dimension stride.
        padding: Per-dimension padding or the strings 'same' / 'valid'.
        dilation: Per-dimension dilation.
        groups: Number of channel groups.
        padding_mode: 'zeros', 'reflect', 'replicate' or 'circular'.
        reversed_padding: ``F.pad`` argument used when ``padding_mode != 'zeros'``.
    """

    dim: int
    stride: tuple
    padding: tuple | str
    dilation: tuple
    groups: int
    padding_mode: str
    reversed_padding: tuple

    @classmethod
    def from_module(cls, conv: nn.modules.conv._ConvNd) -> 'ConvGeometry':
        """Read the geometry of a ``nn.Conv1d/2d/3d`` (or subclass)."""
        return cls(dim=len(conv.kernel_size), stride=tuple(conv.stride),
                   padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
                   dilation=tuple(conv.dilation), groups=conv.groups,
                   padding_mode=conv.padding_mode,
                   reversed_padding=tuple(conv._reversed_padding_repeated_twice))

    def output_spatial(self, in_spatial: Sequence[int], kernel: Sequence[int]) -> list[int]:
        """Output spatial size of the convolution for an input of spatial size ``in_spatial``."""
        if self.padding == 'same':
            return list(in_spatial)
        pad = (0,) * self.dim if self.padding == 'valid' else self.padding
        return [(i + 2 * p - d * (k - 1) - 1) // s + 1
                for i, p, d, k, s in zip(in_spatial, pad, self.dilation, kernel, self.stride)]


def conv_nd(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry, *, groups: int,
            spatial: bool = True) -> torch.Tensor:
    """Convolution with the base layer's geometry (``spatial``) or a plain 1x1 projection.

    Args:
        x: Input ``(N, C_in, *S)`` or unbatched ``(C_in, *S)``.
        weight: Kernel ``(C_out, C_in / groups, *k)``.
        geometry: Geometry of the base layer.
        groups: Channel groups of this convolution.
        spatial: If True, apply stride/padding/dilation/padding_mode of ``geometry``;
            otherwise a stride-1, unpadded convolution (used for 1x1 channel projections).

    Returns:
        The convolution output.
    """
    conv = _CONV_FNS[geometry.dim]
    if not spatial:
        return conv(x, weight, groups=groups)
    if geometry.padding_mode != 'zeros':
        x = F.pad(x, geometry.reversed_padding, mode=geometry.padding_mode)
        return conv(x, weight, None, geometry.stride, 0, geometry.dilation, groups)
    return conv(x, weight, None, geometry.stride, geometry.padding, geometry.dilation, groups)


def _as_kernel(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """View a matrix ``(C_out, C_in)`` as a 1x1 convolution kernel ``(C_out, C_in, 1, ...)``."""
    return matrix.reshape(*matrix.shape, *([1] * dim))


def _repeat_groups(kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """Stack ``groups`` copies of a per-group kernel along the output channel dimension."""
    return kernel if groups == 1 else kernel.repeat(groups, *([1] * (kernel.dim() - 1)))


def fold_input_projection(in_pixels: int, out_pixels: int, cin_g: int, r_in: int, r_out: int,
                          kernel_numel: int) -> bool:
    """Whether folding the input factor into the core kernel is cheaper than a 1x1 projection.

    Unfolded: ``in_pixels * cin_g * r_in`` (projection at input resolution) plus
    ``out_pixels * r_out * r_in * K``. Folded: ``out_pixels * r_out * cin_g * K``. Folding wins
    for 1x1 kernels and patchify convs (stride >= kernel), projecting first for 3x3/7x7 kernels.
    """
    unfolded = in_pixels * cin_g * r_in + out_pixels * r_out * r_in * kernel_numel
    return out_pixels * r_out * cin_g * kernel_numel <= unfolded


def tucker_conv(x: torch.Tensor, core: torch.Tensor, factors: Sequence[torch.Tensor],
                geometry: ConvGeometry, scale: float) -> torch.Tensor:
    """``conv(x, scale * Tucker(core, factors))`` without materializing the full delta.

    Works for any ``groups``: the input factor ``A_1 (C_in/g, J_1)`` and the core kernel are
    shared by all groups (the delta has a single ``C_in/g`` mode), so both run as grouped
    convolutions with the per-group kernel repeated ``g`` times; the output factor
    ``A_0 (C_out, J_0)`` then maps group ``i``'s ``J_0`` features to group ``i``'s outputs.

    Args:
        x: Input ``(N, C_in, *S)`` or ``(C_in, *S)``.
        core: Core ``(J_0, J_1, *Jk)``.
        factors: ``[A_0 (C_out, J_0), A_1 (C_in/g, J_1), *spatial (k_i, Jk_i)]``.
        geometry: Base layer geometry.
        scale: The constant ``s`` (folded into the small core kernel).

    Returns:
        Output ``(N, C_out, *S_out)``.
    """
    out_factor, in_factor, spatial = factors[0], factors[1], factors[2:]
    g, d = geometry.groups, geometry.dim
    r_out, r_in = core.shape[0], core.shape[1]
    cin_g = in_factor.shape[0]
    # Core kernel (J_0, J_1, k_1, ..., k_d): the spatial structure of the update stays a conv.
    kernel = tucker_to_tensor(core * scale, [None, None, *spatial])
    kernel_numel = math.prod(kernel.shape[2:])
    in_spatial = x.shape[-d:]
    in_pixels = math.prod(in_spatial)
    out_pixels = math.prod(geometry.output_spatial(in_spatial, kernel.shape[2:]))
    if fold_input_projection(in_pixels, out_pixels, cin_g, r_in, r_out, kernel_numel):
        h = conv_nd(x, _repeat_groups(mode_product(kernel, in_factor, 1), g), geometry, groups=g)
    else:
        h = conv_nd(x, _repeat_groups(_as_kernel(in_factor.t(), d), g), geometry, groups=g,
                    spatial=False)
        h = conv_nd(h, _repeat_groups(kernel, g), geometry, groups=g)
    return conv_nd(h, _as_kernel(out_factor, d), geometry, groups=g, spatial=False)


def low_rank_conv(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                  geometry: ConvGeometry) -> torch.Tensor:
    """``conv(x, reshape(up @ down))`` as two convolutions (LoRA on a conv, paper eq. 3).

    Args:
        x: Input ``(N, C_in, *S)`` or ``(C_in, *S)``.
        down: ``A`` reshaped as a kernel ``(r, C_in/g, *k)``, shared by all groups.
        up: ``B`` of shape ``(C_out, r)``.
        geometry: Base layer geometry.

    Returns:
        Output ``(N, C_out, *S_out)``.
    """
    g = geometry.groups
    h = conv_nd(x, _repeat_groups(down, g), geometry, groups=g)
    return conv_nd(h, _as_kernel(up, geometry.dim), geometry, groups=g, spatial=False)
