"""Compatibility fixes for the pinned OpenMMLab stack on Python 3.11 / torch 2.14.

Every flora_mm entry point (``import flora_mm``, the tools, the configs' ``custom_imports``)
applies these before any mm* model code is imported. Each fix is small, idempotent and leaves
installed files untouched.
"""
import collections
import collections.abc
import os.path as osp
import pickle

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


def _history_buffer_method(owner: type, name: str):
    """The ``getattr`` of mmengine's checkpoints, limited to what they pickle with it: the
    statistics methods of ``HistoryBuffer`` (``getattr(HistoryBuffer, 'mean')``)."""
    from mmengine.logging import HistoryBuffer
    method = getattr(owner, name, None) if owner is HistoryBuffer else None
    if name.startswith('_') or not callable(method):
        raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) is not a statistics method '
                                     'of mmengine.logging.HistoryBuffer')
    return method


def _mmengine_checkpoint_globals() -> list:
    """The non-tensor types in the checkpoints mmengine's runner writes: the message hub's
    ``HistoryBuffer`` (with its statistics methods) and the numpy arrays / scalars inside it
    and in ``meta`` (the seed)."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_method, 'builtins.getattr'),
            np.core.multiarray._reconstruct, np.core.multiarray.scalar, np.ndarray, np.dtype,
            *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]


def _load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, ``weights_only=True`` with mmengine's own types.

    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``; mmengine 0.10.7 does not pass
    the flag, so its own checkpoints (message hub, numpy values) cannot be resumed or tested.
    Only the types those hold are allowed in addition to torch's defaults, so a ``load_from``
    file from elsewhere is read as safely as by plain ``torch.load``; one that needs other
    globals is refused with their names.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(_mmengine_checkpoint_globals()):
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f'{filename}: flora_mm loads checkpoints with weights_only=True, allowing the '
                'types of mmengine\'s own checkpoints only. If you trust this file, allow the '
                'globals named below with torch.serialization.add_safe_globals in a module of '
                f'custom_imports.\n{err}') from None


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
