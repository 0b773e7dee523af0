"""The adapted-layer contract: what a method declares, and what every method gets for free.

A method is an :class:`AdapterLayer` subclass registered with
:func:`~flora_mm.adapters.register_adapter` (whose docstring is the checklist for a new
method). Wrapping swaps the class of the base module in place (``module.__class__ =
FLoRAConv2d``, a class generated here by :func:`adapter_class` from the method and the original
class). Consequences, all intended:

* the adapted module IS the original object: the same ``weight``/``bias`` Parameters, hooks,
  attributes and parents; ``isinstance(m, nn.Conv2d)`` stays true for FLOP counters and
  initializers; the original state-dict keys do not change;
* adapter parameters are added under method-prefixed names (``flora_core``, ``lora_A``,
  ``hada_w1_a``, ...), declared by the method;
* unwrapping swaps the class back and deletes what wrapping added.

Shared by every method: ``delta_weight()`` (shape of the base weight, scale applied),
``merge()`` / ``unmerge()`` (idempotent), the forward modes, ``adapter_config`` (enough to
re-create the layer) and ``adapter_named_parameters()``.

Precision: adapter parameters are at least fp32 (the optimizer's master copy, also under
autocast and in half-precision models). :meth:`AdapterLayer.cast_frozen` may store the frozen
base weight and bias in bfloat16 / float16 to halve their memory; under autocast the base op
runs in the autocast dtype anyway, outside autocast every op runs in the input's dtype, and
``merge()`` writes the merged weight back in the layer's original dtype (``unmerge()`` restores
the reduced-precision copy).
"""
from __future__ import annotations

import abc
import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cost import Cost, factorized_is_cheaper
from .tucker import ConvGeometry

STANDARD_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Option(NamedTuple):
    """A method's config key.

    Attributes:
        default: The value when the config omits the key; a callable is called with the
            layer's rank (e.g. LoRA's ``alpha`` defaults to the rank).
        check: Returns why a value is invalid (``'must be ...'``), or None when it is valid.
        doc: One line for the docs.
        convert: Applied to a valid value (e.g. ``float``), so that configs hold one type.
    """

    default: Any
    check: Callable[[Any], str | None] | None = None
    doc: str = ''
    convert: Callable[[Any], Any] | None = None


def positive_int(value: Any) -> str | None:
    """An :attr:`Option.check`: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return 'must be an integer >= 1'
    return None


def finite_number(value: Any) -> str | None:
    """An :attr:`Option.check`: an int or float, finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 'must be a finite number'
    return None


def boolean(value: Any) -> str | None:
    """An :attr:`Option.check`: True or False."""
    return None if isinstance(value, bool) else 'must be True or False'


ALPHA = Option(float, finite_number, 'scale = alpha / rank (default alpha = rank, scale 1)',
               float)


@contextlib.contextmanager
def autocast_disabled(device_type: str) -> Iterator[None]:
    """Build weight-space tensors in full precision even inside an autocast region."""
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapter parameters are at least fp32 (never half precision), float64 for float64 models."""
    return torch.promote_types(weight.dtype, torch.float32)


def unfold(weight: torch.Tensor) -> torch.Tensor:
    """The ``(out, in/groups * prod(kernel))`` matrix unfolding of a linear or conv weight."""
    return weight.reshape(weight.shape[0], -1)


def unfolded_size(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(out, in/groups * prod(kernel))``, the size of a weight's matrix unfolding."""
    return weight_shape[0], math.prod(weight_shape[1:])


def qualified_class_name(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


class AdapterLayer(metaclass=abc.ABCMeta):
    """Mixin of every adapted layer (placed before the base class in the MRO).

    Declared by a method (class attributes and classmethods, see ``register_adapter``):
        adapter_type: The ``cfg['type']`` name, e.g. ``'LoHa'``.
        adapter_prefix: The prefix of every adapter parameter name, e.g. ``'hada_'``.
        adapter_layer_names: Every attribute that can hold its parameters (peft's name).
        adapter_keys: Its config keys beside the shared ones, ``{key: Option}``.
        adapter_attr_names: Other attributes it sets on the layer (removed when unwrapping).
        count_grows_with_rank: Whether its parameter count never decreases as the rank grows
            (lets ``solve_rank`` stop early).

    Set by wrapping:
        adapter_base_class: The original class, restored by unwrapping.
        adapter_rank: The rank the layer was created with (before any clipping).
        adapter_scale: The constant ``s`` multiplying the update.
        adapter_options: The values of :attr:`adapter_keys` (defaults filled in).
        adapter_dropout: Dropout probability on the factorized branch input.
        forward_mode: 'auto', 'factorized' or 'merged'.
        merged: Whether ``delta_weight()`` is currently folded into ``weight``.
    """

    adapter_type: str = ''
    adapter_prefix: str = ''
    adapter_layer_names: tuple[str, ...] = ()
    adapter_keys: Mapping[str, Option] = {}
    adapter_attr_names: tuple[str, ...] = ()
    count_grows_with_rank = True
    weight: nn.Parameter
    bias: nn.Parameter | None

    # ----------------------------------------------------------------- what a method provides
    @classmethod
    @abc.abstractmethod
    def adapter_shapes(cls, weight_shape: tuple[int, ...], rank: int,
                       options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """The adapter parameters for a base weight, in creation order.

        Args:
            weight_shape: ``(out, in/groups, *kernel)`` or ``(out, in)``.
            rank: The layer's rank (validated >= 1 and <= :meth:`max_rank`).
            options: Values of :attr:`adapter_keys`, validated, defaults filled in.

        Returns:
            ``{name: shape}``; ``'<list>.<i>'`` names build an ``nn.ParameterList``.
        """

    @abc.abstractmethod
    def reset_adapter_parameters(self) -> None:
        """Initialize the created parameters (so that ``delta_weight()`` starts at zero)."""

    @abc.abstractmethod
    def compute_delta_weight(self) -> torch.Tensor:
        """``s * update`` in the base weight's shape and the adapter dtype, differentiable.

        Called with autocast disabled; reads the parameters, never the merged ``weight``
        (unless the method also overrides ``merge`` / ``unmerge``, like DoRA).
        """

    @classmethod
    def scaling(cls, rank: int, options: Mapping[str, Any]) -> float:
        """The constant ``s``: ``alpha / rank`` for methods with an ``alpha`` key, else 1."""
        return float(options['alpha']) / rank if 'alpha' in options else 1.0

    @classmethod
    def max_rank(cls, weight_shape: tuple[int, ...], options: Mapping[str, Any]) -> int | None:
        """The largest rank the method accepts for this weight; None: any (it clips)."""
        return None

    @classmethod
    def saturation_rank(cls, weight_shape: tuple[int, ...], options: Mapping[str, Any]) -> int:
        """A rank from which on the parameters no longer change (bounds ``solve_rank``)."""
        return max(unfolded_size(weight_shape))

    def adapter_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Optional: ``op(x, delta_weight())`` without bias and without building the delta.

        A method that overrides it also overrides :meth:`forward_cost`; one without it runs
        merged only.
        """
        raise NotImplementedError(f'{self.adapter_type} has no factorized forward')

    def forward_cost(self, x: torch.Tensor) -> Cost:
        """Work of one call on ``x`` in both forward modes (for ``forward_mode='auto'``)."""
        raise NotImplementedError(f'{self.adapter_type} has no factorized forward')

    def rebuild_macs(self) -> int:
        """Optional for a method without a factorized path: multiply-accumulates of one
        rebuild of ``W0 + delta`` (the merged path), counted from the parameter shapes,
        elementwise work one per element (the benchmarks' floor; a factorized method gives it
        as :meth:`forward_cost`'s ``rebuild``)."""
        raise NotImplementedError(f'{self.adapter_type} declares no rebuild cost')

    def update_rank(self) -> int:
        """Rank of the update's ``(out, rest)`` unfolding (Fig. 4 metrics); numerical by
        default, methods give their nominal rank."""
        return int(torch.linalg.matrix_rank(unfold(self.delta_weight().detach()).double()))

    @classmethod
    def has_factorized(cls) -> bool:
        """Whether the method has a factorized forward."""
        return cls.adapter_branch is not AdapterLayer.adapter_branch

    # ----------------------------------------------------------------- construction
    @classmethod
    def resolve_options(cls, rank: int, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` with the defaults of the missing keys (no checks).

        Raises:
            ValueError: A key the method does not declare.
        """
        unknown = sorted(set(given) - set(cls.adapter_keys))
        if unknown:
            raise ValueError(f'{cls.adapter_type} has no options {unknown}; its keys: '
                             f'{list(cls.adapter_keys)}')
        return {key: given[key] if key in given else
                option.default(rank) if callable(option.default) else option.default
                for key, option in cls.adapter_keys.items()}

    @classmethod
    def param_count(cls, weight_shape: tuple[int, ...], rank: int,
                    options: Mapping[str, Any]) -> int:
        """Adapter parameters for a base weight, from :meth:`adapter_shapes`."""
        return sum(math.prod(s) for s in cls.adapter_shapes(weight_shape, rank, options).values())

    def _adapter_setup(self, base_class: type, rank: int, scale: float,
                       options: Mapping[str, Any], dropout: float, forward_mode: str) -> None:
        self.adapter_base_class = base_class
        self.adapter_rank = rank
        self.adapter_scale = float(scale)
        self.adapter_options = dict(options)
        self.adapter_dropout = float(dropout)
        self.forward_mode = forward_mode
        self.merged = False
        self._adapter_requires_grad = (self.weight.requires_grad,
                                       None if self.bias is None else self.bias.requires_grad)
        self._adapter_dtypes = (self.weight.dtype, self.weight.dtype)  # (original, stored)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._create_adapter_parameters()
        self.reset_adapter_parameters()

    def _create_adapter_parameters(self) -> None:
        shapes = self.adapter_shapes(tuple(self.weight.shape), self.adapter_rank,
                                     self.adapter_options)
        kwargs = {'device': self.weight.device, 'dtype': adapter_dtype(self.weight)}
        for name, shape in shapes.items():
            attr, _, index = name.partition('.')
            if attr not in self.adapter_layer_names or not attr.startswith(self.adapter_prefix):
                raise TypeError(f'{type(self).__name__}.adapter_shapes: {name!r} is not in '
                                f'adapter_layer_names {self.adapter_layer_names}')
            param = nn.Parameter(torch.empty(shape, **kwargs))
            if not index:
                setattr(self, attr, param)
                continue
            if not hasattr(self, attr):
                setattr(self, attr, nn.ParameterList())
            getattr(self, attr).append(param)

    def _generic_attr_names(self) -> tuple[str, ...]:
        return ('adapter_base_class', 'adapter_rank', 'adapter_scale', 'adapter_options',
                'adapter_dropout', 'forward_mode', 'merged', '_adapter_requires_grad',
                '_adapter_dtypes')

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
        """Per-layer settings that re-create this adapter (JSON-serializable): the options,
        then the shared keys."""
        return {**self.adapter_options, 'type': self.adapter_type, 'rank': self.adapter_rank,
                'scale': self.adapter_scale, 'dropout': self.adapter_dropout,
                'forward_mode': self.forward_mode, 'weight_shape': list(self.weight.shape),
                'base_class': qualified_class_name(self.adapter_base_class)}

    def adapter_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Adapter parameters with names relative to this module (e.g. ``flora_factors.0``)."""
        for name, param in self.named_parameters():
            if name.startswith(self.adapter_prefix):
                yield name, param

    # ----------------------------------------------------------------- weight space
    def delta_weight(self) -> torch.Tensor:
        """Effective weight minus the frozen base weight, in the base weight's shape.

        Returns:
            Tensor of shape ``weight.shape`` in the adapter dtype (fp32), scale applied.
        """
        with autocast_disabled(self.weight.device.type):
            return self.compute_delta_weight()

    def _effective_weight(self) -> torch.Tensor:
        """``W0 + delta`` in the adapter dtype (used by the merged forward; the base op casts
        it to the compute dtype, so a reduced-precision ``W0`` rounds the sum only once)."""
        delta = self.compute_delta_weight()
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

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapter_dropout > 0 and self.training:
            return F.dropout(x, self.adapter_dropout, training=True)
        return x

    def _use_factorized(self, x: torch.Tensor) -> bool:
        if not self.has_factorized():
            return False
        if self.training and self.adapter_dropout > 0:
            return True  # dropout cannot act on a merged weight
        if self.forward_mode != 'auto':
            return self.forward_mode == 'factorized'
        train = torch.is_grad_enabled() and any(
            p.requires_grad for _, p in self.adapter_named_parameters())
        return factorized_is_cheaper(self.forward_cost(x), self.weight.numel(), train,
                                     x.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._base_forward(x, self.weight, self.bias)
        if self._use_factorized(x):
            return self._factorized_forward(x)
        with autocast_disabled(x.device.type):
            weight = self._effective_weight()
        return self._base_forward(x, weight, self.bias)

    def _factorized_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x, self.weight, self.bias)
        return out + self.adapter_branch(self._dropout(x)).to(out.dtype)

    def extra_repr(self) -> str:
        cfg = {k: v for k, v in self.adapter_config.items()
               if k not in ('type', 'weight_shape', 'base_class')}
        settings = ', '.join(f'{k}={v}' for k, v in cfg.items())
        return f'{super().extra_repr()}, adapter={self.adapter_type}({settings})'


# Adapted classes, one per (method, base class), live in this module so that pickle finds
# them by name (``flora_mm.adapters.layers.FLoRAConv2d``).
_CLASSES: dict[tuple[type, type], type] = {}


def adapter_class(method: type[AdapterLayer], base_class: type) -> type:
    """The class of ``base_class`` layers adapted by ``method`` (created once, cached).

    Args:
        method: A registered :class:`AdapterLayer` subclass.
        base_class: ``nn.Linear``, ``nn.Conv1d/2d/3d`` or a subclass (e.g. mmcv's Conv2d).

    Returns:
        ``<type><Base>`` (``FLoRAConv2d``) for the standard bases, a name with the base's
        module path for others.
    """
    key = (method, base_class)
    if key not in _CLASSES:
        name = (f'{method.adapter_type}{base_class.__name__}' if base_class in STANDARD_BASES
                else f'{method.adapter_type}_{base_class.__module__.replace(".", "_")}_'
                     f'{base_class.__qualname__}')
        cls = type(name, (method, base_class),
                   {'__module__': __name__, '__qualname__': name,
                    '__doc__': f'{method.adapter_type} on {qualified_class_name(base_class)}.'})
        globals()[name] = cls  # pickle resolves classes by module attribute
        _CLASSES[key] = cls
    return _CLASSES[key]
