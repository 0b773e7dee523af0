"""Sharded training with mmengine's ``FlexibleRunner`` + ``FSDPStrategy`` (torch FSDP).

``class_name_wrap_policy`` makes one FSDP unit per transformer block, selected by class name
from the config (a config cannot hold the class itself):

    strategy = dict(type='FSDPStrategy', model_wrapper=dict(auto_wrap_policy=dict(
        type='flora_mm.class_name_wrap_policy', class_names=['InternViTBlock'])))

``fsdp_clean_name`` maps a parameter name of an FSDP-wrapped model (``use_orig_params=True``)
to the key it has in the full state dict.
"""
from typing import Sequence

import torch.nn as nn

from flora_mm.registry import FUNCTIONS

# Prefixes FSDP and activation-checkpoint wrappers insert into module names.
WRAPPER_PREFIXES = ('_fsdp_wrapped_module.', '_checkpoint_wrapped_module.')


@FUNCTIONS.register_module()
def class_name_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int,
                           class_names: Sequence[str] = ()) -> bool:
    """FSDP auto-wrap policy: wrap every module whose class name is in ``class_names``.

    Args:
        module: The module FSDP asks about.
        recurse: True when FSDP asks whether to descend into ``module``'s children.
        nonwrapped_numel: Parameters of ``module`` not wrapped yet (unused).
        class_names: Class names (``type(module).__name__``) that become FSDP units.

    Returns:
        Whether to descend (always) or to wrap ``module``.
    """
    return True if recurse else type(module).__name__ in set(class_names)


def fsdp_clean_name(name: str) -> str:
    """``name`` without the wrapper prefixes FSDP / checkpoint wrappers add."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, '')
    return name
