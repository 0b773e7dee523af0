"""Adapters as Hugging Face peft checkpoints, both ways.

A peft adapter directory is ``adapter_config.json`` (``peft_type``, ``r``, the alpha,
``target_modules``, per-module ``rank_pattern`` / ``alpha_pattern``, method flags) and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.<peft parameter>``; peft's
``PeftModel.from_pretrained`` loads it onto the plain base model. :data:`PEFT_METHODS` says,
per flora_mm method, which peft method and flags it is and how each parameter is named and
shaped there; a method joins by one entry.

peft runs some layers differently from flora_mm, and such a layer is refused with its name
instead of written into a file peft would misread (``PeftMethod.refusal``).

Only torch, the standard library and safetensors (at call time) are imported.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .inject import _describe, adapter_layers
from .io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, _safetensors, atomic_write
from .layers import AdapterLayer, unsupported_reason, unwrap_layer, wrap_layer

# peft's PeftModel holds the base model as ``base_model.model``.
PEFT_KEY_PREFIX = 'base_model.model.'
# peft config fields that change the maths or add tensors flora_mm has no place for (LoRA
# variants, trained biases, extra modules); each must be unset (None, False, empty or 'none')
# in a directory flora_mm loads. Initialisations (init_lora_weights, loftq, eva, ...) and
# targeting (layers_to_transform, ...) do not matter: the tensors say which modules and what.
_UNSUPPORTED_PEFT_FIELDS = (
    'bias', 'lora_bias', 'fan_in_fan_out', 'modules_to_save', 'layer_replication',
    'trainable_token_indices', 'target_parameters', 'use_qalora', 'alora_invocation_tokens',
    'velora_config', 'monteclora_config', 'use_bdlora', 'arrow_config', 'kasa_config')
# init_lora_weights values that select a LoRA variant with its own forward
_VARIANT_INITS = ('mica',)


def _kernel_dims(layer: nn.Module) -> tuple[int, ...]:
    return (1,) * (layer.weight.dim() - 2)


@dataclass(frozen=True)
class PeftParam:
    """One adapter tensor: its flora_mm name, its peft key and the reshapes between them.

    Attributes:
        flora: Parameter name on the flora_mm layer (``lora_A``).
        peft: Key suffix after the module name in peft's state dict (``lora_A.weight``).
        to_peft: ``(tensor, layer) -> tensor`` in peft's shape.
        from_peft: ``tensor -> tensor`` in flora_mm's shape (checked against the layer).
    """

    flora: str
    peft: str
    to_peft: Callable[[torch.Tensor, nn.Module], torch.Tensor]
    from_peft: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PeftMethod:
    """How one flora_mm method is written as a peft method.

    Attributes:
        flora_type: flora_mm's ``cfg['type']``.
        peft_type: peft's ``peft_type``.
        params: The adapter tensors.
        flags: peft config fields that select this method (``{'use_dora': True}``); read as
            False when absent.
        alpha_key: peft's name of the alpha field (and ``alpha_pattern`` values).
        rank_param: The peft key suffix whose first dimension is the layer's rank.
        max_rank: ``weight shape -> the largest rank flora_mm creates`` on it.
        refusal: ``layer -> why peft would run this adapter differently``, or None.
    """

    flora_type: str
    peft_type: str
    params: tuple[PeftParam, ...]
    flags: Mapping[str, Any] = field(default_factory=dict)
    alpha_key: str = 'lora_alpha'
    rank_param: str = 'lora_A.weight'
    max_rank: Callable[[tuple[int, ...]], int] = lambda shape: min(shape[0],
                                                                   math.prod(shape[1:]))
    refusal: Callable[[nn.Module], str | None] = lambda layer: None

    def scaling(self, alpha: float, rank: int, config: Mapping[str, Any]) -> float:
        """peft's ``scaling`` of a layer (as peft computes it, so that it matches bit for bit)."""
        if config.get('use_rslora'):
            return alpha / math.sqrt(rank)
        return alpha / rank


def _lora_conv_refusal(layer: nn.Module) -> str | None:
    """peft's LoRA conv branch is ``lora_B(lora_A(x))`` with ``lora_A`` a dense conv of the
    layer's kernel, stride and padding only, and ``lora_B`` a 1x1 conv with the layer's groups."""
    if not isinstance(layer, nn.modules.conv._ConvNd):
        return None
    if layer.groups != 1:
        return (f'groups={layer.groups}: peft runs lora_A over all input channels and lora_B '
                'grouped, a different update from flora_mm\'s (out, in/groups * k) unfolding')
    if any(d != 1 for d in layer.dilation):
        return f'dilation={tuple(layer.dilation)}: peft\'s lora_A conv ignores dilation'
    if layer.padding_mode != 'zeros':
        return f'padding_mode={layer.padding_mode!r}: peft\'s lora_A conv pads with zeros'
    return None


_LORA_A = PeftParam('lora_A', 'lora_A.weight',
                    lambda t, layer: t.reshape(t.shape[0], *layer.weight.shape[1:]),
                    lambda t: t.flatten(1))
_LORA_B = PeftParam('lora_B', 'lora_B.weight',
                    lambda t, layer: t.reshape(*t.shape, *_kernel_dims(layer)),
                    lambda t: t.flatten(1))
# peft keeps a conv's DoRA magnitude as (1, out, 1, ...) and saves it without '.weight'.
_DORA_MAGNITUDE = PeftParam(
    'dora_magnitude', 'lora_magnitude_vector',
    lambda t, layer: t.reshape(1, -1, *_kernel_dims(layer)) if layer.weight.dim() > 2 else t,
    lambda t: t.flatten())

PEFT_METHODS = (
    PeftMethod('LoRA', 'LORA', (_LORA_A, _LORA_B), flags={'use_dora': False},
               refusal=_lora_conv_refusal),
    PeftMethod('DoRA', 'LORA', (replace(_LORA_A, flora='dora_A'),
                                replace(_LORA_B, flora='dora_B'), _DORA_MAGNITUDE),
               flags={'use_dora': True}, refusal=_lora_conv_refusal),
)


def peft_method(flora_type: str) -> PeftMethod | None:
    """The peft form of a flora_mm method, or None if peft has none (FLoRA)."""
    return next((m for m in PEFT_METHODS if m.flora_type == flora_type), None)


def _method_of_config(config: Mapping[str, Any], path: str) -> PeftMethod:
    peft_type = config.get('peft_type')
    for method in PEFT_METHODS:
        if method.peft_type == peft_type and all(
                bool(config.get(k, False)) == v for k, v in method.flags.items()):
            return method
    flags = {k: config[k] for m in PEFT_METHODS for k in m.flags if config.get(k)}
    known = [f'{m.peft_type} {dict(m.flags)} as {m.flora_type}' for m in PEFT_METHODS]
    raise ValueError(f'{path}: peft_type {peft_type!r}{f" with {flags}" if flags else ""} has '
                     f'no flora_mm method; flora_mm reads {known}')


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _alpha_for(method: PeftMethod, scale: float, rank: int) -> int | float:
    """The alpha whose peft scaling is ``scale`` exactly (``scale * rank`` up to one ulp)."""
    alpha = scale * rank
    for candidate in (alpha, math.nextafter(alpha, math.inf), math.nextafter(alpha, -math.inf)):
        if method.scaling(candidate, rank, {}) == scale:
            return _number(candidate)
    return _number(alpha)


def _peft_pattern_match(pattern: str, name: str) -> bool:
    # peft.utils.other.get_pattern_key's rule for rank_pattern / alpha_pattern keys
    return re.match(rf'(.*\.)?({pattern})$', name) is not None


def _pattern_key(name: str, names: list[str]) -> str:
    """A rank_pattern / alpha_pattern key that selects ``name`` alone among ``names``."""
    if all(_peft_pattern_match(name, n) == (n == name) for n in names):
        return name
    return '^' + re.escape(name)


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    """``names`` as peft's ``target_modules``: the list when peft's suffix rule selects exactly
    them in ``model``, else one fullmatch regex."""
    chosen = set(names)
    if all(m in chosen or not any(m.endswith(f'.{n}') for n in names)
           for m, _ in model.named_modules()):
        return sorted(names)
    return '(?:' + '|'.join(re.escape(n) for n in names) + ')'


def _most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


def save_peft_adapters(model: nn.Module, path: str) -> None:
    """Write the adapters of ``model`` as a peft adapter directory (``format='peft'``).

    Everything is checked and converted before the first file is written; each file is
    written atomically (weights first).

    Args:
        model: A model whose adapters are all of one method peft has (LoRA, DoRA).
        path: Target directory (created if needed).

    Raises:
        ValueError: No adapters, a method peft does not have (FLoRA), adapters of several
            methods, a layer peft would run differently (named, with its shape and why), the
            root module adapted, or dropouts that differ between layers (peft has one).
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("save_adapters(format='peft'): the model has no adapters")
    types = {layer.adapter_type for layer in layers.values()}
    no_peft = sorted(t for t in types if peft_method(t) is None)
    if no_peft or len(types) > 1:
        by_type = {t: [n for n, layer in layers.items() if layer.adapter_type == t] for t in types}
        why = (f'peft has no {no_peft} method' if no_peft
               else 'a peft adapter holds one method')
        raise ValueError(f"save_adapters(format='peft'): {why}; the model has {by_type} "
                         f'(peft methods: {[m.flora_type for m in PEFT_METHODS]})')
    method = peft_method(types.pop())
    refused = [f'  {_describe(n, layer)}: {method.refusal(layer)}'
               for n, layer in layers.items() if method.refusal(layer)]
    if '' in layers:
        refused.append(f"  {_describe('', layers[''])}: peft adapts submodules, not the root")
    if refused:
        raise ValueError(f"save_adapters(format='peft'): peft cannot hold {method.flora_type} "
                         'on these layers as flora_mm runs them:\n' + '\n'.join(refused))
    dropouts = {n: layer.adapter_dropout for n, layer in layers.items()}
    if len(set(dropouts.values())) > 1:
        raise ValueError("save_adapters(format='peft'): peft has one dropout for all layers, "
                         f'the model has {dropouts}')

    tensors, ranks, alphas = {}, {}, {}
    for name, layer in layers.items():
        params = dict(layer.adapter_named_parameters())
        for param in method.params:
            if param.flora in params:
                value = param.to_peft(params[param.flora].detach(), layer)
                tensors[f'{PEFT_KEY_PREFIX}{name}.{param.peft}'] = value.to(
                    'cpu', copy=True).contiguous()
        ranks[name] = tensors[f'{PEFT_KEY_PREFIX}{name}.{method.rank_param}'].shape[0]
        alphas[name] = _alpha_for(method, layer.adapter_scale, ranks[name])
    names = list(layers)
    rank, alpha = _most_common(list(ranks.values())), _most_common(list(alphas.values()))
    config = {
        'peft_type': method.peft_type, 'task_type': None, 'inference_mode': True,
        'base_model_name_or_path': None, 'r': rank, method.alpha_key: alpha,
        'target_modules': _target_modules(model, names),
        'rank_pattern': {_pattern_key(n, names): r for n, r in ranks.items() if r != rank},
        'alpha_pattern': {_pattern_key(n, names): a for n, a in alphas.items() if a != alpha},
        'lora_dropout': next(iter(dropouts.values())), 'bias': 'none', 'use_rslora': False,
        'fan_in_fan_out': False, 'modules_to_save': None, **method.flags}

    def write_json(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)

    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, ADAPTER_WEIGHTS_NAME),
                 lambda tmp: _safetensors().save_file(tensors, tmp, metadata={'format': 'pt'}))
    atomic_write(os.path.join(path, ADAPTER_CONFIG_NAME), write_json)


def _module_tensors(tensors: Mapping[str, torch.Tensor], method: PeftMethod,
                    path: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {peft key suffix: tensor}}``; unknown keys are an error."""
    suffixes = sorted((p.peft for p in method.params), key=len, reverse=True)
    grouped, unknown = {}, []
    for key, value in tensors.items():
        local = key[len(PEFT_KEY_PREFIX):] if key.startswith(PEFT_KEY_PREFIX) else None
        suffix = next((s for s in suffixes if local and local.endswith(f'.{s}')), None)
        if suffix is None:
            unknown.append(key)
            continue
        grouped.setdefault(local[:-len(suffix) - 1], {})[suffix] = value
    if unknown:
        raise ValueError(f'{path}: {len(unknown)} tensors that are not {method.flora_type} '
                         f'adapter weights ({PEFT_KEY_PREFIX}<module>.{{{", ".join(suffixes)}}}): '
                         f'{sorted(unknown)[:8]}')
    return grouped


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    # the first matching key wins, as in peft
    return next((v for k, v in patterns.items() if _peft_pattern_match(k, name)), default)


def load_peft_adapters(model: nn.Module, path: str,
                       config: Mapping[str, Any]) -> dict[str, AdapterLayer]:
    """Adapt ``model`` with the peft adapter directory ``path`` (see :func:`load_adapters`).

    The modules to adapt are those of the weight keys; each layer's rank is its tensors',
    its alpha from ``alpha_pattern`` or the global alpha, with peft's scaling (``use_rslora``
    included). Every check runs before the first layer is wrapped, and a failure while
    loading unwraps the layers again.

    Args:
        model: The plain base model.
        path: A directory written by peft's ``save_pretrained`` or ``save_adapters(...,
            format='peft')``.
        config: Its parsed ``adapter_config.json``.

    Returns:
        The adapted modules by qualified name.

    Raises:
        ValueError: A peft method or option flora_mm does not have, tensors of anything else,
            modules the model lacks, is adapted already or cannot take the adapter as peft
            runs it, a rank above what a weight allows, or tensor shapes that do not fit.
    """
    method = _method_of_config(config, path)
    unsupported = {k: config[k] for k in _UNSUPPORTED_PEFT_FIELDS
                   if config.get(k) not in (None, False, 'none', [], {})}
    if config.get('init_lora_weights') in _VARIANT_INITS:
        unsupported['init_lora_weights'] = config['init_lora_weights']
    if unsupported:
        raise ValueError(f'{path}: peft options flora_mm does not have: {unsupported}')
    weights = os.path.join(path, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise ValueError(f'{path}: no {ADAPTER_WEIGHTS_NAME} (save the peft model with '
                         'safe_serialization=True, its default)')
    grouped = _module_tensors(_safetensors().load_file(weights), method, path)
    modules = dict(model.named_modules())
    lacking = sorted(set(grouped) - set(modules))
    if lacking:
        raise ValueError(f'{path}: the model has no modules {lacking} for their '
                         f'{method.flora_type} adapters')
    plans, problems = [], []
    for name, peft_tensors in grouped.items():
        module = modules[name]
        reason = unsupported_reason(module)
        if reason is None:
            reason = method.refusal(module)
        if reason is None and method.rank_param not in peft_tensors:
            reason = f'the checkpoint has no {method.rank_param}'
        if reason is not None:
            problems.append(f'  {_describe(name, module)}: {reason}')
            continue
        rank = peft_tensors[method.rank_param].shape[0]
        limit = method.max_rank(tuple(module.weight.shape))
        if rank > limit:
            problems.append(f'  {_describe(name, module)}: rank {rank} is above the {limit} '
                            f'its weight allows')
            continue
        alpha = _pattern_value(config.get('alpha_pattern') or {}, name, config[method.alpha_key])
        flora_tensors = {p.flora: p.from_peft(peft_tensors[p.peft])
                         for p in method.params if p.peft in peft_tensors}
        plans.append((name, module, rank, method.scaling(alpha, rank, config), flora_tensors))
    if problems:
        raise ValueError(f'{path}: cannot load these {method.flora_type} adapters:\n'
                         + '\n'.join(problems))

    wrapped = {}
    try:
        for name, module, rank, scale, flora_tensors in plans:
            layer = wrap_layer(module, method.flora_type, rank=rank, scale=scale,
                               dropout=float(config.get('lora_dropout') or 0.0))
            wrapped[name] = layer
            params = dict(layer.adapter_named_parameters())
            shapes = {k: (tuple(v.shape), tuple(params[k].shape) if k in params else None)
                      for k, v in flora_tensors.items()}
            if set(params) != set(flora_tensors) or any(a != b for a, b in shapes.values()):
                raise ValueError(f'{path}: {_describe(name, module)}: the checkpoint\'s tensors '
                                 f'{ {k: a for k, (a, _) in shapes.items()} } do not fit the '
                                 f'{method.flora_type} layer\'s '
                                 f'{ {k: tuple(p.shape) for k, p in params.items()} }')
            with torch.no_grad():
                for key, value in flora_tensors.items():
                    params[key].copy_(value)
    except BaseException:
        for layer in wrapped.values():  # leave the model as it was
            unwrap_layer(layer)
        raise
    return wrapped
