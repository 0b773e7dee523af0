"""Summary statistics of the fidelity experiment: mean +- std per cell, paired t-tests."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value).

    Args:
        values: Finite numbers (at least one).

    Returns:
        ``(mean, std)``.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError('mean_std: no values')
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def paired_ttest(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """Two-sided paired t-test of ``a - b`` over the seeds present in both.

    Pairing by seed matters: the same seed gives both methods the same head initialization
    and data order, so seed-to-seed variance cancels in the difference.

    Args:
        a: ``{seed: metric}`` of the first method.
        b: ``{seed: metric}`` of the second method.

    Returns:
        ``{'n', 'mean_diff', 't', 'p'}``; ``t`` and ``p`` are NaN with fewer than two pairs or
        identical differences (the test is undefined there).
    """
    from scipy import stats  # local: only the experiment's summary needs scipy
    seeds = sorted(set(a) & set(b))
    diff = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    result = {'n': len(seeds), 'mean_diff': float(diff.mean()) if seeds else math.nan,
              't': math.nan, 'p': math.nan}
    if len(seeds) >= 2 and np.ptp(diff) > 0:
        test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        result.update(t=float(test.statistic), p=float(test.pvalue))
    return result
