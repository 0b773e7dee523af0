"""Runner-side parts of flora_mm: hooks and optimizer constructors (registered on import)."""
from .hooks import AdapterAnalysisHook, FLoRAHook
from .optimizers import LayerDecayOptimizerConstructor

__all__ = ['AdapterAnalysisHook', 'FLoRAHook', 'LayerDecayOptimizerConstructor']
