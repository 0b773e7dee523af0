"""Parameter counting and equal-budget rank solving."""
import pytest
import torch.nn as nn

from flora_mm.adapters import count_adapter_params, inject_adapters, solve_rank


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.Conv2d(32, 32, 7, groups=32),
                         nn.Conv2d(32, 64, 3), nn.Flatten(1), nn.Linear(64, 128),
                         nn.Linear(128, 10))


def _count(cfg):
    model = _model()
    inject_adapters(model, cfg)
    return count_adapter_params(model)['total']


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
@pytest.mark.parametrize('budget', [500, 3000, 12345])
def test_solve_rank_is_closest_among_neighbours(method, budget):
    model = _model()
    cfg = {'type': method, 'rank': 999}
    rank = solve_rank(model, cfg, budget)
    assert count_adapter_params(model)['total'] == 0  # not modified
    gap = abs(_count({**cfg, 'rank': rank}) - budget)
    for other in (rank - 1, rank + 1):
        if other >= 1:
            assert gap <= abs(_count({**cfg, 'rank': other}) - budget)


def test_equal_budget_and_rank_pattern():
    model = _model()
    flora = _count({'type': 'FLoRA', 'rank': 8, 'kernel_rank': 2})
    rank = solve_rank(model, {'type': 'LoRA', 'rank': 1}, flora)
    lora = _count({'type': 'LoRA', 'rank': rank})
    assert abs(lora - flora) / flora < 0.2
    cfg = {'type': 'LoRA', 'rank': 1, 'rank_pattern': {'5': 4}}  # pinned layer keeps rank 4
    rank = solve_rank(model, cfg, 2000)
    assert abs(_count({**cfg, 'rank': rank}) - 2000) <= abs(_count({**cfg, 'rank': rank + 1})
                                                            - 2000)


def test_counts():
    model = _model()
    inject_adapters(model, {'type': 'LoRA', 'rank': 2, 'targets': ['4']})
    counts = count_adapter_params(model)
    assert counts['per_layer'] == {'4': 2 * 64 + 128 * 2}
    assert counts['total'] == 384
    assert counts['model_total'] == sum(p.numel() for p in model.parameters())
    assert counts['trainable'] == counts['model_total'] - 64 * 128 - 128


def test_policy_methods_have_no_rank():
    with pytest.raises(ValueError, match='BitFit'):
        solve_rank(_model(), {'type': 'BitFit'}, 100)
