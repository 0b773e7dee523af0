"""Adapter state dicts and shareable adapter checkpoints (safetensors + JSON)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn as nn

from ..version import __version__
from .inject import adapter_layers, wrap_from_config
from .layers import AdapterLayer
from .registry import adapter_method
from .wrapping import unwrap_layer

ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors'
ADAPTER_CONFIG_NAME = 'adapter_config.json'
FORMAT_VERSION = 1


class IncompatibleKeys(NamedTuple):
    """Result of a non-strict :func:`load_adapter_state_dict`."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {}
    for name, layer in adapter_layers(model).items():
        prefix = f'{name}.' if name else ''
        for param_name, param in layer.adapter_named_parameters():
            params[prefix + param_name] = param
    return params


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters only, under the same keys as in ``model.state_dict()``.

    Args:
        model: A model with adapters.

    Returns:
        ``{qualified name: detached tensor}``, e.g. ``stem.0.flora_core``.
    """
    return {key: param.detach() for key, param in _adapter_params(model).items()}


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                            strict: bool = True) -> IncompatibleKeys:
    """Copy adapter tensors into the adapters of ``model`` (merged layers stay merged).

    Args:
        model: A model with adapters of the right shapes.
        state: A mapping like the output of :func:`adapter_state_dict`.
        strict: Raise if keys are missing from ``state`` or unexpected in it.

    Returns:
        The missing and unexpected keys.

    Raises:
        RuntimeError: Listing missing/unexpected keys (strict) or naming a key with both
            shapes on a shape mismatch. Nothing is loaded when an error is raised.
    """
    params = _adapter_params(model)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if strict and (missing or unexpected):
        raise RuntimeError(f'adapter state dict does not match the model: missing keys '
                           f'{missing}, unexpected keys {unexpected}')
    for key in set(params) & set(state):
        if tuple(state[key].shape) != tuple(params[key].shape):
            raise RuntimeError(f'adapter state dict: shape mismatch for {key!r}: checkpoint '
                               f'{tuple(state[key].shape)} vs model {tuple(params[key].shape)}')
    merged = [layer for layer in adapter_layers(model).values() if layer.merged]
    for layer in merged:
        layer.unmerge()
    with torch.no_grad():
        for key in set(params) & set(state):
            params[key].copy_(state[key])
    for layer in merged:
        layer.merge()
    return IncompatibleKeys(missing, unexpected)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write via a temporary file in the same directory and ``os.replace`` it into place, so
    an interrupted save never leaves a truncated ``path``.

    Args:
        path: Destination file; its directory is created if needed.
        write: Called with the temporary file's path; writes the whole content there.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:  # pragma: no cover - a declared runtime dependency
        raise ImportError('save_adapters / load_adapters need the safetensors package') from err
    return safetensors.torch


def save_adapters(model: nn.Module, path: str, format: str = 'flora_mm') -> None:
    """Save the adapters of ``model`` to the directory ``path``.

    Writes ``adapter_model.safetensors`` (adapter tensors, fp32 as trained) and
    ``adapter_config.json`` (flora_mm version, format version and each layer's
    ``adapter_config``: type, rank, scale, dropout, forward_mode, weight shape, base class
    and the method's own options), each atomically.

    Args:
        model: A model with adapters.
        path: Target directory (created if needed).
        format: 'flora_mm', or 'peft' for a directory that Hugging Face peft's
            ``PeftModel.from_pretrained`` loads (LoRA, DoRA, LoHa, LoKr; see
            :func:`flora_mm.adapters.peft_format.save_peft_adapters`).

    Raises:
        ValueError: If the model has no adapters, an unknown format, or (peft) adapters
            peft cannot hold.
    """
    if format == 'peft':
        from .peft_format import save_peft_adapters
        return save_peft_adapters(model, path)
    if format != 'flora_mm':
        raise ValueError(f"save_adapters: format={format!r} is not 'flora_mm' or 'peft'")
    layers = adapter_layers(model)
    if not layers:
        raise ValueError('save_adapters: the model has no adapters')
    os.makedirs(path, exist_ok=True)
    # Unmerged values are the canonical ones; merging does not change adapter parameters.
    tensors = {k: v.detach().to('cpu', copy=True).contiguous()
               for k, v in adapter_state_dict(model).items()}
    metadata = {'format': 'pt', 'flora_mm_version': __version__}
    atomic_write(os.path.join(path, ADAPTER_WEIGHTS_NAME),
                  lambda tmp: _safetensors().save_file(tensors, tmp, metadata=metadata))
    config = {'flora_mm_version': __version__, 'format_version': FORMAT_VERSION,
              'layers': {name: layer.adapter_config for name, layer in layers.items()}}

    def write_json(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)

    atomic_write(os.path.join(path, ADAPTER_CONFIG_NAME), write_json)


def _param_shapes(layer: AdapterLayer) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in layer.adapter_named_parameters()}


def _saved_param_shapes(layer_cfg: Mapping) -> dict[str, tuple[int, ...]]:
    """The adapter parameter shapes a saved layer config re-creates."""
    cls = adapter_method(layer_cfg['type'])
    rank = int(layer_cfg['rank'])
    options = cls.resolve_options(rank, {k: layer_cfg[k] for k in cls.adapter_keys
                                         if k in layer_cfg})
    return {name: tuple(shape) for name, shape in
            cls.adapter_shapes(tuple(layer_cfg['weight_shape']), rank, options).items()}


def load_adapters(model: nn.Module, path: str) -> dict[str, nn.Module]:
    """Re-apply adapters saved by :func:`save_adapters` (strict).

    Layers that are plain get their adapter re-created from the JSON config; layers that are
    already adapted must match it (type, parameter shapes, weight shape). Then the weights
    are loaded. A peft adapter directory (its config has ``peft_type``) is read by
    :func:`flora_mm.adapters.peft_format.load_peft_adapters`.

    Args:
        model: The plain (or identically adapted) model.
        path: Directory written by :func:`save_adapters`.

    Returns:
        The adapted modules listed in the config, by qualified name.

    Raises:
        ValueError: Unknown format version, a missing module, a weight shape or adapter
            config that does not match. RuntimeError: key or shape mismatches of the weights.
    """
    with open(os.path.join(path, ADAPTER_CONFIG_NAME)) as f:
        config = json.load(f)
    if 'peft_type' in config:
        from .peft_format import load_peft_adapters
        return load_peft_adapters(model, path, config)
    if config.get('format_version') != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported adapter format_version "
                         f"{config.get('format_version')!r} (expected {FORMAT_VERSION})")
    to_wrap = []
    for name, layer_cfg in config['layers'].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f'{path}: the model has no module {name!r} to re-apply its '
                             f"{layer_cfg['type']} adapter to") from None
        try:
            adapter_method(layer_cfg['type'])
        except ValueError as err:
            raise ValueError(f'{path}: module {name!r}: {err}') from None
        shape = list(getattr(module, 'weight', torch.empty(0)).shape)
        if shape != layer_cfg['weight_shape']:
            raise ValueError(f"{path}: module {name!r} has weight shape {shape}, the adapter "
                             f"was trained on {layer_cfg['weight_shape']}")
        if isinstance(module, AdapterLayer):
            current = (module.adapter_type, _param_shapes(module))
            saved = (layer_cfg['type'], _saved_param_shapes(layer_cfg))
            if current != saved:
                raise ValueError(f'{path}: module {name!r} already has a different adapter: '
                                 f'{current} vs saved {saved}')
        else:
            to_wrap.append((module, layer_cfg))
    wrapped = []
    try:
        for module, layer_cfg in to_wrap:
            wrapped.append(wrap_from_config(module, layer_cfg))
        state = _safetensors().load_file(os.path.join(path, ADAPTER_WEIGHTS_NAME))
        load_adapter_state_dict(model, state, strict=True)
    except BaseException:
        for layer in wrapped:  # leave the model as it was
            unwrap_layer(layer)
        raise
    return {name: model.get_submodule(name) for name in config['layers']}
