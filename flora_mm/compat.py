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


def _fsdp_load_optim_state_dict(self, state_dict: dict) -> None:
    """``FSDPStrategy.load_optim_state_dict`` with torch's argument order.

    mmengine 0.10.7 calls ``FSDP.optim_state_dict_to_load(state_dict, model, optimizer)``, the
    torch 2.0 order; since torch 2.1 it is ``(model, optim, optim_state_dict)``, so resuming a
    sharded run failed with ``TypeError: unhashable type: 'dict'``.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    optimizer = self.optim_wrapper.optimizer
    self.optim_wrapper.load_state_dict(
        FullyShardedDataParallel.optim_state_dict_to_load(self.model, optimizer, state_dict))


def _patch_mmengine_fsdp_resume() -> None:
    try:
        from mmengine._strategy import FSDPStrategy
    except ImportError:  # no mmengine, or one without strategies
        return
    FSDPStrategy.load_optim_state_dict = _fsdp_load_optim_state_dict


def _patch_fsdp_cpu_optim_gather() -> None:
    """Copy each gathered optimizer state out of FSDP's reused buffer on CPU.

    torch 2.14's FSDP (``_allgather_orig_param_states``) all-gathers every optimizer state
    (``exp_avg``, ``exp_avg_sq``) of a unit into one buffer and keeps views of it; with
    ``offload_to_cpu`` the ``.cpu()`` that copies them on GPUs is a no-op on CPU processes, so
    every state of a full optimizer state dict came out equal to the last one gathered and a
    resumed run diverged. Cloning CPU views before they are unflattened fixes it; GPU runs are
    unchanged.
    """
    from torch.distributed.fsdp import _optim_utils
    original = _optim_utils._unflatten_orig_param_states
    if getattr(original, '_flora_mm_patched', False):
        return

    def unflatten(fsdp_param_info, output_states, state_name, *args, **kwargs):
        for states in output_states.values():
            value = states.get(state_name)
            if torch.is_tensor(value) and value.device.type == 'cpu':
                states[state_name] = value.clone()
        return original(fsdp_param_info, output_states, state_name, *args, **kwargs)

    unflatten._flora_mm_patched = True
    _optim_utils._unflatten_orig_param_states = unflatten


def apply_compat() -> None:
    """Apply every fix once; safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _restore_collections_aliases()
    _patch_mmengine_checkpoint_loader()
    _patch_mmengine_fsdp_resume()
    _patch_fsdp_cpu_optim_gather()
    _applied = True
