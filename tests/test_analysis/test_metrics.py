"""Amplification factor, stage grouping and paired statistics against independent numpy."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import inject_adapters
from flora_mm.analysis.metrics import amplification_factor, model_stats, stage_of, \
    top_singular_vectors, update_rank
from flora_mm.analysis.stats import mean_std, paired_ttest


def _numpy_amplification(delta: np.ndarray, base: np.ndarray, r: int) -> float:
    d = delta.reshape(delta.shape[0], -1)
    w = base.reshape(base.shape[0], -1)
    u, _, vt = np.linalg.svd(d)
    return np.linalg.norm(d) / np.linalg.norm(u[:, :r].T @ w @ vt[:r].T)


@pytest.mark.parametrize('shape,rank', [((8, 6), 2), ((16, 4, 3, 3), 3), ((64, 300), 4)])
def test_amplification_matches_numpy_for_low_rank_updates(shape, rank):
    rng = np.random.default_rng(0)
    base = rng.normal(size=shape)
    n = int(np.prod(shape[1:]))
    delta = (rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, n))).reshape(shape)
    got = amplification_factor(torch.from_numpy(delta).float(), torch.from_numpy(base).float(),
                               rank)
    assert got == pytest.approx(_numpy_amplification(delta, base, rank), rel=1e-4)


def test_amplification_on_a_known_case():
    # dW = 3 e1 e1^T, W = diag(2, 5): U^T W V = W[0, 0] = 2 -> factor 3 / 2.
    delta = torch.zeros(2, 2)
    delta[0, 0] = 3.
    assert amplification_factor(delta, torch.diag(torch.tensor([2., 5.])), 1) == 1.5
    assert amplification_factor(torch.zeros(2, 2), torch.eye(2), 1) == 0.0
    assert math.isinf(amplification_factor(delta, torch.diag(torch.tensor([0., 5.])), 1))


def test_randomized_range_finder_spans_the_top_subspace_of_a_full_rank_matrix():
    # Large enough to take the randomized path; a clear spectral gap after the 5th value.
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.normal(size=(200, 200)))
    q2, _ = np.linalg.qr(rng.normal(size=(120, 120)))
    s = np.concatenate([[50., 40., 30., 20., 10.], np.linspace(1., 0.01, 115)])
    mat = q1[:, :120] @ np.diag(s) @ q2.T
    before = torch.random.get_rng_state()
    u, v = top_singular_vectors(torch.from_numpy(mat), 5)
    assert torch.equal(before, torch.random.get_rng_state())  # training RNG untouched
    assert u.shape == (200, 5) and v.shape == (120, 5)
    # Projectors onto the top-5 subspaces agree with numpy's exact SVD.
    np.testing.assert_allclose(u.numpy() @ u.numpy().T, q1[:, :5] @ q1[:, :5].T, atol=1e-6)
    np.testing.assert_allclose(v.numpy() @ v.numpy().T, q2[:, :5] @ q2[:, :5].T, atol=1e-6)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_model_stats_per_stage_against_numpy(method):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module('stem', nn.Conv2d(3, 8, 3))
    model.add_module('stages', nn.ModuleList([nn.Conv2d(8, 8, 3), nn.Linear(8, 12)]))
    cfg = dict(type=method, rank=2, kernel_rank=2, scale=0.5) if method == 'FLoRA' else \
        dict(type=method, rank=2)
    layers = inject_adapters(model, cfg)
    assert model_stats(model)['delta_norm'] == {'other': 0.0, 'stage0': 0.0, 'stage1': 0.0,
                                                'all': 0.0}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    expected = {}
    for name, layer in layers.items():
        delta = layer.delta_weight().detach().numpy().astype(np.float64)
        expected[name] = (np.linalg.norm(delta.reshape(delta.shape[0], -1)),
                          _numpy_amplification(delta, layer.weight.detach().numpy(),
                                               update_rank(layer)))
    stats = model_stats(model)
    assert stats['delta_norm']['stage1'] == pytest.approx(expected['stages.1'][0], rel=1e-5)
    assert stats['amplification']['other'] == pytest.approx(expected['stem'][1], rel=1e-3)
    assert stats['amplification']['all'] == pytest.approx(
        np.mean([e[1] for e in expected.values()]), rel=1e-3)


def test_update_rank_and_stage_names():
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(4, 4, 3, groups=4))
    layers = inject_adapters(model, dict(type='FLoRA', rank=8, kernel_rank=1))
    assert update_rank(layers['0']) == 8  # J = (8, 8, 1, 1): mode-1 unfolding rank 8
    assert update_rank(layers['1']) == 1  # depthwise: J = (4, 1, 1, 1) -> min(4, 1)
    assert stage_of('backbone.stages.2.blocks.0.conv_dw') == 'stage2'
    assert stage_of('backbone.layer3.0.conv1') == 'stage3'
    assert stage_of('stem.0') == 'other'


def test_stats_against_scipy_free_formulas():
    assert mean_std([1., 2., 3., 4.]) == (2.5, pytest.approx(np.sqrt(5 / 3)))
    assert mean_std([7.]) == (7., 0.)
    a, b = {0: 3., 1: 5., 2: 4., 3: 9.}, {0: 1., 1: 4., 2: 4., 3: 5., 4: 0.}
    diff = np.array([2., 1., 0., 4.])
    t = diff.mean() / (diff.std(ddof=1) / 2)
    res = paired_ttest(a, b)
    assert res['n'] == 4 and res['mean_diff'] == pytest.approx(1.75)
    assert res['t'] == pytest.approx(t)
    # two-sided p of Student's t with 3 dof, closed form: 1 - I(3/(3+t^2); 1.5, 0.5) ...
    # checked here through the symmetric t CDF of scipy's independent distribution object
    from scipy.stats import t as student
    assert res['p'] == pytest.approx(2 * student.sf(abs(t), 3))
    assert math.isnan(paired_ttest({0: 1.}, {0: 2.})['p'])
