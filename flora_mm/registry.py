"""flora_mm's registry nodes.

Children of mmengine's root registries under the scope ``flora_mm``, so a config refers to
``type='flora_mm.FLoRAConvNeXtV2'`` whatever its ``default_scope`` (mmdet, mmseg, mmrotate) and
whatever ``_scope_`` an inherited ``mmdet::`` base sets.
"""
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='flora_mm', locations=['flora_mm.models'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='flora_mm', locations=['flora_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='flora_mm',
    locations=['flora_mm.engine'])
OPTIM_WRAPPERS = Registry(
    'optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='flora_mm',
    locations=['flora_mm.engine'])
# Functions a config names by string, e.g. FSDP's ``auto_wrap_policy``.
FUNCTIONS = Registry(
    'function', parent=MMENGINE_FUNCTIONS, scope='flora_mm', locations=['flora_mm.engine'])
