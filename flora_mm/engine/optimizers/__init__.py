from .amp_optim_wrapper import AmpOptimWrapper
from .layer_decay_optimizer_constructor import (LayerDecayOptimizerConstructor,
                                                get_layer_id_for_convnext_or_vit, infer_depths,
                                                num_layer_ids)

__all__ = [
    'AmpOptimWrapper', 'LayerDecayOptimizerConstructor', 'get_layer_id_for_convnext_or_vit',
    'infer_depths', 'num_layer_ids'
]
