"""Runner-side parts of flora_mm: hooks (registered on import), adapter-only checkpoints and
optimizer constructors."""
from .hooks import AdapterAnalysisHook, AdapterCheckpointHook, FLoRAHook
from .optimizers import LayerDecayOptimizerConstructor

__all__ = [
    'AdapterAnalysisHook', 'AdapterCheckpointHook', 'FLoRAHook', 'LayerDecayOptimizerConstructor'
]
