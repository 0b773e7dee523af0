"""Adapted layers: FLoRA, LoRA and DoRA on ``nn.Linear`` and ``nn.Conv1d/2d/3d``.

Wrapping swaps the class of the base module in place (``module.__class__ = FLoRAConv2d``, a
subclass of both an adapter mixin and the original class). Consequences, all intended:

* the adapted module IS the original object: the same ``weight``/``bias`` Parameters, hooks,
  attributes and parents; ``isinstance(m, nn.Conv2d)`` stays true for FLOP counters and
  initializers; the original state-dict keys do not change;
* adapter parameters are added under method-prefixed names (``flora_core``,
  ``flora_factors.<n>``, ``lora_A``, ``lora_B``, ``dora_A``, ``dora_B``, ``dora_magnitude``);
* :func:`unwrap_layer` swaps the class back and deletes what wrapping added.

Contract of every adapted layer: ``delta_weight()`` (shape of the base weight, scale applied),
``merge()`` / ``unmerge()`` (idempotent), ``adapter_config`` (enough to re-create it) and
``adapter_named_parameters()``.

Precision: adapter parameters are at least fp32 (the optimizer's master copy, also under
autocast and in half-precision models). :meth:`AdapterLayer.cast_frozen` may store the frozen
base weight and bias in bfloat16 / float16 to halve their memory; under autocast the base op
runs in the autocast dtype anyway, outside autocast every op runs in the input's dtype, and
``merge()`` writes the merged weight back in the layer's original dtype (``unmerge()`` restores
the reduced-precision copy).

Forward modes: ``'factorized'`` adds a low-rank branch to the frozen base output (cheap for
dense layers, the only mode that can apply dropout); ``'merged'`` runs one base op with the
weight ``W0 + delta`` rebuilt on the fly (cheap for depthwise convs, whose weights are tiny);
``'auto'`` picks per call from a multiply-accumulate estimate of the whole train step.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tucker import ConvGeometry, fold_input_projection, low_rank_conv, tucker_conv, \
    tucker_flops, tucker_to_tensor

ADAPTER_METHODS = ('FLoRA', 'LoRA', 'DoRA')
# Cost model of 'auto' in multiply-accumulate equivalents: the thin low-rank ops are memory
# bound, so every activation element they read or write counts like this many MACs (CPU
# measurements on ConvNeXt-V2 shapes put the break-even between 10 and 50), and every extra
# kernel + autograd node has a fixed cost.
TRAFFIC_COST = 16
OP_COST = 100_000
FORWARD_MODES = ('auto', 'factorized', 'merged')
# Lower bound of DoRA's ||V||_c against 0 / 0 (the eps of ``F.normalize``).
DORA_NORM_EPS = 1e-12
STANDARD_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Subclasses that override ``forward`` but keep its semantics for non-empty inputs.
FORWARD_COMPATIBLE = frozenset({
    'mmcv.cnn.bricks.wrappers.Linear',
    'mmcv.cnn.bricks.wrappers.Conv2d',
    'mmcv.cnn.bricks.wrappers.Conv3d',
    'timm.layers.linear.Linear',
    'timm.models.layers.linear.Linear',
})


def _qualified_class_name(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _standard_base(cls: type) -> type | None:
    return next((b for b in STANDARD_BASES if issubclass(cls, b)), None)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be adapted, or None if it can.

    Args:
        module: Any module.

    Returns:
        A human-readable reason, or None for a supported layer.
    """
    cls = type(module)
    if isinstance(module, AdapterLayer):
        return f'it already has a {module.adapter_type} adapter (inject once per layer)'
    base = _standard_base(cls)
    if base is None:
        return (f'{cls.__name__} is not a supported layer type (supported: nn.Linear, '
                'nn.Conv1d/2d/3d and subclasses with the same forward)')
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        return f'{cls.__name__} is lazy and not initialized yet (run a forward pass first)'
    if cls is nn.modules.linear.NonDynamicallyQuantizableLinear:
        return ('nn.MultiheadAttention reads out_proj.weight directly, so an adapter on it '
                'would never run')
    if _qualified_class_name(cls) in FORWARD_COMPATIBLE:
        return None
    for attr in ('forward', '_conv_forward'):
        if getattr(cls, attr, None) is not getattr(base, attr, None):
            return (f'{_qualified_class_name(cls)} overrides {attr}() of {base.__name__} '
                    '(e.g. dynamic "same" padding or weight standardization), which the adapter '
                    'forward would bypass; exclude it')
    return None


@contextlib.contextmanager
def _autocast_disabled(device_type: str) -> Iterator[None]:
    """Build weight-space tensors in full precision even inside an autocast region."""
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def _adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    # Adapter parameters are at least fp32 (never half precision), float64 for float64 models.
    return torch.promote_types(weight.dtype, torch.float32)


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


class AdapterLayer:
    """Mixin shared by all adapted layers (placed before the base class in the MRO).

    Attributes set by :func:`wrap_layer`:
        adapter_base_class: The original class, restored by :func:`unwrap_layer`.
        adapter_scale: The constant ``s`` multiplying the low-rank update.
        adapter_dropout: Dropout probability on the adapter branch input.
        forward_mode: 'auto', 'factorized' or 'merged'.
        merged: Whether ``delta_weight()`` is currently folded into ``weight``.
    """

    adapter_type = ''
    adapter_prefix = ''
    weight: nn.Parameter
    bias: nn.Parameter | None

    # ----------------------------------------------------------------- construction
    def _adapter_setup(self, base_class: type, scale: float, dropout: float,
                       forward_mode: str) -> None:
        self.adapter_base_class = base_class
        self.adapter_scale = float(scale)
        self.adapter_dropout = float(dropout)
        self.forward_mode = forward_mode
        self.merged = False
        self._adapter_requires_grad = (self.weight.requires_grad,
                                       None if self.bias is None else self.bias.requires_grad)
        self._adapter_dtypes = (self.weight.dtype, self.weight.dtype)  # (original, stored)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def _init_adapter_params(self, rank: int, kernel_rank: int) -> None:
        raise NotImplementedError

    @property
    def is_conv(self) -> bool:
        return isinstance(self, nn.modules.conv._ConvNd)

    @property
    def _adapter_geometry(self) -> ConvGeometry | None:
        # Read on every call like the base op does, so that a later change of the layer's
        # geometry (e.g. ``padding_mode``) reaches the adapter branch too.
        return ConvGeometry.from_module(self) if self.is_conv else None

    @property
    def adapter_config(self) -> dict:
        """Per-layer settings that re-create this adapter (JSON-serializable)."""
        return {'type': self.adapter_type, 'scale': self.adapter_scale,
                'dropout': self.adapter_dropout, 'forward_mode': self.forward_mode,
                'weight_shape': list(self.weight.shape),
                'base_class': _qualified_class_name(self.adapter_base_class)}

    def adapter_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Adapter parameters with names relative to this module (e.g. ``flora_factors.0``)."""
        for name, param in self.named_parameters():
            if name.startswith(self.adapter_prefix):
                yield name, param

    def _adapter_attr_names(self) -> tuple[str, ...]:
        return ('adapter_base_class', 'adapter_scale', 'adapter_dropout', 'forward_mode',
                'merged', '_adapter_requires_grad', '_adapter_dtypes')

    # ----------------------------------------------------------------- weight space
    def _low_rank_delta(self) -> torch.Tensor:
        """``scale * update`` in the shape of the base weight (FLoRA / LoRA / DoRA's BA)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Effective weight minus the frozen base weight, in the base weight's shape.

        Returns:
            Tensor of shape ``weight.shape`` in the adapter dtype (fp32), scale applied.
        """
        with _autocast_disabled(self.weight.device.type):
            return self._low_rank_delta()

    def _effective_weight(self) -> torch.Tensor:
        """``W0 + delta`` in the adapter dtype (used by the merged forward; the base op casts
        it to the compute dtype, so a reduced-precision ``W0`` rounds the sum only once)."""
        delta = self._low_rank_delta()
        return self.weight.to(delta.dtype) + delta

    @torch.no_grad()
    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Store the frozen base weight and bias in ``dtype`` (e.g. ``torch.bfloat16``).

        Args:
            dtype: A floating-point dtype; the layer's original dtype undoes the cast.

        Raises:
            ValueError: The layer is merged, or its base weight / bias is trainable (a
                reduced-precision trainable parameter would have no full-precision copy).
        """
        if self.merged:
            raise ValueError('cast_frozen: unmerge the layer first (a merged weight holds '
                             'W0 + dW in the original dtype)')
        for name in ('weight', 'bias'):
            param = getattr(self, name)
            if param is not None and param.requires_grad:
                raise ValueError(f'cast_frozen: {name} {tuple(param.shape)} is trainable; only '
                                 'frozen base weights can be stored in reduced precision')
            if param is not None:
                param.data = param.data.to(dtype)
        self._adapter_dtypes = (self._adapter_dtypes[0], dtype)

    def _store_weight(self, value: torch.Tensor) -> None:
        """Set ``weight``'s values, merged in the original dtype, unmerged in the stored one."""
        original, stored = self._adapter_dtypes
        self.weight.data = value.to(original if self.merged else stored)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``delta_weight()`` into ``weight``; a no-op when already merged."""
        if not self.merged:
            delta = self.delta_weight()
            self.merged = True
            self._store_weight(self.weight.to(delta.dtype) + delta)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``delta_weight()`` from ``weight`` again; a no-op when not merged."""
        if self.merged:
            delta = self.delta_weight()
            self.merged = False
            self._store_weight(self.weight.to(delta.dtype) - delta)

    # ----------------------------------------------------------------- forward
    def _base_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):  # autocast casts by itself
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        if self.is_conv:
            return self._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    def _adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the low-rank update alone, ``op(x, scale * update)``, without bias."""
        raise NotImplementedError

    def _pixels(self, x: torch.Tensor) -> tuple[int, int, int]:
        """``(input positions, output positions, base MACs)`` of one call on ``x``."""
        if not self.is_conv:
            pixels = x.numel() // self.in_features
            return pixels, pixels, pixels * self.weight.numel()
        geo = self._adapter_geometry
        in_spatial = x.shape[-geo.dim:]
        batch = x.numel() // (self.in_channels * math.prod(in_spatial))
        p_in = batch * math.prod(in_spatial)
        p_out = batch * math.prod(geo.output_spatial(in_spatial, self.kernel_size))
        return p_in, p_out, p_out * self.weight.numel()

    def _cost(self, x: torch.Tensor) -> Cost:
        """Work of one call on ``x`` for the forward-mode choice."""
        raise NotImplementedError

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapter_dropout > 0 and self.training:
            return F.dropout(x, self.adapter_dropout, training=True)
        return x

    def _use_factorized(self, x: torch.Tensor) -> bool:
        if self.training and self.adapter_dropout > 0:
            return True  # dropout cannot act on a merged weight
        if self.forward_mode != 'auto':
            return self.forward_mode == 'factorized'
        cost = self._cost(x)
        io = cost.t_in + cost.t_out
        weight_io = 3 * self.weight.numel()  # read W0, write and read the effective weight
        train = torch.is_grad_enabled() and any(
            p.requires_grad for _, p in self.adapter_named_parameters())
        if not train:
            factorized = cost.adapter + TRAFFIC_COST * (io + 2 * cost.t_hidden + 2 * cost.t_out)
            merged = cost.rebuild + TRAFFIC_COST * weight_io
            return factorized + OP_COST * cost.ops < merged
        # Backward: the frozen base op needs only its input gradient, the merged op also the
        # full-size weight gradient; branch ops need input and weight gradients (x3 work, and
        # roughly 6 passes over their inputs / outputs, gradient accumulation included).
        x_grad = int(x.requires_grad)
        factorized = (cost.base * (1 + x_grad) + TRAFFIC_COST * io * (1 + x_grad)
                      + 3 * cost.adapter + 6 * TRAFFIC_COST * (io + cost.t_hidden)
                      + 3 * OP_COST * cost.ops)
        merged = (cost.base * (2 + x_grad) + TRAFFIC_COST * io * (2 + x_grad)
                  + 3 * (cost.rebuild + TRAFFIC_COST * weight_io))
        return factorized < merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._base_forward(x, self.weight, self.bias)
        if self._use_factorized(x):
            return self._factorized_forward(x)
        with _autocast_disabled(x.device.type):
            weight = self._effective_weight()
        return self._base_forward(x, weight, self.bias)

    def _factorized_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x, self.weight, self.bias)
        return out + self._adapter_branch(self._dropout(x)).to(out.dtype)

    def extra_repr(self) -> str:
        cfg = {k: v for k, v in self.adapter_config.items()
               if k not in ('type', 'weight_shape', 'base_class')}
        settings = ', '.join(f'{k}={v}' for k, v in cfg.items())
        return f'{super().extra_repr()}, adapter={self.adapter_type}({settings})'


def _conv_dims(layer: nn.Module) -> tuple[int, int, int, tuple[int, ...]]:
    """``(out, in_per_group, groups, kernel)`` of a linear (kernel ``()``) or conv weight."""
    shape = tuple(layer.weight.shape)
    groups = layer.groups if isinstance(layer, nn.modules.conv._ConvNd) else 1
    return shape[0], shape[1], groups, shape[2:]


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


def lora_rank(weight_shape: tuple[int, ...], rank: int) -> int:
    """LoRA rank of the ``(out, in/groups * prod(kernel))`` reshaped weight, clipped to its size."""
    return min(rank, weight_shape[0], math.prod(weight_shape[1:]))


class FLoRALayer(AdapterLayer):
    """FLoRA: ``dW = s * G x_1 A_1 ... x_N A_N`` on every mode of the real weight shape.

    Parameters: ``flora_core`` ``(J_1, ..., J_N)`` (zero init, so the model is unchanged at
    step 0) and ``flora_factors.<n>`` ``(I_n, J_n)`` (kaiming-normal with ``a=sqrt(3)``, i.e.
    std ``1/sqrt(2 J_n)``, as in the published FLoRA code). For a linear layer
    ``dW = s * A G B^T`` with ``A = flora_factors.0``, ``B = flora_factors.1``.
    """

    adapter_type = 'FLoRA'
    adapter_prefix = 'flora_'

    def _init_adapter_params(self, rank: int, kernel_rank: int) -> None:
        shape = tuple(self.weight.shape)
        ranks = flora_ranks(shape, rank, kernel_rank)
        kwargs = {'device': self.weight.device, 'dtype': _adapter_dtype(self.weight)}
        self.flora_core = nn.Parameter(torch.zeros(ranks, **kwargs))
        self.flora_factors = nn.ParameterList(
            [nn.Parameter(torch.empty(i, j, **kwargs)) for i, j in zip(shape, ranks)])
        for factor in self.flora_factors:
            nn.init.kaiming_normal_(factor, a=math.sqrt(3))
        self.adapter_rank = rank
        self.adapter_kernel_rank = kernel_rank

    def _adapter_attr_names(self) -> tuple[str, ...]:
        return super()._adapter_attr_names() + ('flora_core', 'flora_factors', 'adapter_rank',
                                                'adapter_kernel_rank')

    @property
    def adapter_config(self) -> dict:
        return {**super().adapter_config, 'rank': self.adapter_rank,
                'kernel_rank': self.adapter_kernel_rank, 'ranks': list(self.flora_core.shape)}

    def _low_rank_delta(self) -> torch.Tensor:
        return tucker_to_tensor(self.flora_core * self.adapter_scale, list(self.flora_factors))

    def _adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        core = self.flora_core.to(x.dtype)
        factors = [f.to(x.dtype) for f in self.flora_factors]
        if self.is_conv:
            return tucker_conv(x, core, factors, self._adapter_geometry, self.adapter_scale)
        # x B G^T A^T with s G B^T (J_0, in) folded once per call: two thin matmuls per token.
        down = (core * self.adapter_scale) @ factors[1].t()
        return F.linear(F.linear(x, down), factors[0])

    def _cost(self, x: torch.Tensor) -> Cost:
        p_in, p_out, base = self._pixels(x)
        out, cin_g, groups, kernel = _conv_dims(self)
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


class LoRALayer(AdapterLayer):
    """LoRA (paper eq. 3 for convs): ``dW = s * reshape(B @ A, W.shape)``.

    ``lora_A`` ``(r, in/groups * prod(kernel))`` (kaiming-uniform, ``a=sqrt(5)``),
    ``lora_B`` ``(out, r)`` (zero init); ``s = alpha / rank``. Grouped and depthwise convs share
    ``A`` across groups, exactly like the reshaped ``(out, in/groups * k*k)`` weight does.
    """

    adapter_type = 'LoRA'
    adapter_prefix = 'lora_'
    _a_name, _b_name = 'lora_A', 'lora_B'

    def _init_adapter_params(self, rank: int, kernel_rank: int) -> None:
        shape = tuple(self.weight.shape)
        r = lora_rank(shape, rank)
        kwargs = {'device': self.weight.device, 'dtype': _adapter_dtype(self.weight)}
        lora_a = nn.Parameter(torch.empty(r, math.prod(shape[1:]), **kwargs))
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
        setattr(self, self._a_name, lora_a)
        setattr(self, self._b_name, nn.Parameter(torch.zeros(shape[0], r, **kwargs)))
        self.adapter_rank = rank

    def _adapter_attr_names(self) -> tuple[str, ...]:
        return super()._adapter_attr_names() + (self._a_name, self._b_name, 'adapter_rank')

    @property
    def _lora_a(self) -> nn.Parameter:
        return getattr(self, self._a_name)

    @property
    def _lora_b(self) -> nn.Parameter:
        return getattr(self, self._b_name)

    @property
    def adapter_config(self) -> dict:
        return {**super().adapter_config, 'rank': self.adapter_rank,
                'alpha': self.adapter_scale * self.adapter_rank,
                'ranks': [self._lora_a.shape[0]]}

    def _low_rank_delta(self) -> torch.Tensor:
        return ((self._lora_b * self.adapter_scale) @ self._lora_a).reshape(self.weight.shape)

    def _adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        down = (self._lora_a * self.adapter_scale).to(x.dtype)
        up = self._lora_b.to(x.dtype)
        if self.is_conv:
            down = down.reshape(down.shape[0], *self.weight.shape[1:])
            return low_rank_conv(x, down, up, self._adapter_geometry)
        return F.linear(F.linear(x, down), up)

    def _cost(self, x: torch.Tensor) -> Cost:
        _, p_out, base = self._pixels(x)
        r, a_cols = self._lora_a.shape
        out, _, groups, _ = _conv_dims(self)
        adapter = p_out * (groups * r * a_cols + out * r)
        return Cost(base, adapter, out * r * a_cols + self.weight.numel(), x.numel(),
                    p_out * out, p_out * groups * r, 3)


def _per_channel(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """View an ``(out,)`` vector to broadcast over a weight ``(out, ...)`` of ``ndim`` dims."""
    return vector.reshape(-1, *[1] * (ndim - 1))


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
    _a_name, _b_name = 'dora_A', 'dora_B'

    def _init_adapter_params(self, rank: int, kernel_rank: int) -> None:
        super()._init_adapter_params(rank, kernel_rank)
        with torch.no_grad():
            norm = self._column_norm(self.weight.to(self._lora_a.dtype))
        self.dora_magnitude = nn.Parameter(norm.clone())
        self._dora_merged_norm = None

    def _adapter_attr_names(self) -> tuple[str, ...]:
        return super()._adapter_attr_names() + ('dora_magnitude', '_dora_merged_norm')

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
        return weight * _per_channel(ratio, weight.dim()) - super()._low_rank_delta()

    def _direction_scale(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, m / ||V||_c)`` with the norm detached."""
        direction = base + super()._low_rank_delta()
        return direction, self.dora_magnitude / self._direction_norm(direction)

    @staticmethod
    def _direction_norm(direction: torch.Tensor) -> torch.Tensor:
        return DoRALayer._column_norm(direction).detach().clamp_min(DORA_NORM_EPS)

    def _low_rank_delta(self) -> torch.Tensor:
        base = self._unmerged_weight()
        direction, scale = self._direction_scale(base)
        return direction * _per_channel(scale, base.dim()) - base

    def _effective_weight(self) -> torch.Tensor:
        direction, scale = self._direction_scale(self.weight.to(self._lora_a.dtype))
        return direction * _per_channel(scale, direction.dim())

    def _factorized_forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast_disabled(x.device.type):
            _, scale = self._direction_scale(self.weight.to(self._lora_a.dtype))
        out = self._base_forward(x, self.weight, None)
        out = out + self._adapter_branch(self._dropout(x)).to(out.dtype)
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

    def _cost(self, x: torch.Tensor) -> Cost:
        cost = super()._cost(x)
        # Both paths rebuild V for its norm; factorized also rescales the output (2 ops).
        rebuild = cost.rebuild + 2 * self.weight.numel()
        return cost._replace(adapter=cost.adapter + rebuild + TRAFFIC_COST * 2 * cost.t_out,
                             rebuild=rebuild, ops=cost.ops + 2)


# Classes for the standard torch layers, defined statically so that pickling works.
class FLoRALinear(FLoRALayer, nn.Linear):
    """FLoRA on ``nn.Linear``."""


class FLoRAConv1d(FLoRALayer, nn.Conv1d):
    """FLoRA on ``nn.Conv1d``."""


class FLoRAConv2d(FLoRALayer, nn.Conv2d):
    """FLoRA on ``nn.Conv2d``."""


class FLoRAConv3d(FLoRALayer, nn.Conv3d):
    """FLoRA on ``nn.Conv3d``."""


class LoRALinear(LoRALayer, nn.Linear):
    """LoRA on ``nn.Linear``."""


class LoRAConv1d(LoRALayer, nn.Conv1d):
    """LoRA on ``nn.Conv1d``."""


class LoRAConv2d(LoRALayer, nn.Conv2d):
    """LoRA on ``nn.Conv2d``."""


class LoRAConv3d(LoRALayer, nn.Conv3d):
    """LoRA on ``nn.Conv3d``."""


class DoRALinear(DoRALayer, nn.Linear):
    """DoRA on ``nn.Linear``."""


class DoRAConv1d(DoRALayer, nn.Conv1d):
    """DoRA on ``nn.Conv1d``."""


class DoRAConv2d(DoRALayer, nn.Conv2d):
    """DoRA on ``nn.Conv2d``."""


class DoRAConv3d(DoRALayer, nn.Conv3d):
    """DoRA on ``nn.Conv3d``."""


_METHOD_LAYERS = {'FLoRA': FLoRALayer, 'LoRA': LoRALayer, 'DoRA': DoRALayer}
_CLASS_CACHE: dict[tuple[str, type], type] = {
    (method, base): globals()[f'{method}{base.__name__}']
    for method in ADAPTER_METHODS for base in STANDARD_BASES}


def adapter_class(method: str, base_class: type) -> type:
    """The adapted class for ``base_class``, created (and cached) for subclasses of the
    standard layers such as ``mmcv.cnn.bricks.wrappers.Conv2d``."""
    key = (method, base_class)
    if key not in _CLASS_CACHE:
        name = f'{method}_{base_class.__module__.replace(".", "_")}_{base_class.__qualname__}'
        cls = type(name, (_METHOD_LAYERS[method], base_class),
                   {'__module__': __name__, '__qualname__': name,
                    '__doc__': f'{method} on {_qualified_class_name(base_class)}.'})
        globals()[name] = cls  # pickle resolves classes by module attribute
        _CLASS_CACHE[key] = cls
    return _CLASS_CACHE[key]


def wrap_layer(module: nn.Module, method: str, *, rank: int, kernel_rank: int = 1,
               scale: float = 1.0, dropout: float = 0.0,
               forward_mode: str = 'auto') -> AdapterLayer:
    """Turn ``module`` into an adapted layer in place (arguments validated by the caller).

    Args:
        module: A supported layer (see :func:`unsupported_reason`).
        method: 'FLoRA', 'LoRA' or 'DoRA'.
        rank: Channel rank (clipped per mode).
        kernel_rank: FLoRA spatial rank (clipped per mode); ignored by LoRA/DoRA.
        scale: The constant ``s`` (for LoRA/DoRA ``alpha / rank``).
        dropout: Dropout on the adapter branch input.
        forward_mode: 'auto', 'factorized' or 'merged'.

    Returns:
        The same object, now an instance of the adapted class.
    """
    base_class = type(module)
    module.__class__ = adapter_class(method, base_class)
    module._adapter_setup(base_class, scale, dropout, forward_mode)
    module._init_adapter_params(rank, kernel_rank)
    return module


def unwrap_layer(module: AdapterLayer) -> nn.Module:
    """Drop the adapter of ``module`` in place (after merging, for deployment).

    Restores the original class and the original ``requires_grad`` and dtype of weight and
    bias.

    Args:
        module: An adapted layer.

    Returns:
        The same object as an instance of its original class.
    """
    weight_rg, bias_rg = module._adapter_requires_grad
    base_class = module.adapter_base_class
    original_dtype = module._adapter_dtypes[0]
    for name in module._adapter_attr_names():
        delattr(module, name)
    module.__class__ = base_class
    for param, requires_grad in ((module.weight, weight_rg), (module.bias, bias_rg)):
        if param is not None:
            param.data = param.data.to(original_dtype)
            param.requires_grad_(requires_grad)
    return module
