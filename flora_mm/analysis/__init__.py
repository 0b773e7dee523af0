"""Analysis of adapted models: weight-space diagnostics (paper Fig. 4), summary statistics, and
the fidelity experiment (:mod:`.fidelity`, run by ``tools/analysis/fidelity.py``) with its
generated domains (:mod:`.source_domain`)."""
from .metrics import amplification_factor, layer_stats, model_stats, stage_of, \
    top_singular_vectors, update_rank
from .stats import mean_std, paired_ttest

__all__ = [
    'amplification_factor', 'layer_stats', 'mean_std', 'model_stats', 'paired_ttest',
    'stage_of', 'top_singular_vectors', 'update_rank'
]
