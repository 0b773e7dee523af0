"""adapt_model: inject where no adapter exists, freeze, settle train(), report."""
import pytest
import torch.nn as nn

from flora_mm.adapters import adapt_model, adapter_layers, inject_adapters, param_table

FLORA = dict(type='FLoRA', rank=2, kernel_rank=1, scale=1.0)


class Net(nn.Module):

    def __init__(self, refreeze=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 2)
        self.refreeze = refreeze

    def train(self, mode=True):
        super().train(mode)
        if self.refreeze:  # like mmdet ResNet's frozen_stages
            for p in self.body[0].parameters():
                p.requires_grad_(False)
        return self


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_injects_freezes_and_reports():
    model = Net()
    report = adapt_model(model, FLORA, trainable=['head'])
    assert report.method == 'FLoRA' and report.injected == ['body.0', 'body.2', 'head']
    assert report.existing == [] and report.refrozen == [] and report.changed
    trainable = _trainable(model)
    assert trainable == {n for n, _ in model.named_parameters()
                         if '.flora_' in n or n.startswith('head.')}
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.scales == [FLORA['scale']]
    assert report.summary() == (f'FLoRA injected into 3 layers (scale {FLORA["scale"]:g}); '
                                f'{report.trainable:,} of {report.total:,} parameters trainable')


def test_existing_adapters_are_kept():
    model = Net()
    inject_adapters(model, dict(FLORA, targets=[r'body\.0']))
    first = adapter_layers(model)['body.0']
    core = first.flora_core
    report = adapt_model(model, dict(FLORA, rank=3), trainable=())
    assert report.existing == ['body.0'] and report.injected == ['body.2', 'head']
    assert adapter_layers(model)['body.0'] is first and first.flora_core is core
    assert '(1 were adapted already)' in report.summary()


def test_refrozen_parameters_are_reported():
    model = Net(refreeze=True)
    report = adapt_model(model, FLORA)
    assert report.refrozen == ['body.0.flora_core', 'body.0.flora_factors.0',
                               'body.0.flora_factors.1', 'body.0.flora_factors.2',
                               'body.0.flora_factors.3']
    assert not any(p.requires_grad for p in model.body[0].parameters())
    assert 're-frozen' in report.refrozen_warning()
    assert 'body.0.flora_core' in report.refrozen_warning()


def test_nothing_to_do_changes_nothing():
    model = Net()
    report = adapt_model(model)
    assert not report.changed and report.method is None and report.injected == []
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert report.refrozen_warning() == ''


def test_trainable_only_keeps_existing_adapters():
    model = Net()
    inject_adapters(model, dict(FLORA, targets=[r'body\.2']))
    report = adapt_model(model, trainable=['head'])
    assert report.changed and report.method is None
    assert _trainable(model) == {n for n, _ in model.named_parameters()
                                 if n.startswith(('body.2.flora_', 'head.'))}


def test_policy_and_errors():
    model = Net()
    report = adapt_model(model, dict(type='BitFit'))
    assert _trainable(model) == {'body.0.bias', 'body.1.bias', 'body.2.bias', 'head.bias'}
    assert report.summary().startswith('BitFit freeze policy (nothing injected)')
    with pytest.raises(ValueError, match='matches no parameter or module'):
        adapt_model(Net(), FLORA, trainable=['neck'])


def test_param_table_numbers():
    model = Net()
    report = adapt_model(model, FLORA, trainable=['head'])
    rows = {line.split()[0]: line.split()[1:] for line in param_table(model).splitlines()
            if not line.startswith('-')}
    body_adapter = sum(p.numel() for n, p in model.body.named_parameters() if '.flora_' in n)
    body_total = sum(p.numel() for p in model.body.parameters())
    adapter = sum(p.numel() for n, p in model.named_parameters() if '.flora_' in n)
    assert rows['body'][:3] == [f'{body_total:,}', f'{body_adapter:,}', f'{body_adapter:,}']
    assert rows['total'] == [f'{report.total:,}', f'{report.trainable:,}', f'{adapter:,}',
                             f'{100 * report.trainable / report.total:.2f}']
