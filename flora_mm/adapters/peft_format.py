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
from .layers import AdapterLayer, finite_number, positive_int, unfolded_size
from .registry import adapter_method
from .wrapping import unsupported_reason, unwrap_layer, wrap_layer

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


def _same(tensor: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class PeftParam:
    """One adapter tensor: its flora_mm name, its peft key and the reshapes between them.

    Attributes:
        flora: Parameter name on the flora_mm layer (``lora_A``).
        peft: Key suffix after the module name in peft's state dict (``lora_A.weight``).
        to_peft: ``(tensor, layer) -> tensor`` in peft's shape.
        from_peft: ``(tensor, plain layer) -> tensor`` in flora_mm's shape.
    """

    flora: str
    peft: str
    to_peft: Callable[[torch.Tensor, nn.Module], torch.Tensor] = _same
    from_peft: Callable[[torch.Tensor, nn.Module], torch.Tensor] = _same


@dataclass(frozen=True)
class PeftMethod:
    """How one flora_mm method is written as a peft method.

    Attributes:
        flora_type: flora_mm's ``cfg['type']``.
        peft_type: peft's ``peft_type``.
        params: The adapter tensors (those a layer has: some are optional).
        flags: peft config fields that select this method (``{'use_dora': True}``), written
            as they are and read as False when absent.
        fixed: Other config fields written as they are.
        alpha_key: peft's name of the alpha field.
        options: The method's options that peft has under the same name, one value for all
            layers.
        dropout_key: peft's field for flora_mm's ``dropout``, if it has one.
        clips_rank: flora_mm clips the rank to the weight's unfolding and peft does not, so
            the rank written is the clipped one and a larger one read is an error.
        refusal: ``(plain layer, {flora param: shape}) -> why peft would run this adapter
            differently``, or None.
    """

    flora_type: str
    peft_type: str
    params: tuple[PeftParam, ...]
    flags: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    alpha_key: str = 'alpha'
    options: tuple[str, ...] = ()
    dropout_key: str | None = None
    clips_rank: bool = False
    refusal: Callable[[nn.Module, Mapping[str, tuple[int, ...]]], str | None] = \
        lambda layer, shapes: None

    def scaling(self, alpha: float, rank: int, config: Mapping[str, Any]) -> float:
        """peft's ``scaling`` of a layer (as peft computes it, so that it matches bit for bit)."""
        if config.get('use_rslora'):
            return alpha / math.sqrt(rank)
        return alpha / rank


def _lora_refusal(layer: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
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


def _lycoris_refusal(layer: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """peft's LoHa / LoKr add ``F.convNd(x, delta)`` with the layer's stride, padding,
    dilation and groups, on Linear, Conv1d and Conv2d."""
    if isinstance(layer, nn.Conv3d):
        return 'peft has LoHa / LoKr for Linear, Conv1d and Conv2d only'
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.padding_mode != 'zeros':
        return (f'padding_mode={layer.padding_mode!r}: peft applies the update with F.conv, '
                'which pads with zeros')
    return None


def _lokr_refusal(layer: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    # peft 0.21.2 on a Conv1d: only the flat low-rank W2 (lokr_w2_a @ lokr_w2_b) runs right
    if isinstance(layer, nn.Conv1d) and 'lokr_w2' in shapes:
        return ('a full lokr_w2 on a Conv1d: peft builds kron(W1, W2) without broadcasting W1 '
                'over the kernel, another update (a rank below half of W2\'s sides avoids it)')
    if isinstance(layer, nn.Conv1d) and 'lokr_t2' in shapes:
        return ('lokr_t2 (use_effective_conv2d) on a Conv1d: peft\'s kron of it fails '
                '(a view error)')
    return _lycoris_refusal(layer, shapes)


def _conv_core(name: str) -> PeftParam:
    # peft's Conv1d Tucker cores carry a trailing size-1 dimension: (r, r, k, 1)
    return PeftParam(name, name, lambda t, layer: t.reshape(*t.shape, 1) if t.dim() == 3 else t,
                     lambda t, layer: t.reshape(*t.shape[:2], *layer.weight.shape[2:]))


_LORA_A = PeftParam('lora_A', 'lora_A.weight',
                    lambda t, layer: t.reshape(t.shape[0], *layer.weight.shape[1:]),
                    lambda t, layer: t.flatten(1))
_LORA_B = PeftParam('lora_B', 'lora_B.weight',
                    lambda t, layer: t.reshape(*t.shape, *_kernel_dims(layer)),
                    lambda t, layer: t.flatten(1))
# peft keeps a conv's DoRA magnitude as (1, out, 1, ...) and saves it without '.weight'.
_DORA_MAGNITUDE = PeftParam(
    'dora_magnitude', 'lora_magnitude_vector',
    lambda t, layer: t.reshape(1, -1, *_kernel_dims(layer)) if layer.weight.dim() > 2 else t,
    lambda t, layer: t.flatten())
_LORA = dict(alpha_key='lora_alpha', dropout_key='lora_dropout', clips_rank=True,
             fixed={'bias': 'none', 'use_rslora': False, 'fan_in_fan_out': False},
             refusal=_lora_refusal)

PEFT_METHODS = (
    PeftMethod('LoRA', 'LORA', (_LORA_A, _LORA_B), flags={'use_dora': False}, **_LORA),
    PeftMethod('DoRA', 'LORA', (replace(_LORA_A, flora='dora_A'),
                                replace(_LORA_B, flora='dora_B'), _DORA_MAGNITUDE),
               flags={'use_dora': True}, **_LORA),
    PeftMethod('LoHa', 'LOHA', (*(PeftParam(f'hada_w{i}_{ab}', f'hada_w{i}_{ab}')
                                  for i in (1, 2) for ab in 'ab'),
                                _conv_core('hada_t1'), _conv_core('hada_t2')),
               options=('use_effective_conv2d',), refusal=_lycoris_refusal),
    PeftMethod('LoKr', 'LOKR', (*(PeftParam(n, n) for n in ('lokr_w1', 'lokr_w1_a', 'lokr_w1_b',
                                                            'lokr_w2', 'lokr_w2_a', 'lokr_w2_b')),
                                _conv_core('lokr_t2')),
               options=('decompose_both', 'decompose_factor', 'use_effective_conv2d'),
               refusal=_lokr_refusal),
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


def _rank_limit(method: PeftMethod, weight_shape: tuple[int, ...],
                options: Mapping[str, Any]) -> int | None:
    if method.clips_rank:
        return min(unfolded_size(weight_shape))
    return adapter_method(method.flora_type).max_rank(weight_shape, options)


def _peft_pattern_match(pattern: str, name: str) -> bool:
    # peft.utils.other.get_pattern_key's rule for rank_pattern / alpha_pattern keys
    return re.match(rf'(.*\.)?({pattern})$', name) is not None


def _pattern_key(name: str, names: list[str]) -> str:
    """A rank_pattern / alpha_pattern key that selects ``name`` alone among ``names``."""
    plain = re.escape(name) == name.replace('.', r'\.')  # nothing special but the dots
    if plain and all(_peft_pattern_match(name, n) == (n == name) for n in names):
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
        model: A model whose adapters are all of one method peft has (LoRA, DoRA, LoHa, LoKr).
        path: Target directory (created if needed).

    Raises:
        ValueError: No adapters, a method peft does not have (FLoRA), adapters of several
            methods, a layer peft would run differently (named, with its shape and why), the
            root module adapted, or values peft has one of for all layers (dropout, the
            method's options) that differ where they matter.
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
    cls = adapter_method(method.flora_type)
    ranks = {name: min(layer.adapter_rank, *unfolded_size(layer.weight.shape))
             if method.clips_rank else layer.adapter_rank for name, layer in layers.items()}
    shapes = {name: {n: tuple(p.shape) for n, p in layer.adapter_named_parameters()}
              for name, layer in layers.items()}

    def fits(name: str, options: Mapping[str, Any]) -> bool:
        layer = layers[name]
        return shapes[name] == cls.adapter_shapes(tuple(layer.weight.shape), ranks[name],
                                                  {**layer.adapter_options, **options})

    # peft has one value of each option: the one most layers are built with (an option that
    # changes nothing on a layer, such as use_effective_conv2d on a Linear, does not count)
    candidates = [{k: layer.adapter_options[k] for k in method.options}
                  for layer in layers.values()]
    options = max(candidates, key=lambda c: sum(fits(name, c) for name in layers))
    refused = []
    for name, layer in layers.items():
        reason = method.refusal(layer, shapes[name])
        if reason is None and not fits(name, options):
            own = {k: layer.adapter_options[k] for k in options}
            reason = (f'peft has one {options} for all layers, with which this layer\'s '
                      f'{own} adapter would have other parameters')
        if name == '':
            reason = 'peft adapts submodules, not the root'
        if reason:
            refused.append(f'  {_describe(name, layer)}: {reason}')
    if refused:
        raise ValueError(f"save_adapters(format='peft'): peft cannot hold {method.flora_type} "
                         'on these layers as flora_mm runs them:\n' + '\n'.join(refused))
    dropouts = {n: layer.adapter_dropout for n, layer in layers.items()}
    if len(set(dropouts.values())) > 1 or (method.dropout_key is None and any(dropouts.values())):
        raise ValueError(f"save_adapters(format='peft'): peft's {method.peft_type} has "
                         f"{f'one {method.dropout_key}' if method.dropout_key else 'no dropout'} "
                         f'for all layers, the model has dropouts {dropouts}')

    tensors, alphas = {}, {}
    for name, layer in layers.items():
        params = dict(layer.adapter_named_parameters())
        for param in method.params:
            if param.flora in params:
                value = param.to_peft(params[param.flora].detach(), layer)
                tensors[f'{PEFT_KEY_PREFIX}{name}.{param.peft}'] = value.to(
                    'cpu', copy=True).contiguous()
        alphas[name] = _alpha_for(method, layer.adapter_scale, ranks[name])
    names = list(layers)
    rank, alpha = _most_common(list(ranks.values())), _most_common(list(alphas.values()))
    config = {
        'peft_type': method.peft_type, 'task_type': None, 'inference_mode': True,
        'base_model_name_or_path': None, 'r': rank, method.alpha_key: alpha,
        'target_modules': _target_modules(model, names),
        'rank_pattern': {_pattern_key(n, names): r for n, r in ranks.items() if r != rank},
        'alpha_pattern': {_pattern_key(n, names): a for n, a in alphas.items() if a != alpha},
        'modules_to_save': None, **method.flags, **method.fixed, **options}
    if method.dropout_key:
        config[method.dropout_key] = next(iter(dropouts.values()))

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


def _layer_plan(method: PeftMethod, config: Mapping[str, Any], name: str, module: nn.Module,
                peft_tensors: Mapping[str, torch.Tensor]) -> tuple[dict, str | None]:
    """``(wrap arguments and flora_mm tensors, None)`` for one module, or ``({}, why not)``."""
    reason = unsupported_reason(module)
    if reason:
        return {}, reason
    cls = adapter_method(method.flora_type)
    rank = _pattern_value(config.get('rank_pattern') or {}, name, config.get('r'))
    alpha = _pattern_value(config.get('alpha_pattern') or {}, name, config.get(method.alpha_key))
    for key, value, check in (('r', rank, positive_int), (method.alpha_key, alpha, finite_number)):
        if check(value):
            return {}, f'{key}={value!r} {check(value)}'
    options = {key: config[key] for key in method.options if key in config}
    for key, value in options.items():
        option = cls.adapter_keys[key]
        why = option.check(value) if option.check else None
        if why:
            return {}, f'{key}={value!r} {why}'
    options = cls.resolve_options(rank, {**options, 'alpha': float(alpha)})
    shape = tuple(module.weight.shape)
    limit = _rank_limit(method, shape, options)
    if limit is not None and rank > limit:
        return {}, f'rank {rank} is above the {limit} its weight allows'
    tensors = {p.flora: p.from_peft(peft_tensors[p.peft], module)
               for p in method.params if p.peft in peft_tensors}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    expected = {k: tuple(v) for k, v in cls.adapter_shapes(shape, rank, options).items()}
    reason = method.refusal(module, shapes)
    if reason is None and shapes != expected:
        reason = (f'its tensors {shapes} are not the {expected} of a rank-{rank} '
                  f'{method.flora_type} layer with {options}')
    if reason:
        return {}, reason
    return dict(rank=rank, options=options, scale=method.scaling(alpha, rank, config),
                tensors=tensors), None


def load_peft_adapters(model: nn.Module, path: str,
                       config: Mapping[str, Any]) -> dict[str, AdapterLayer]:
    """Adapt ``model`` with the peft adapter directory ``path`` (see :func:`load_adapters`).

    The modules to adapt are those of the weight keys; each layer's rank and alpha come from
    ``rank_pattern`` / ``alpha_pattern`` or the global values, its scale is peft's
    (``use_rslora`` included), its options the config's. Every check runs before the first
    layer is wrapped, and a failure while loading unwraps the layers again.

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
    plans, problems = {}, []
    for name, peft_tensors in grouped.items():
        plans[name], reason = _layer_plan(method, config, name, modules[name], peft_tensors)
        if reason:
            problems.append(f'  {_describe(name, modules[name])}: {reason}')
    if problems:
        raise ValueError(f'{path}: cannot load these {method.flora_type} adapters:\n'
                         + '\n'.join(problems))

    dropout = float(config.get(method.dropout_key) or 0.0) if method.dropout_key else 0.0
    wrapped = {}
    try:
        for name, plan in plans.items():
            layer = wrap_layer(modules[name], method.flora_type, rank=plan['rank'],
                               options=plan['options'], scale=plan['scale'], dropout=dropout)
            wrapped[name] = layer
            params = dict(layer.adapter_named_parameters())
            with torch.no_grad():
                for key, value in plan['tensors'].items():
                    params[key].copy_(value)
    except BaseException:
        for layer in wrapped.values():  # leave the model as it was
            unwrap_layer(layer)
        raise
    return wrapped
