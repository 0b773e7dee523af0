"""Compatibility fixes for the pinned OpenMMLab stack on Python 3.11 / torch 2.14.

Every flora_mm entry point (``import flora_mm``, the tools, the configs' ``custom_imports``)
applies these before any mm* model code is imported. Each fix is small, idempotent and leaves
installed files untouched.
"""
import collections
import collections.abc
import os.path as osp

import torch

_applied = False


def _restore_collections_aliases() -> None:
    """Re-create ``collections.Sequence`` & co., removed in Python 3.10.

    mmrotate 1.0.0rc1 does ``from collections import Sequence`` in
    ``mmrotate/models/detectors/refine_single_stage.py``, so ``import mmrotate.models`` fails.
    """
    for name in ('Sequence', 'Mapping', 'MutableMapping', 'Iterable', 'Callable'):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def _load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=False``.

    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``; mmengine 0.10.7 does not pass
    the flag, so its own checkpoints (message hub, numpy arrays, config meta) cannot be resumed or
    tested. These are files the user's own runs wrote; pretrained weights that come from outside
    are read by flora_mm's backbone loader, which keeps ``weights_only=True``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def _patch_mmengine_checkpoint_loader() -> None:
    try:
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:  # the adapter core is usable without mmengine
        return
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local_checkpoint, force=True)


def apply_compat() -> None:
    """Apply every fix once; safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _restore_collections_aliases()
    _patch_mmengine_checkpoint_loader()
    _applied = True
