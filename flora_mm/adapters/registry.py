"""The adapter methods by name, and the decorator that adds one."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from .layers import STANDARD_BASES, AdapterLayer, Option, adapter_class

# cfg['type'] values that inject nothing and only choose what trains (``freeze_base``).
POLICY_METHODS = ('BitFit', 'Full', 'Frozen')
# The freeze policy "train the adapter parameters only" (every method's name means it too).
ADAPTERS_POLICY = 'adapters'
# Config keys every method has; a method declares the others (``adapter_keys``).
SHARED_KEYS = ('type', 'rank', 'targets', 'exclude', 'rank_pattern', 'dropout', 'forward_mode')

_METHODS: dict[str, type[AdapterLayer]] = {}


def register_adapter(cls: type[AdapterLayer]) -> type[AdapterLayer]:
    """Class decorator that makes an :class:`AdapterLayer` subclass an adapter method.

    Everything else then works from the declaration: ``inject_adapters`` / ``adapt_model``
    (``cfg['type']`` is the method's name), targeting, ``rank_pattern``, config validation,
    freezing, merge / unmerge, forward modes, AMP and ``frozen_dtype``, ``save_adapters`` /
    ``load_adapters``, ``layer_param_count`` / ``solve_rank``, the Fig. 4 metrics, the hook
    and the backbones' ``adapter=dict(type=...)``.

    Checklist for a new method (one module, then import it where it should be available;
    the built-in ones are imported by ``flora_mm.adapters.methods``):

    1. Names: ``adapter_type`` (``cfg['type']``), ``adapter_prefix`` (every parameter name
       starts with it, so the adapter's state-dict keys are recognisable) and
       ``adapter_layer_names`` (every parameter attribute it may create).
    2. ``adapter_keys``: its config keys beside :data:`SHARED_KEYS`, ``{key: Option(default,
       check, doc)}``; checks name the problem (``'must be an integer >= 1'``), the caller
       adds the key, layer and shape. ``layers.ALPHA`` gives ``scale = alpha / rank``.
    3. ``adapter_shapes(weight_shape, rank, options)`` (classmethod): its parameters for a
       base weight ``(out, in/groups, *kernel)`` or ``(out, in)``. Parameter counts
       (``layer_param_count``, ``solve_rank``) are derived from it. Optionally
       ``max_rank`` (a rank above it is an error naming key, layer and shape),
       ``saturation_rank`` and ``count_grows_with_rank`` (the rank search).
    4. ``reset_adapter_parameters()``: initial values, the update zero at step 0.
    5. ``compute_delta_weight()``: ``s * update`` in the base weight's shape (grouped convs:
       ``(out, in/groups, *kernel)``); merged forward, merge / unmerge and the metrics use it.
       The merged forward keeps every conv setting (stride, padding, dilation, groups,
       padding_mode) because it runs the base layer's own op.
    6. Optionally a factorized path: ``adapter_branch(x)`` and ``forward_cost(x)`` (both or
       neither). Without it the method runs merged ('auto' picks merged; 'factorized' and
       dropout are config errors).
    7. Optionally ``scaling`` (default ``alpha / rank`` or 1), ``update_rank`` (default
       numerical), ``adapter_config`` extras, ``adapter_attr_names`` for other attributes it
       sets on the layer.
    8. Tests: the delta against an independent einsum reference in float64 on linear,
       conv1d/2d/3d, grouped and depthwise layers, merge / unmerge, parameter counts against
       the created parameters' ``numel``.

    Args:
        cls: The method's class.

    Returns:
        ``cls``, registered; its ``Linear`` / ``Conv1d/2d/3d`` classes are created in
        :mod:`flora_mm.adapters.layers` (``<type>Conv2d``) so that adapted models pickle.

    Raises:
        TypeError: An incomplete or inconsistent declaration, or a name already taken.
    """
    name = cls.adapter_type
    if not (isinstance(cls, type) and issubclass(cls, AdapterLayer)):
        raise TypeError(f'register_adapter: {cls!r} is not an AdapterLayer subclass')
    if inspect.isabstract(cls):
        raise TypeError(f'register_adapter: {cls.__name__} does not implement '
                        f'{sorted(cls.__abstractmethods__)}')
    if not name or not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f'register_adapter: {cls.__name__}.adapter_type={name!r} must be an '
                        'identifier')
    taken = [n for n in (*_METHODS, *POLICY_METHODS, ADAPTERS_POLICY) if n.lower() == name.lower()]
    if taken and _METHODS.get(name) is not cls:
        raise TypeError(f'register_adapter: the name {name!r} is taken by {taken[0]!r}')
    prefix = cls.adapter_prefix
    if not prefix or not cls.adapter_layer_names or not all(
            n.startswith(prefix) for n in cls.adapter_layer_names):
        raise TypeError(f'register_adapter: {cls.__name__} needs an adapter_prefix that starts '
                        f'every name of adapter_layer_names, got {prefix!r} and '
                        f'{cls.adapter_layer_names}')
    clashes = sorted(set(cls.adapter_keys) & set(SHARED_KEYS))
    if clashes or not all(isinstance(o, Option) for o in cls.adapter_keys.values()):
        raise TypeError(f'register_adapter: {cls.__name__}.adapter_keys must map new keys to '
                        f'Option (shared keys: {list(SHARED_KEYS)})')
    if (cls.forward_cost is AdapterLayer.forward_cost) == cls.has_factorized():
        raise TypeError(f'register_adapter: {cls.__name__} must define both adapter_branch and '
                        'forward_cost, or neither (then it runs merged)')
    _METHODS[name] = cls
    for base in STANDARD_BASES:
        adapter_class(cls, base)
    return cls


def adapter_method(name: Any) -> type[AdapterLayer]:
    """The registered class of a method name (case-insensitive).

    Raises:
        ValueError: No such method.
    """
    for method, cls in _METHODS.items():
        if isinstance(name, str) and name.lower() == method.lower():
            return cls
    raise ValueError(f'{name!r} is not an adapter method; registered: {list(_METHODS)}')


def canonical_type(value: Any) -> str:
    """The spelling of a ``cfg['type']`` value: a method or a freeze-policy name.

    Raises:
        ValueError: Neither.
    """
    for name in (*_METHODS, *POLICY_METHODS):
        if isinstance(value, str) and value.lower() == name.lower():
            return name
    raise ValueError(f"cfg['type']={value!r} is not one of {[*_METHODS, *POLICY_METHODS]}")


def methods_with_key(key: str) -> list[str]:
    """The methods that declare ``key``."""
    return [name for name, cls in _METHODS.items() if key in cls.adapter_keys]


class _MethodNames(Sequence):
    """The registered method names, in registration order (a live, read-only view)."""

    def __getitem__(self, index):
        return tuple(_METHODS)[index]

    def __len__(self) -> int:
        return len(_METHODS)

    def __repr__(self) -> str:
        return repr(tuple(_METHODS))


ADAPTER_METHODS = _MethodNames()
