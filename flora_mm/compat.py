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


def _load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=False``.

    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``; mmengine 0.10.7 does not pass
    the flag, so its own checkpoints (message hub, numpy arrays, config meta) cannot be resumed or
    tested. These are files the user's own runs wrote; pretrained weights that come from outside
    are read by flora_mm's backbone loader, which keeps ``weights_only=True``.
    """
    import torch
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


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


def apply_compat() -> None:
    """Apply every fix once (lazily where it patches a package); safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _restore_collections_aliases()
    when_imported('mmengine.runner.checkpoint', _patch_mmengine_checkpoint_loader)
    when_imported('mmcv.cnn', _patch_mmcv_flops_counter)
    when_imported('mmengine.analysis', _patch_mmengine_complexity_info)
    when_imported('mmseg.visualization.local_visualizer', _patch_mmseg_draw_sem_seg)
    _applied = True
