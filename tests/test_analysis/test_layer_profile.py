"""The per-layer profile on a small model: input shapes as a forward sees them, groups by
geometry and input, variants that are the layer they claim (checked against the base layer
and each other), the auto mode the layer itself would take, totals that add up. No timing
assertions."""
import math

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import inject_adapters
from flora_mm.analysis import layer_profile


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dws = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1, groups=8) for _ in range(3))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        for i, dw in enumerate(self.dws):
            x = x + dw(x)
            if i == 0:  # as ConvNeXt's blocks hand on their NHWC-computed outputs
                x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


FLORA = dict(method='FLoRA', rank=4, kernel_rank=2, scale=2.0)
LORA = dict(method='LoRA', rank=4, scale=1.0)


@pytest.fixture
def adapted():
    torch.manual_seed(0)
    net = Net()
    inject_adapters(net, dict(type='FLoRA', rank=4, kernel_rank=2, scale=2.0))
    return net


def test_layer_inputs_and_groups(adapted):
    shapes = layer_profile.layer_inputs(adapted, torch.randn(2, 3, 16, 16))
    nchw, nhwc = 'contiguous', 'channels_last'
    assert shapes == {'stem': ((2, 3, 16, 16), nchw), 'dws.0': ((2, 8, 8, 8), nchw),
                      'dws.1': ((2, 8, 8, 8), nhwc), 'dws.2': ((2, 8, 8, 8), nhwc),
                      'head': ((2, 8), nchw)}
    groups = layer_profile.group_layers(adapted, shapes)
    assert [g['names'] for g in groups] == [['stem'], ['dws.0'], ['dws.1', 'dws.2'], ['head']]
    assert layer_profile.method_of(adapted) == FLORA


def test_variants_compute_their_method(adapted):
    layer = adapted.dws[0]
    base = layer_profile.plain_copy(layer)
    assert type(base) is nn.Conv2d and not any(p.requires_grad for p in base.parameters())
    assert torch.equal(base.weight, layer.weight)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    base = base.double()
    for method in (FLORA, LORA):
        outs = {}
        for mode in ('auto', 'factorized', 'merged'):
            var = layer_profile.variant(base, method, mode).double()
            assert var.adapter_type == method['method'] and var.forward_mode == mode
            delta = var.delta_weight()
            assert delta.abs().max() > 0  # adapters are non-zero: the branch does real work
            expected = nn.functional.conv2d(x, base.weight + delta, base.bias, padding=1,
                                            groups=8)
            outs[mode] = var(x)
            torch.testing.assert_close(outs[mode], expected)
        with torch.enable_grad():
            chosen = layer_profile.auto_choice(var, x.requires_grad_(True))
            assert chosen == ('factorized' if var._use_factorized(x) else 'merged')
    # the base of every variant is the frozen layer, untouched
    assert torch.equal(layer_profile.variant(base, None).weight, base.weight)


def test_profile_rows_and_totals(adapted):
    shapes = layer_profile.layer_inputs(adapted, torch.randn(2, 3, 16, 16))
    rows = layer_profile.profile_groups(layer_profile.group_layers(adapted, shapes),
                                        {'FLoRA': FLORA, 'LoRA': LORA}, repeats=2, warmup=0)
    assert [row['count'] for row in rows] == [1, 1, 2, 1]
    assert rows[2]['weight_shape'] == [8, 1, 3, 3] and rows[2]['input_shape'] == [2, 8, 8, 8]
    assert rows[2]['memory_format'] == 'channels_last'
    keys = {'limit'} | {f'{m}/{mode}' for m in ('FLoRA', 'LoRA')
                        for mode in ('auto', 'factorized', 'merged')}
    for row in rows:
        assert set(row['ms']) == keys and all(v > 0 for v in row['ms'].values())
        assert set(row['auto'].values()) <= {'factorized', 'merged'}
    total = layer_profile.totals(rows)
    for key in keys:
        assert math.isclose(total[key], sum(r['count'] * r['ms'][key] for r in rows))
    best = sum(r['count'] * min(r['ms']['FLoRA/factorized'], r['ms']['FLoRA/merged'])
               for r in rows)
    assert math.isclose(total['FLoRA/best'], best)
    table = layer_profile.format_profile(rows, ['FLoRA', 'LoRA'])
    assert 'dws.1 ...' in table and '2x8x8x8 NHWC' in table and f'{total["limit"]:.0f}' in table


def test_backbone_steps_interleaved_and_clean(adapted):
    lora = Net()
    inject_adapters(lora, dict(type='LoRA', rank=4))

    class Outputs(nn.Module):  # a backbone returns a tuple of feature maps
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return (self.net(x),)

    models = {'FLoRA': Outputs(adapted), 'LoRA': Outputs(lora)}
    steps = layer_profile.backbone_steps(models, torch.randn(2, 3, 16, 16), repeats=3)
    assert {k: len(v) for k, v in steps.items()} == {'FLoRA': 3, 'LoRA': 3}
    assert all(t > 0 for v in steps.values() for t in v)
    assert all(p.grad is None for m in models.values() for p in m.parameters())
    text = layer_profile.format_steps({'limit': [1.5], 'FLoRA': [2.0, 3.0, 4.0],
                                       'LoRA': [1.0, 2.0, 2.0]})
    assert 'FLoRA: 3.00 s median of 3 (2.000x limit, 1.500x LoRA)' in text
    # the limit's input requires grad, the others' not
    seen = {}
    for label, model in models.items():
        model.register_forward_pre_hook(
            lambda _, args, label=label: seen.__setitem__(label, args[0].requires_grad))
    layer_profile.backbone_steps({'limit': models['LoRA'], 'FLoRA': models['FLoRA']},
                                 torch.randn(2, 3, 16, 16), repeats=1)
    assert seen == {'LoRA': True, 'FLoRA': False}


def test_interleaved_rotates_rounds_and_drops_warmup():
    calls = []

    def run(label):
        calls.append(label)
        return float(len(calls))  # the call's position stands in for its time

    samples = layer_profile.interleaved({k: (lambda k=k: run(k)) for k in 'abc'}, repeats=2,
                                        warmup=1)
    assert calls == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']
    assert samples == {'a': [6.0, 8.0], 'b': [4.0, 9.0], 'c': [5.0, 7.0]}


def test_profile_under_autocast_times_reduced_precision(adapted):
    """``amp``: every timed forward (the groups' variants and whole backbones) runs under
    autocast, as ``--amp`` trains; on the CPU with bfloat16."""
    dtypes = set()
    for module in adapted.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
    shapes = layer_profile.layer_inputs(adapted, torch.randn(2, 3, 16, 16))
    groups = layer_profile.group_layers(adapted, shapes)
    dtypes.clear()
    rows = layer_profile.profile_groups(groups[1:2], {'FLoRA': FLORA}, repeats=1, warmup=0,
                                        device='cpu', amp='bfloat16')
    assert all(v > 0 for v in rows[0]['ms'].values())
    steps = layer_profile.backbone_steps({'FLoRA': adapted}, torch.randn(2, 3, 16, 16),
                                         repeats=1, amp='bfloat16')
    assert len(steps['FLoRA']) == 1
    assert dtypes == {torch.bfloat16}
