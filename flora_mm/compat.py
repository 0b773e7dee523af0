"""Compatibility fixes for the pinned OpenMMLab stack on Python 3.11 / torch 2.14.

Applied two ways, both idempotent and leaving installed files untouched:

* ``import flora_mm`` (every flora_mm tool, every config's ``custom_imports``, the tests)
  calls :func:`apply_compat`;
* at interpreter start, ``flora_mm_compat.pth`` (written into the environment's site-packages
  by ``tools/setup_env.sh``) runs this file by path and calls :func:`apply_compat`, so the
  downstream packages' own tools (mmrotate's ``tools/test.py`` calls
  ``register_all_modules()`` before a config's ``custom_imports`` can load flora_mm) work
  unchanged. That is why this module imports only the standard library at the top: a fix that
  needs a package is registered against the module it patches and runs right after that module
  is first imported (:func:`when_imported`), so a plain ``python`` start stays cheap.
"""
import collections
import collections.abc
import importlib.abc
import os.path as osp
import pickle
import sys
from typing import Callable, Dict, List

_applied = False
# module name -> fixes to run once that module has been executed
_pending: Dict[str, List[Callable]] = {}


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that runs fixes right after a named module's code has executed.

    Several instances may be installed (a venv's ``lib64 -> lib`` link makes ``site`` run the
    ``.pth`` twice; ``import flora_mm`` adds its own): each one skips the search it started.
    """

    def __init__(self):
        self._searching = set()

    def find_spec(self, name, path, target=None):
        if name not in _pending or name in self._searching:
            return None
        self._searching.add(name)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, 'find_spec'):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._searching.discard(name)
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _AfterImportLoader(spec.loader)
        return spec


class _AfterImportLoader(importlib.abc.Loader):
    """Wraps a module's own loader; runs the pending fixes after ``exec_module``."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        for fix in _pending.pop(module.__name__, ()):
            fix(module)

    def __getattr__(self, name):  # get_source, get_data, ...: the wrapped loader's
        return getattr(self.loader, name)


_FINDER = _AfterImportFinder()


def when_imported(name: str, fix: Callable) -> None:
    """Run ``fix(module)`` now if ``name`` is imported, else right after its first import."""
    if name in sys.modules:
        fix(sys.modules[name])
        return
    _pending.setdefault(name, []).append(fix)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


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
    import torch
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


def _patch_mmengine_checkpoint_loader(checkpoint_module) -> None:
    checkpoint_module.CheckpointLoader.register_scheme(
        prefixes='', loader=_load_local_checkpoint, force=True)


def _detector_inputs(model, input_shape: tuple) -> dict:
    """``forward`` arguments of an mmdet-style detector for a blank image of ``input_shape``."""
    import torch
    from mmdet.structures import DetDataSample
    height, width = input_shape[-2:]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1., 1.))
    param = next(model.parameters())
    return dict(inputs=torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device),
                data_samples=[DetDataSample(metainfo=meta)], mode='tensor')


def _patch_mmcv_flops_counter(cnn_module) -> None:
    """Let mmcv's ``get_model_complexity_info`` run mmdet-style detectors.

    It calls ``model(batch)``; mmdet 3.x detectors (and mmrotate's, which are mmdet's) need
    image metas for their RPN / RoI heads in ``mode='tensor'`` too, so mmrotate's
    ``tools/analysis_tools/get_flops.py`` fails with "'NoneType' object is not iterable" on
    every config, its own included. For those models (only) and when the caller gives no
    ``input_constructor``, one is supplied: a blank image with its metas.
    """
    counter = cnn_module.get_model_complexity_info
    if getattr(counter, '_flora_mm_patched', False):
        return

    def get_model_complexity_info(model, input_shape, *args, **kwargs):
        try:
            from mmdet.models.detectors import BaseDetector
        except ImportError:  # mmcv without mmdet: nothing to adapt
            BaseDetector = ()
        if isinstance(model, BaseDetector) and len(args) < 3 and kwargs.get(
                'input_constructor') is None:
            kwargs['input_constructor'] = lambda shape: _detector_inputs(model, shape)
        return counter(model, input_shape, *args, **kwargs)

    get_model_complexity_info._flora_mm_patched = True
    get_model_complexity_info.__doc__ = counter.__doc__
    cnn_module.get_model_complexity_info = get_model_complexity_info


def _patch_mmengine_complexity_info(analysis_module) -> None:
    """Let ``mmengine.analysis.get_model_complexity_info`` take ``inputs`` with ``input_shape``.

    mmseg 1.2.2's ``tools/analysis_tools/get_flops.py`` passes both (the shape for its report,
    the preprocessed image to run); mmengine 0.10 raises '"input_shape" and "inputs" cannot be
    both set.'. Given both, the inputs are used, as the function's docstring says they are.
    """
    analyze = analysis_module.get_model_complexity_info
    if getattr(analyze, '_flora_mm_patched', False):
        return

    def get_model_complexity_info(model, input_shape=None, inputs=None, *args, **kwargs):
        if inputs is not None:
            input_shape = None
        return analyze(model, input_shape, inputs, *args, **kwargs)

    get_model_complexity_info._flora_mm_patched = True
    get_model_complexity_info.__doc__ = analyze.__doc__
    analysis_module.get_model_complexity_info = get_model_complexity_info


def _patch_mmseg_draw_sem_seg(visualizer_module) -> None:
    """Give mmseg's ``SegLocalVisualizer._draw_sem_seg`` a C-contiguous image.

    mmseg 1.2.2's ``tools/analysis_tools/browse_dataset.py`` passes a channel-flipped view of
    a permuted tensor; the overlay made with ``np.zeros_like`` keeps its strides and OpenCV
    4.10 refuses to draw on it ("Layout of the output array img is incompatible with cv::Mat").
    """
    import numpy as np
    visualizer = visualizer_module.SegLocalVisualizer
    draw = visualizer._draw_sem_seg
    if getattr(draw, '_flora_mm_patched', False):
        return

    def _draw_sem_seg(self, image, *args, **kwargs):
        return draw(self, np.ascontiguousarray(image), *args, **kwargs)

    _draw_sem_seg._flora_mm_patched = True
    visualizer._draw_sem_seg = _draw_sem_seg


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


def _patch_mmengine_fsdp_resume(fsdp_strategy_module) -> None:
    fsdp_strategy_module.FSDPStrategy.load_optim_state_dict = _fsdp_load_optim_state_dict


def _patch_fsdp_cpu_optim_gather(optim_utils_module) -> None:
    """Copy each gathered optimizer state out of FSDP's reused buffer on CPU.

    torch 2.14's FSDP (``_allgather_orig_param_states``) all-gathers every optimizer state
    (``exp_avg``, ``exp_avg_sq``) of a unit into one buffer and keeps views of it; with
    ``offload_to_cpu`` the ``.cpu()`` that copies them on GPUs is a no-op on CPU processes, so
    every state of a full optimizer state dict came out equal to the last one gathered and a
    resumed run diverged. Cloning CPU views before they are unflattened fixes it; GPU runs are
    unchanged.
    """
    import torch
    original = optim_utils_module._unflatten_orig_param_states
    if getattr(original, '_flora_mm_patched', False):
        return

    def unflatten(fsdp_param_info, output_states, state_name, *args, **kwargs):
        for states in output_states.values():
            value = states.get(state_name)
            if torch.is_tensor(value) and value.device.type == 'cpu':
                states[state_name] = value.clone()
        return original(fsdp_param_info, output_states, state_name, *args, **kwargs)

    unflatten._flora_mm_patched = True
    optim_utils_module._unflatten_orig_param_states = unflatten


def _patch_mmengine_test_json(logger_hook_module) -> None:
    """Write the test metrics file ``<timestamp>.json`` from the main process only.

    mmengine 0.10.7's ``LoggerHook.after_test_epoch`` dumps it on every rank, the one write of
    that hook without ``master_only``: two ranks truncating and writing the same file at once
    left a corrupt file in CI (rank 1's line, then the tail of rank 0's longer one).
    """
    from mmengine.dist import master_only
    dump = logger_hook_module.dump
    if getattr(dump, '_flora_mm_patched', False):
        return
    main_only = master_only(dump)
    main_only._flora_mm_patched = True
    logger_hook_module.dump = main_only


def apply_compat() -> None:
    """Apply every fix once (lazily where it patches a package); safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _restore_collections_aliases()
    when_imported('mmengine.runner.checkpoint', _patch_mmengine_checkpoint_loader)
    when_imported('mmengine._strategy.fsdp', _patch_mmengine_fsdp_resume)
    when_imported('mmengine.hooks.logger_hook', _patch_mmengine_test_json)
    when_imported('torch.distributed.fsdp._optim_utils', _patch_fsdp_cpu_optim_gather)
    when_imported('mmcv.cnn', _patch_mmcv_flops_counter)
    when_imported('mmengine.analysis', _patch_mmengine_complexity_info)
    when_imported('mmseg.visualization.local_visualizer', _patch_mmseg_draw_sem_seg)
    _applied = True
