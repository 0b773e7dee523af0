"""Analysis of adapted models: weight-space diagnostics (paper Fig. 4), summary statistics and
the generated domains of the fidelity experiment (``tools/analysis/fidelity.py``)."""
from .metrics import amplification_factor, layer_stats, model_stats, stage_of, \
    top_singular_vectors, update_rank
from .stats import mean_std, paired_ttest

__all__ = [
    'amplification_factor', 'layer_stats', 'mean_std', 'model_stats', 'paired_ttest',
    'stage_of', 'top_singular_vectors', 'update_rank'
]
