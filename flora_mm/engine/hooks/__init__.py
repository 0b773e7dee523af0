from .adapter_analysis_hook import AdapterAnalysisHook
from .flora_hook import (FLoRAHook, fill_frozen, frozen_state_keys, is_adapter_only,
                         param_table, strip_frozen)

__all__ = [
    'AdapterAnalysisHook', 'FLoRAHook', 'fill_frozen', 'frozen_state_keys', 'is_adapter_only',
    'param_table', 'strip_frozen'
]
