"""Read and plot ``AdapterAnalysisHook`` curves (paper Fig. 4) from mmengine work dirs.

Each path is a training work dir (the latest ``<timestamp>/vis_data/scalars.json`` below it is
read), a ``<timestamp>`` log dir, or a ``scalars.json`` file.
"""
from __future__ import annotations

import glob
import json
import os.path as osp

from flora_mm.adapters import atomic_write

METRICS = (('delta_norm', r'$\|\Delta W\|_F$'),
           ('amplification', r'$\|\Delta W\|_F / \|U^T W V\|_F$'))


def find_scalars(path: str) -> str:
    """The ``scalars.json`` of a work dir (latest run), a log dir, or the file itself."""
    if osp.isfile(path):
        return path
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(path, pattern)))
        if found:
            return found[-1]  # timestamped folders sort chronologically
    raise FileNotFoundError(f'no vis_data/scalars.json under {path!r}')


def read_curves(path: str, stage: str = 'all') -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` of the adapter scalars in a run's ``scalars.json``.

    Args:
        path: See :func:`find_scalars`.
        stage: ``all`` or a stage name such as ``stage2``.

    Returns:
        Curves sorted by step; a step logged twice keeps its last value.
    """
    points: dict[str, dict[int, float]] = {m: {} for m, _ in METRICS}
    with open(find_scalars(path)) as f:
        for line in f:
            row = json.loads(line)
            for metric, _ in METRICS:
                key = f'adapter/{metric}/{stage}'
                if key in row:
                    points[metric][int(row['step'])] = float(row[key])
    return {m: (sorted(p), [p[s] for s in sorted(p)]) for m, p in points.items()}


def plot_runs(paths: list[str], labels: list[str], out: str, stage: str = 'all',
              title: str | None = None) -> None:
    """Write a two-panel figure (norm, amplification) with one line per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if len(labels) != len(paths):
        raise ValueError(f'{len(paths)} runs but {len(labels)} labels')
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for path, label in zip(paths, labels):
        curves = read_curves(path, stage)
        for ax, (metric, name) in zip(axes, METRICS):
            steps, values = curves[metric]
            ax.plot(steps, values, marker='o', markersize=3, label=label)
            ax.set_xlabel('iteration')
            ax.set_ylabel(name)
    axes[0].legend()
    fig.suptitle(title or f'adapter updates ({stage} layers)')
    fig.tight_layout()
    fmt = osp.splitext(out)[1][1:] or 'png'
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format=fmt))
    plt.close(fig)
