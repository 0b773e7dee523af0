"""Runner-side parts of flora_mm: hooks, optimizer constructors and FSDP helpers (registered
on import)."""
from .fsdp import class_name_wrap_policy, fsdp_clean_name
from .hooks import AdapterAnalysisHook, FLoRAHook
from .optimizers import LayerDecayOptimizerConstructor

__all__ = ['AdapterAnalysisHook', 'FLoRAHook', 'LayerDecayOptimizerConstructor',
           'class_name_wrap_policy', 'fsdp_clean_name']
