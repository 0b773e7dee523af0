"""flora_mm's registry nodes.

Children of mmengine's root registries under the scope ``flora_mm``, so a config refers to
``type='flora_mm.FLoRAConvNeXtV2'`` whatever its ``default_scope`` (mmdet, mmseg, mmrotate) and
whatever ``_scope_`` an inherited ``mmdet::`` base sets. mmengine imports this module when
it meets such a type, and each node imports its ``locations`` on its first look-up, which
registers the modules.
"""
from .stack import require

require('torch', 'mmengine', part='flora_mm.registry (OpenMMLab registries)')

from mmengine import registry as mmengine_registry  # noqa: E402  (after the version check)

MODELS = mmengine_registry.Registry(
    'model', parent=mmengine_registry.MODELS, scope='flora_mm', locations=['flora_mm.models'])
HOOKS = mmengine_registry.Registry(
    'hook', parent=mmengine_registry.HOOKS, scope='flora_mm', locations=['flora_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = mmengine_registry.Registry(
    'optimizer wrapper constructor',
    parent=mmengine_registry.OPTIM_WRAPPER_CONSTRUCTORS,
    scope='flora_mm',
    locations=['flora_mm.engine'])
OPTIM_WRAPPERS = mmengine_registry.Registry(
    'optim_wrapper', parent=mmengine_registry.OPTIM_WRAPPERS, scope='flora_mm',
    locations=['flora_mm.engine'])
# Functions a config names by string, e.g. FSDP's ``auto_wrap_policy``.
FUNCTIONS = mmengine_registry.Registry(
    'function', parent=mmengine_registry.FUNCTIONS, scope='flora_mm', locations=['flora_mm.engine'])
