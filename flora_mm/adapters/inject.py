"""Targeting, injection, merging and freeze policies for adapters on any ``nn.Module``."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from .cost import FORWARD_MODES
from .layers import AdapterLayer
from .registry import ADAPTER_METHODS, ADAPTERS_POLICY, POLICY_METHODS, SHARED_KEYS, \
    adapter_method, canonical_type, methods_with_key
from .wrapping import unsupported_reason, unwrap_layer, wrap_layer

FLOAT_DTYPES = ('bfloat16', 'float16', 'float32', 'float64')


@dataclass
class AdapterSpec:
    """A validated ``inject_adapters`` config (see :func:`parse_adapter_cfg`).

    ``options`` holds the method's own keys as given; their defaults and checks are applied
    per layer (a default may depend on the layer's rank).
    """

    type: str
    rank: Any = None
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    rank_pattern: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.0
    forward_mode: str = 'auto'
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerPlan:
    """What :func:`inject_adapters` will do to one module."""

    name: str
    module: nn.Module
    rank: int
    scale: float
    options: dict[str, Any]
    rank_pinned: bool = False  # rank set by rank_pattern


def _regex_list(cfg: Mapping, key: str) -> list[str] | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"cfg[{key!r}] must be a list of regex strings, got {value!r}")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"cfg[{key!r}] has an invalid regex {pattern!r}: {err}") from None
    return list(value)


def parse_adapter_cfg(cfg: Mapping) -> AdapterSpec:
    """Validate the keys and global values of an adapter config.

    Per-layer values (ranks, the method's options) are validated later with the module in the
    message.

    Args:
        cfg: The ``inject_adapters`` config dict.

    Returns:
        The parsed spec.

    Raises:
        ValueError: Unknown type or forward mode, a key the method does not know (the message
            lists the keys it does), a bad regex list, a bad dropout, or dropout / a
            'factorized' forward mode that the method or 'merged' cannot run.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f'adapter cfg must be a dict, got {type(cfg).__name__}')
    if 'type' not in cfg:
        raise ValueError("adapter cfg needs a 'type' key, one of "
                         f'{[*ADAPTER_METHODS, *POLICY_METHODS]}')
    method = canonical_type(cfg['type'])
    if method in POLICY_METHODS:
        # nothing to inject: the keys of any method are accepted so configs only swap 'type'
        known = set(SHARED_KEYS).union(*(adapter_method(m).adapter_keys for m in ADAPTER_METHODS))
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'unknown adapter cfg keys {unknown}; allowed: {sorted(known)}')
        return AdapterSpec(type=method)
    cls = adapter_method(method)
    allowed = [*SHARED_KEYS, *cls.adapter_keys]
    foreign = sorted(set(cfg) - set(allowed))
    for key in foreign:
        others = methods_with_key(key)
        if others:
            raise ValueError(f"cfg[{key!r}] is only valid for {others}, not {method!r}; "
                             f'allowed for {method}: {allowed}')
    if foreign:
        raise ValueError(f'unknown adapter cfg keys {foreign}; allowed for {method}: {allowed}')
    if 'rank' not in cfg:
        raise ValueError(f"adapter cfg for {method!r} needs a 'rank' key")
    spec = AdapterSpec(type=method, rank=cfg['rank'],
                       options={k: cfg[k] for k in cls.adapter_keys if k in cfg})
    spec.targets = _regex_list(cfg, 'targets')
    spec.exclude = _regex_list(cfg, 'exclude') or []
    pattern = cfg.get('rank_pattern') or {}
    if not isinstance(pattern, Mapping):
        raise ValueError(f"cfg['rank_pattern'] must be a dict {{regex: rank}}, got {pattern!r}")
    _regex_list({'rank_pattern': list(pattern)}, 'rank_pattern')
    spec.rank_pattern = dict(pattern)
    dropout = cfg.get('dropout', 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"cfg['dropout']={dropout!r} must be a number in [0, 1)")
    spec.dropout = float(dropout)
    spec.forward_mode = cfg.get('forward_mode', 'auto')
    if spec.forward_mode not in FORWARD_MODES:
        raise ValueError(f"cfg['forward_mode']={spec.forward_mode!r} is not one of "
                         f'{list(FORWARD_MODES)}')
    if not cls.has_factorized() and (spec.forward_mode == 'factorized' or spec.dropout > 0):
        key = 'dropout' if spec.dropout > 0 else 'forward_mode'
        raise ValueError(f"cfg[{key!r}]={cfg[key]!r} needs a factorized forward, which "
                         f'{method} does not have (it runs merged)')
    if spec.forward_mode == 'merged' and spec.dropout > 0:
        raise ValueError("cfg['dropout'] > 0 needs forward_mode 'auto' or 'factorized': dropout "
                         "cannot act on a merged weight")
    return spec


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _describe(name: str, module: nn.Module) -> str:
    weight = getattr(module, 'weight', None)
    shape = tuple(weight.shape) if hasattr(weight, 'shape') and not isinstance(
        weight, nn.parameter.UninitializedParameter) else None
    return f"module {name!r} ({type(module).__name__}, weight shape {shape})"


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """All adapted layers of ``model`` by qualified name (``''`` for the root)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def select_layers(model: nn.Module, spec: AdapterSpec) -> list[LayerPlan]:
    """Resolve targets, exclusions and per-layer ranks without modifying ``model``.

    A target regex (fullmatch on qualified module names) that matches no module, or only
    modules of unsupported types, is an error; one that matches supported and unsupported
    modules (e.g. ``backbone\\..*``) adapts the supported ones. Without ``targets`` every
    supported layer is selected. A selected layer whose class overrides ``forward`` with other
    semantics (timm's ``Conv2dSame``) or that is adapted already is always an error.

    Args:
        model: The model.
        spec: A parsed adapter config.

    Returns:
        One plan per layer to adapt, in module order.

    Raises:
        ValueError: See above; also bad per-layer rank / kernel_rank / scale / alpha values.
    """
    adapted = [name for name, m in model.named_modules() if isinstance(m, AdapterLayer)]
    # Parameter containers inside adapted layers (flora_factors) are not candidates.
    candidates = [(n, m) for n, m in model.named_modules()
                  if not any(n != a and (not a or n.startswith(f'{a}.')) for a in adapted)]
    if spec.targets is None:
        chosen = [(n, m) for n, m in candidates
                  if isinstance(m, AdapterLayer) or _is_linear_or_conv(m)]
        if not chosen:
            raise ValueError('the model has no nn.Linear / nn.Conv1d/2d/3d layer to adapt')
    else:
        names = set()
        for i, pattern in enumerate(spec.targets):
            matched = [(n, m) for n, m in candidates if re.fullmatch(pattern, n)]
            if not matched:
                raise ValueError(f"cfg['targets'][{i}]={pattern!r} matches no module of the "
                                 f'model (fullmatch on qualified names, e.g. '
                                 f'{[n for n, _ in candidates[1:4]]})')
            usable = [(n, m) for n, m in matched
                      if isinstance(m, AdapterLayer) or _is_linear_or_conv(m)]
            if not usable:
                shown = '; '.join(_describe(n, m) for n, m in matched[:3])
                raise ValueError(f"cfg['targets'][{i}]={pattern!r} matches only unsupported "
                                 f'layers: {shown}: {unsupported_reason(matched[0][1])}')
            names.update(n for n, _ in usable)
        chosen = [(n, m) for n, m in candidates if n in names]
    chosen = [(n, m) for n, m in chosen if not any(re.fullmatch(p, n) for p in spec.exclude)]
    problems = [(n, m, unsupported_reason(m)) for n, m in chosen if unsupported_reason(m)]
    if problems:
        lines = '\n'.join(f'  {_describe(n, m)}: {why}' for n, m, why in problems)
        raise ValueError(f'cannot inject {spec.type} into:\n{lines}\n'
                         "(add them to cfg['exclude'] or narrow cfg['targets'])")
    used_patterns = set()
    plans = []
    for name, module in chosen:
        rank_key, rank = "cfg['rank']", spec.rank
        for pattern, value in spec.rank_pattern.items():
            if re.fullmatch(pattern, name):
                rank_key, rank = f"cfg['rank_pattern'][{pattern!r}]", value
                used_patterns.add(pattern)
                break
        plan = _plan_layer(spec, name, module, rank_key, rank)
        plan.rank_pinned = rank_key != "cfg['rank']"
        plans.append(plan)
    unused = [p for p in spec.rank_pattern if p not in used_patterns]
    if unused:
        raise ValueError(f"cfg['rank_pattern'] keys {unused} match no adapted layer")
    return plans


def _is_linear_or_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not isinstance(
        module, nn.modules.conv._ConvTransposeNd)


def _check_int(key: str, value: Any, name: str, module: nn.Module) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{key}={value!r} must be an integer >= 1 for {_describe(name, module)}')
    return value


def _plan_layer(spec: AdapterSpec, name: str, module: nn.Module, rank_key: str,
                rank: Any) -> LayerPlan:
    cls = adapter_method(spec.type)
    rank = _check_int(rank_key, rank, name, module)
    options = cls.resolve_options(rank, spec.options)
    for key, value in options.items():
        option = cls.adapter_keys[key]
        reason = option.check(value) if option.check else None
        if reason:
            raise ValueError(f'cfg[{key!r}]={value!r} {reason} for {_describe(name, module)}')
        options[key] = option.convert(value) if option.convert else value
    limit = cls.max_rank(tuple(module.weight.shape), options)
    if limit is not None and rank > limit:
        raise ValueError(f'{rank_key}={rank} is above {limit}, the largest rank of a '
                         f'{spec.type} adapter on {_describe(name, module)}')
    return LayerPlan(name, module, rank, cls.scaling(rank, options), options)


def inject_adapters(model: nn.Module, cfg: Mapping) -> dict[str, nn.Module]:
    """Adapt the layers of ``model`` selected by ``cfg`` in place.

    Args:
        model: Any ``nn.Module``; the adapted layers stay the same objects (their class is
            swapped to an adapted subclass of the original one) and keep their state-dict keys.
        cfg: Dict with the shared keys ``type`` (a registered method, :data:`ADAPTER_METHODS`,
            or the freeze-policy-only 'BitFit' | 'Full' | 'Frozen', which inject nothing),
            ``rank``, ``targets`` (regexes, fullmatch on qualified module names; default
            every supported layer), ``exclude`` (regexes), ``rank_pattern`` ({regex: rank},
            first fullmatch wins), ``dropout`` (default 0; factorized forward only) and
            ``forward_mode`` ('auto' | 'factorized' | 'merged', default 'auto'), plus the
            method's own keys (``adapter_keys``: FLoRA ``kernel_rank`` default 1 and
            ``scale`` default 1.0; LoRA / DoRA / LoHa / LoKr ``alpha``, scale = alpha / rank,
            default alpha = rank; LoHa / LoKr ``use_effective_conv2d``; LoKr
            ``decompose_both``, ``decompose_factor``).

    Returns:
        The adapted modules by qualified name. The base weights and biases of these layers
        are frozen; use :func:`freeze_base` for the rest of the model.

    Raises:
        ValueError: For any invalid config, naming the key and, for per-layer problems, the
            module and its weight shape. Nothing is modified when an error is raised.
    """
    spec = parse_adapter_cfg(cfg)
    if spec.type in POLICY_METHODS:
        return {}
    plans = select_layers(model, spec)
    for plan in plans:
        wrap_layer(plan.module, spec.type, rank=plan.rank, options=plan.options,
                   scale=plan.scale, dropout=spec.dropout, forward_mode=spec.forward_mode)
    return {plan.name: plan.module for plan in plans}


def wrap_from_config(module: nn.Module, layer_cfg: Mapping) -> AdapterLayer:
    """Re-create an adapter on a plain layer from its ``adapter_config`` (used by loading).

    Args:
        module: The plain layer.
        layer_cfg: A dict produced by ``AdapterLayer.adapter_config``.

    Returns:
        The adapted layer.
    """
    cls = adapter_method(layer_cfg['type'])
    reason = unsupported_reason(module)
    if reason:
        raise ValueError(f'cannot re-create a {cls.adapter_type} adapter on '
                         f'{type(module).__name__}: {reason}')
    options = {k: layer_cfg[k] for k in cls.adapter_keys if k in layer_cfg}
    return wrap_layer(module, cls.adapter_type, rank=int(layer_cfg['rank']), options=options,
                      scale=float(layer_cfg['scale']),
                      dropout=float(layer_cfg.get('dropout', 0.0)),
                      forward_mode=layer_cfg.get('forward_mode', 'auto'))


def set_forward_mode(model: nn.Module, mode: str) -> None:
    """Set ``forward_mode`` ('auto' | 'factorized' | 'merged') of every adapted layer (all or
    none: a layer that cannot run ``mode`` is an error naming it)."""
    if mode not in FORWARD_MODES:
        raise ValueError(f'forward mode {mode!r} is not one of {list(FORWARD_MODES)}')
    layers = adapter_layers(model)
    for name, layer in layers.items():
        if mode == 'merged' and layer.adapter_dropout > 0:
            raise ValueError(f"forward mode 'merged' cannot apply the dropout of {name!r}")
        if mode == 'factorized' and not layer.has_factorized():
            raise ValueError(f"forward mode 'factorized': {layer.adapter_type} (layer {name!r}) "
                             'has no factorized forward')
    for layer in layers.values():
        layer.forward_mode = mode


def merge_adapters(model: nn.Module, unload: bool = False) -> nn.Module:
    """Fold every adapter's ``delta_weight()`` into its base weight (idempotent).

    Args:
        model: A model with adapters.
        unload: Also drop the adapters: every adapted layer becomes an instance of its
            original class again (same object, merged weight), so ``model.state_dict()``
            has exactly the keys of the plain model and loads into it.

    Returns:
        ``model`` (modified in place).
    """
    for layer in adapter_layers(model).values():
        layer.merge()
        if unload:
            unwrap_layer(layer)
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters` (without ``unload``); idempotent.

    Args:
        model: A model with adapters.

    Returns:
        ``model`` (modified in place).
    """
    for layer in adapter_layers(model).values():
        layer.unmerge()
    return model


def cast_frozen_weights(model: nn.Module, dtype: torch.dtype | str) -> int:
    """Store the frozen base weight and bias of every adapted layer in ``dtype``.

    Halves the memory of the frozen weights with bfloat16 / float16; adapter parameters (and
    every layer without an adapter) keep their dtype. Run the model under autocast, or with
    inputs of any dtype (each op then runs in the input's dtype). ``merge_adapters`` writes
    merged weights in the original dtype.

    Args:
        model: A model with adapters, base weights frozen (:func:`freeze_base`).
        dtype: ``torch.bfloat16``, ``torch.float16`` or their names.

    Returns:
        The number of elements cast.

    Raises:
        ValueError: ``dtype`` is not a floating-point dtype, the model has no adapters, or an
            adapted layer is merged or has a trainable base weight / bias (named).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype in FLOAT_DTYPES else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f'cast_frozen_weights: dtype must be one of {list(FLOAT_DTYPES)}, '
                         f'got {dtype!r}')
    layers = adapter_layers(model)
    if not layers:
        raise ValueError('cast_frozen_weights: the model has no adapters (it casts the frozen '
                         'base weights of adapted layers)')
    count = 0
    for name, layer in layers.items():
        try:
            layer.cast_frozen(dtype)
        except ValueError as err:
            raise ValueError(f'{name} ({type(layer).__name__}): {err}') from None
        count += sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)
    return count


def freeze_base(model: nn.Module, method: str = ADAPTERS_POLICY,
                trainable: Sequence[str] = ()) -> int:
    """Apply a freeze policy and return the number of trainable parameters.

    Policies: 'adapters' trains only adapter parameters (the model must have adapters), and
    so does the name of any adapter method ('FLoRA', 'LoRA', ..., the cfg['type'] of an
    adapter config); 'BitFit' only parameters named ``bias`` (last name component); 'Full'
    everything; 'Frozen' nothing.

    Args:
        model: The model.
        method: The policy: 'adapters', a method name, 'BitFit', 'Full' or 'Frozen'.
        trainable: Regexes that additionally keep parameters trainable (e.g. a task head).
            Each is fullmatched against qualified PARAMETER names (``decode_head.conv.weight``)
            and qualified MODULE names (``decode_head``); a module match keeps all parameters
            of that module and its submodules trainable.

    Returns:
        The number of trainable parameter elements (shared parameters counted once).

    Raises:
        ValueError: Unknown method, an adapter method on a model without adapters, or a
            ``trainable`` regex matching nothing.
    """
    names = {n.lower(): n for n in (ADAPTERS_POLICY, *ADAPTER_METHODS, *POLICY_METHODS)}
    if not isinstance(method, str) or method.lower() not in names:
        raise ValueError(f'freeze_base: method={method!r} is not one of {list(names.values())}')
    method = names[method.lower()]
    layers = adapter_layers(model)
    if method == ADAPTERS_POLICY or method in ADAPTER_METHODS:
        if not layers:
            raise ValueError(f'freeze_base(method={method!r}): the model has no adapters; call '
                             'inject_adapters first')
        keep = {id(p) for layer in layers.values() for _, p in layer.adapter_named_parameters()}
    elif method == 'BitFit':
        keep = {id(p) for n, p in model.named_parameters() if n.rsplit('.', 1)[-1] == 'bias'}
    elif method == 'Full':
        keep = {id(p) for p in model.parameters()}
    else:  # 'Frozen'
        keep = set()
    trainable = [trainable] if isinstance(trainable, str) else list(trainable)
    for pattern in trainable:
        hits = {id(p) for n, p in model.named_parameters() if re.fullmatch(pattern, n)}
        for name, module in model.named_modules():
            if re.fullmatch(pattern, name):
                hits.update(id(p) for p in module.parameters())
        if not hits:
            raise ValueError(f'freeze_base: trainable regex {pattern!r} matches no parameter '
                             'or module name')
        keep |= hits
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
