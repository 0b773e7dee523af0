"""Adapter-only runner checkpoints: drop the frozen base on save, fill it back on load.

Pure functions on the runner's checkpoint dict (``meta``, ``state_dict``, ...) and the
unwrapped model; :class:`~flora_mm.engine.hooks.AdapterCheckpointHook` calls them.
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
