"""Compatibility fixes for the pinned OpenMMLab stack on Python 3.11 / torch 2.14.

Each fix declares what it is for (:func:`fix`): the module whose import triggers it, the
package versions it is meant for, and why. It runs right after that module is first imported
(:func:`when_imported`) and leaves installed files untouched; outside its versions it is
skipped with one warning. docs/compat.md lists them.

Applied two ways, each fix once per process (a marker on the patched module):

* ``import flora_mm`` (every flora_mm tool, every config's ``custom_imports``, the tests)
  calls :func:`apply_compat`;
* at interpreter start, ``flora_mm_compat.pth`` (written into the environment's site-packages
  by ``tools/setup_env.sh``) runs this file by path and calls :func:`apply_compat`, so the
  downstream packages' own tools (mmrotate's ``tools/test.py`` calls
  ``register_all_modules()`` before a config's ``custom_imports`` can load flora_mm) work
  unchanged. That is why this module imports only the standard library at the top and
  nothing of flora_mm: a plain ``python`` start stays cheap.
"""
import collections
import collections.abc
import functools
import importlib.abc
import importlib.metadata
import logging
import os.path as osp
import pickle
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Mapping, Optional

logger = logging.getLogger('flora_mm.compat')

_applied = False
# module name -> fixes to run once that module has been executed
_pending: Dict[str, List[Callable]] = {}
# import name -> distribution name, where they differ
DISTRIBUTIONS = {'mmseg': 'mmsegmentation', 'cv2': 'opencv-python'}
# on each patched module: {fix name: 'applied' | 'skipped'}, shared by every copy of this file
MARKER = '_flora_mm_fixes'


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


def installed_version(package: str) -> Optional[str]:
    """The version of an importable package: its ``__version__`` once imported (what runs),
    else its distribution's; None when it is not installed. Imports nothing."""
    version = getattr(sys.modules.get(package), '__version__', None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problems(required: Mapping[str, str]) -> List[str]:
    """``'mmengine >=0.10.0,<=0.10.7 (found 0.11.0)'`` for each package of ``required``
    (import name -> PEP 440 specifier) that is missing or outside its range."""
    from packaging.specifiers import SpecifierSet
    problems = []
    for package, specifier in required.items():
        version = installed_version(package)
        if version is None or not SpecifierSet(specifier).contains(version, prereleases=True):
            problems.append(f'{package} {specifier} (found {version or "none"})')
    return problems


@dataclass(frozen=True)
class Fix:
    """A fix of an installed package, run on the module ``on`` once it is imported.

    Attributes:
        name: The fix function's name.
        on: The module it patches; its import triggers the fix.
        versions: Import name -> PEP 440 specifier: the versions that need the fix, from the
            oldest flora_mm supports to the newest that has the defect (checked).
        why: The upstream failure it fixes, in one sentence.
        apply: ``apply(module)`` patches the module.
    """

    name: str
    on: str
    versions: Mapping[str, str]
    why: str
    apply: Callable[[ModuleType], None]

    def __call__(self, module: ModuleType) -> bool:
        """Apply the fix to ``module`` unless applied or skipped there before.

        Returns:
            Whether the fix is in place.
        """
        done = module.__dict__.setdefault(MARKER, {})
        if self.name not in done:
            problems = version_problems(self.versions)
            if problems:
                logger.warning('flora_mm skipped the fix %s of %s, meant for %s: %s',
                               self.name, self.on, ', '.join(problems), self.why)
                done[self.name] = 'skipped'
            else:
                self.apply(module)
                done[self.name] = 'applied'
        return done[self.name] == 'applied'


FIXES: Dict[str, Fix] = {}


def fix(on: str, versions: Mapping[str, str], why: str) -> Callable:
    """Declare the decorated ``apply(module)`` the fix of ``on`` for ``versions`` (:class:`Fix`)."""

    def declare(apply: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        FIXES[apply.__name__] = Fix(apply.__name__, on, dict(versions), why, apply)
        return apply

    return declare


@fix('mmrotate', {'mmrotate': '>=1.0.0rc0,<=1.0.0rc1'},
     why='mmrotate.models does `from collections import Sequence`, removed in Python 3.10')
def mmrotate_collections_aliases(mmrotate: ModuleType) -> None:
    """Re-create ``collections.Sequence`` & co. before ``mmrotate.models`` is imported.

    ``mmrotate/models/detectors/refine_single_stage.py`` imports it (its unreleased dev-1.x
    takes it from ``typing``); mmrotate's ``__init__`` does not import its models, so this
    runs in time.
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

    Only the types mmengine's checkpoints hold are allowed in addition to torch's defaults,
    so a ``load_from`` file from elsewhere is read as safely as by plain ``torch.load``; one
    that needs other globals is refused with their names.
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


@fix('mmengine.runner.checkpoint', {'mmengine': '>=0.10.0,<=0.10.7', 'torch': '>=2.6'},
     why="torch >= 2.6 loads with weights_only=True by default and mmengine's local loader "
         'passes no flag, so the runner cannot resume or test its own checkpoints')
def mmengine_local_checkpoints(checkpoint_module: ModuleType) -> None:
    """Load local files with :func:`_load_local_checkpoint` (mmengine's unreleased main passes
    ``weights_only=False`` instead, which runs any pickle)."""
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


@fix('mmcv.cnn', {'mmcv': '>=2.0.0,<=2.0.1'},
     why="mmcv's get_model_complexity_info calls model(batch), but mmdet 3.x detectors need "
         "image metas, so mmdet's and mmrotate's get_flops.py fail on every config")
def mmcv_flops_counter_detectors(cnn_module: ModuleType) -> None:
    """For mmdet-style detectors (only) and when the caller gives no ``input_constructor``,
    supply one: a blank image with its metas. The error was "'NoneType' object is not
    iterable" (their RPN / RoI heads read the metas in ``mode='tensor'`` too)."""
    counter = cnn_module.get_model_complexity_info

    @functools.wraps(counter)
    def get_model_complexity_info(model, input_shape, *args, **kwargs):
        try:
            from mmdet.models.detectors import BaseDetector
        except ImportError:  # mmcv without mmdet: nothing to adapt
            BaseDetector = ()
        if isinstance(model, BaseDetector) and len(args) < 3 and kwargs.get(
                'input_constructor') is None:
            kwargs['input_constructor'] = lambda shape: _detector_inputs(model, shape)
        return counter(model, input_shape, *args, **kwargs)

    cnn_module.get_model_complexity_info = get_model_complexity_info


@fix('mmengine.analysis', {'mmengine': '>=0.10.0,<=0.10.7'},
     why='mmseg 1.2.2\'s get_flops.py passes input_shape and inputs, which mmengine\'s '
         'get_model_complexity_info refuses ("cannot be both set")')
def mmengine_complexity_info_inputs(analysis_module: ModuleType) -> None:
    """Given both, use the inputs, as the function's docstring says it does (mmseg's tool
    passes the shape for its report and the preprocessed image to run)."""
    analyze = analysis_module.get_model_complexity_info

    @functools.wraps(analyze)
    def get_model_complexity_info(model, input_shape=None, inputs=None, *args, **kwargs):
        if inputs is not None:
            input_shape = None
        return analyze(model, input_shape, inputs, *args, **kwargs)

    analysis_module.get_model_complexity_info = get_model_complexity_info


@fix('mmseg.visualization.local_visualizer', {'mmseg': '>=1.2.0,<=1.2.2'},
     why="mmseg's browse_dataset.py passes a channel-flipped view to _draw_sem_seg, whose "
         'overlay keeps its strides, and OpenCV 4.10 refuses to draw on it')
def mmseg_draw_sem_seg_contiguous(visualizer_module: ModuleType) -> None:
    """Give ``SegLocalVisualizer._draw_sem_seg`` a C-contiguous image (the overlay is made
    with ``np.zeros_like``; OpenCV: "Layout of the output array img is incompatible with
    cv::Mat")."""
    import numpy as np
    visualizer = visualizer_module.SegLocalVisualizer
    draw = visualizer._draw_sem_seg

    @functools.wraps(draw)
    def _draw_sem_seg(self, image, *args, **kwargs):
        return draw(self, np.ascontiguousarray(image), *args, **kwargs)

    visualizer._draw_sem_seg = _draw_sem_seg


def _fsdp_load_optim_state_dict(self, state_dict: dict) -> None:
    """``FSDPStrategy.load_optim_state_dict`` with torch's argument order (model, optimizer,
    state dict)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    optimizer = self.optim_wrapper.optimizer
    self.optim_wrapper.load_state_dict(
        FullyShardedDataParallel.optim_state_dict_to_load(self.model, optimizer, state_dict))


@fix('mmengine._strategy.fsdp', {'mmengine': '>=0.10.0,<=0.10.7', 'torch': '>=2.1'},
     why="mmengine calls FSDP.optim_state_dict_to_load in torch 2.0's argument order, so "
         "resuming a sharded run fails with TypeError: unhashable type: 'dict'")
def mmengine_fsdp_resume(fsdp_strategy_module: ModuleType) -> None:
    """Replace ``FSDPStrategy.load_optim_state_dict`` (mmengine's unreleased main names the
    arguments instead)."""
    fsdp_strategy_module.FSDPStrategy.load_optim_state_dict = _fsdp_load_optim_state_dict


@fix('torch.distributed.fsdp._optim_utils', {'torch': '>=2.13,<=2.14.1'},
     why="FSDP's full optimizer state dict with offload_to_cpu keeps views of one reused "
         'gather buffer on CPU processes, so every state came out equal to the last one')
def torch_fsdp_cpu_optim_gather(optim_utils_module: ModuleType) -> None:
    """Clone CPU views before they are unflattened.

    ``_allgather_orig_param_states`` all-gathers every optimizer state (``exp_avg``,
    ``exp_avg_sq``) of a unit into one buffer; the ``.cpu()`` that copies them out on GPUs is
    a no-op on CPU processes, and a resumed run diverged. GPU runs are unchanged. (The
    2.13.0 source is the same as 2.14.1's.)
    """
    import torch
    unflatten = optim_utils_module._unflatten_orig_param_states

    @functools.wraps(unflatten)
    def _unflatten_orig_param_states(fsdp_param_info, output_states, state_name, *args,
                                     **kwargs):
        for states in output_states.values():
            value = states.get(state_name)
            if torch.is_tensor(value) and value.device.type == 'cpu':
                states[state_name] = value.clone()
        return unflatten(fsdp_param_info, output_states, state_name, *args, **kwargs)

    optim_utils_module._unflatten_orig_param_states = _unflatten_orig_param_states


@fix('mmengine.hooks.logger_hook', {'mmengine': '>=0.10.0,<=0.10.7'},
     why="LoggerHook.after_test_epoch dumps the test metrics JSON on every rank; two ranks "
         'writing one file at once left it corrupt')
def mmengine_test_json_main_process(logger_hook_module: ModuleType) -> None:
    """Make the hook module's ``dump`` (used for that file only) ``master_only``."""
    from mmengine.dist import master_only
    logger_hook_module.dump = master_only(logger_hook_module.dump)


def apply_compat() -> None:
    """Register every fix (each runs when its module is imported); safe to call repeatedly."""
    global _applied
    if _applied:
        return
    for declared in FIXES.values():
        when_imported(declared.on, declared)
    _applied = True
