from .flora_hook import (FLoRAHook, fill_frozen, frozen_state_keys, is_adapter_only,
                         param_table, strip_frozen)

__all__ = [
    'FLoRAHook', 'fill_frozen', 'frozen_state_keys', 'is_adapter_only', 'param_table',
    'strip_frozen'
]
