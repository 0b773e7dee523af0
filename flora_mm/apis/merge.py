"""Fold trained adapters into the base weights: a plain checkpoint for the un-adapted model."""
import copy
import os
from typing import Optional

import torch
from mmengine.config import ConfigDict

from flora_mm.adapters import adapt_model, atomic_write, count_adapter_params, merge_adapters
from flora_mm.engine.checkpoint import complete_checkpoint, key_diff
from .launch import build_model, load_config

HOOK_TYPES = ('FLoRAHook', 'flora_mm.FLoRAHook')


def _is_flora_hook(hook_cfg) -> bool:
    return isinstance(hook_cfg, dict) and hook_cfg.get('type') in HOOK_TYPES


def plain_model_cfg(model_cfg: ConfigDict) -> ConfigDict:
    """The model config without adapters: every ``adapter`` set to None, ``trainable`` emptied.

    Args:
        model_cfg: ``cfg.model``.

    Returns:
        A modified deep copy.
    """
    def strip(node):
        if isinstance(node, dict):
            if 'adapter' in node:
                node['adapter'] = None
                if 'trainable' in node:
                    node['trainable'] = ()
            for value in node.values():
                strip(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                strip(value)
    model_cfg = copy.deepcopy(model_cfg)
    strip(model_cfg)
    return model_cfg


def merge_checkpoint(config: str, checkpoint: str, out: str,
                     cfg_options: Optional[dict] = None, verify: bool = True) -> dict:
    """Write ``out``: ``checkpoint``'s model with every adapter merged into its base weight.

    The model is built from ``config`` (adapters of the backbone config and of ``FLoRAHook``
    entries in ``custom_hooks``), the checkpoint (full or adapter-only) is loaded strictly,
    adapters are merged and unloaded, and the result is saved as
    ``{'meta': ..., 'state_dict': ...}`` through a temporary file renamed onto ``out``.
    With ``verify`` the state dict is first loaded strictly into the plain model (the config
    with ``adapter=None`` and no ``FLoRAHook``).

    Args:
        config: The training config.
        checkpoint: A checkpoint written by training with that config.
        out: Output path; replaced atomically, never left half-written.
        cfg_options: ``--cfg-options`` overrides.
        verify: Check that the plain model loads the merged state dict strictly.

    Returns:
        ``{'merged_layers': int, 'num_tensors': int}``.

    Raises:
        ValueError: The model has no adapters, or keys do not match (named in the message).
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    cfg = load_config(config, cfg_options=cfg_options)
    model = build_model(cfg)
    for hook_cfg in cfg.get('custom_hooks', []):
        if _is_flora_hook(hook_cfg):
            adapt_model(model, hook_cfg.get('adapter'), hook_cfg.get('trainable', ()))
    layers = len(count_adapter_params(model)['per_layer'])
    if not layers:
        raise ValueError(f'{config}: the model has no adapters (no `adapter=` in the model '
                         'config and no FLoRAHook with `adapter` in custom_hooks); nothing to '
                         'merge')
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    complete_checkpoint(ckpt, model, cfg.model, checkpoint)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    merge_adapters(model, unload=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if verify:
        plain = build_model(cfg, plain_model_cfg(cfg.model))
        expected = list(plain.state_dict())
        if sorted(expected) != sorted(state):
            raise ValueError('the merged state dict does not fit the plain model (adapter=None): '
                             + key_diff(expected, state))
        plain.load_state_dict(state, strict=True)
    meta = dict(ckpt.get('meta') or {})
    meta.pop('flora_mm', None)
    meta['flora_mm_merged'] = dict(source=os.path.abspath(checkpoint), merged_layers=layers)
    atomic_write(out, lambda tmp: torch.save(dict(meta=meta, state_dict=state), tmp))
    return dict(merged_layers=layers, num_tensors=len(state))

