"""Runner-side parts of flora_mm: hooks (registered on import), adapter-only checkpoints,
optimizer wrappers and constructors, FSDP helpers."""
from .fsdp import class_name_wrap_policy, fsdp_clean_name
from .hooks import AdapterAnalysisHook, AdapterCheckpointHook, FLoRAHook
from .optimizers import AmpOptimWrapper, LayerDecayOptimizerConstructor

__all__ = [
    'AdapterAnalysisHook', 'AdapterCheckpointHook', 'AmpOptimWrapper', 'FLoRAHook',
    'LayerDecayOptimizerConstructor', 'class_name_wrap_policy', 'fsdp_clean_name'
]
