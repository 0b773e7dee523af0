"""Adapter-only runner checkpoints: drop the frozen base on save, fill it back on load.

Pure functions on the runner's checkpoint dict (``meta``, ``state_dict``, ...) and the
unwrapped model; :class:`~flora_mm.engine.hooks.AdapterCheckpointHook` calls them on save and
resume, :func:`complete_checkpoint` serves the tools that load a checkpoint outside a runner
(inference, merging).
"""
from typing import List

import torch.nn as nn

from .fsdp import fsdp_clean_name

# Key under checkpoint['meta'] describing an adapter-only checkpoint.
META_KEY = 'flora_mm'


def frozen_state_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the frozen parameters (``requires_grad=False``) of ``model``.

    Buffers (BatchNorm statistics, ...) are never listed: they are small and may change during
    training even in frozen modules, so adapter-only checkpoints keep them. Read from the
    parameters, not from ``state_dict()``, so that the module inside an FSDP wrapper
    (``use_orig_params=True``) works too, without a collective: the wrapper prefixes are removed.
    """
    return [fsdp_clean_name(n) for n, p in model.named_parameters(remove_duplicate=False)
            if not p.requires_grad]


def strip_frozen(checkpoint: dict, model: nn.Module) -> List[str]:
    """Turn a runner checkpoint into an adapter-only one, in place.

    Drops the frozen parameters from ``checkpoint['state_dict']`` and records their names in
    ``checkpoint['meta']['flora_mm']`` (``adapter_only=True``, ``dropped_keys``), so loading can
    tell an intentionally absent tensor from a really missing one.

    Args:
        checkpoint: Dict with ``state_dict`` (and ``meta``) as the runner saves it.
        model: The (unwrapped) model the checkpoint was taken from.

    Returns:
        The dropped keys.
    """
    state = checkpoint['state_dict']
    dropped = [k for k in frozen_state_keys(model) if k in state]
    for key in dropped:
        del state[key]
    checkpoint.setdefault('meta', {})[META_KEY] = dict(adapter_only=True, dropped_keys=dropped)
    return dropped


def is_adapter_only(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` was written with frozen weights dropped (:func:`strip_frozen`)."""
    meta = checkpoint.get('meta') or {}
    return bool((meta.get(META_KEY) or {}).get('adapter_only'))


def fill_frozen(checkpoint: dict, model: nn.Module) -> List[str]:
    """Complete an adapter-only checkpoint with the frozen tensors of ``model``, in place.

    The base weights must already be the pretrained ones (backbone ``pretrained=`` loads them
    at construction, ``init_cfg`` pretrained weights in ``init_weights()``).

    Args:
        checkpoint: An adapter-only checkpoint (see :func:`is_adapter_only`).
        model: The (unwrapped) model it will be loaded into.

    Returns:
        The dropped keys the model does not have (the caller reports them).
    """
    dropped = checkpoint['meta'][META_KEY]['dropped_keys']
    own = model.state_dict()
    state = checkpoint['state_dict']
    for key in dropped:
        if key in own and key not in state:
            state[key] = own[key]
    return [k for k in dropped if k not in own]


def key_diff(expected, got) -> str:
    """``'missing keys [...], unexpected keys [...]'`` of two key collections (20 of each)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    return f'missing keys {missing[:20]}, unexpected keys {unexpected[:20]}'


def _has_pretrained_source(node) -> bool:
    """Whether a model config names weights to load: ``pretrained`` or a Pretrained init_cfg."""
    if isinstance(node, dict):
        if node.get('pretrained') or (node.get('type') == 'Pretrained'
                                      and node.get('checkpoint')):
            return True
        return any(_has_pretrained_source(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_pretrained_source(v) for v in node)
    return False


def complete_checkpoint(checkpoint: dict, model: nn.Module, model_cfg: dict,
                        name: str = 'checkpoint') -> None:
    """Make ``checkpoint['state_dict']`` hold exactly the keys of ``model``, in place.

    An adapter-only checkpoint (``FLoRAHook(adapter_only_checkpoint=True)``) gets its frozen
    tensors from ``model``, whose base weights must be the pretrained ones (backbone
    ``pretrained=``, loaded at construction; ``init_cfg`` Pretrained weights are loaded here
    by ``model.init_weights()``). DDP ``module.`` prefixes are dropped.

    Args:
        checkpoint: A runner checkpoint (``state_dict`` and ``meta``).
        model: The model built from the config the checkpoint was trained with.
        model_cfg: That config's ``model``, to check where frozen weights come from.
        name: How to name the checkpoint in error messages (its path).

    Raises:
        ValueError: No ``state_dict``; an adapter-only checkpoint without pretrained weights
            in the config; keys that do not match the model (named).
    """
    if 'state_dict' not in checkpoint:
        raise ValueError(f'{name}: not a runner checkpoint (no "state_dict"; top-level keys '
                         f'{sorted(checkpoint)[:10]})')
    checkpoint['state_dict'] = {k[7:] if k.startswith('module.') else k: v
                                for k, v in checkpoint['state_dict'].items()}
    if is_adapter_only(checkpoint):
        if not _has_pretrained_source(model_cfg):
            raise ValueError(
                f'{name} is adapter-only (frozen weights dropped), but the model config loads '
                'no pretrained weights (model.backbone.pretrained is None and no init_cfg of '
                'type Pretrained): set model.backbone.pretrained to the weights it was '
                'trained from, e.g. --cfg-options model.backbone.pretrained=PATH')
        if hasattr(model, 'init_weights') and not getattr(model, 'is_init', True):
            model.init_weights()
        fill_frozen(checkpoint, model)
    own = model.state_dict()
    if set(own) != set(checkpoint['state_dict']):
        raise ValueError(f'{name} does not match the model: '
                         + key_diff(own, checkpoint['state_dict']))
