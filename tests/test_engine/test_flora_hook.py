"""FLoRAHook and AdapterCheckpointHook with a real mmengine Runner on a toy model (fast)."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel, BaseModule
from mmengine.registry import DATASETS, MODELS
from mmengine.runner import Runner
from torch.utils.data import Dataset

import flora_mm  # noqa: F401
from flora_mm.adapters import adapt_model, count_adapter_params
from flora_mm.engine.checkpoint import fill_frozen, is_adapter_only, strip_frozen
from flora_mm.engine.hooks import FLoRAHook

ADAPTER = dict(type='FLoRA', rank=2, kernel_rank=1, scale=1.0,
               targets=[r'backbone\.conv\d'])


class ToyBackbone(BaseModule):

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


@MODELS.register_module(force=True)
class ToyFLoRAModel(BaseModel):

    def __init__(self, pretrained=None):
        super().__init__()
        self.backbone = ToyBackbone(
            init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None)
        self.head = nn.Linear(8, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.head(self.backbone(torch.stack(inputs)).mean((2, 3)))[:, 0]
        if mode == 'loss':
            return dict(loss=((out - torch.stack(data_samples))**2).mean())
        return out


@DATASETS.register_module(force=True)
class ToyFLoRADataset(Dataset):

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = self.x.mean((1, 2, 3)) * 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / 'toy_backbone.pth'
    torch.save({'state_dict': ToyBackbone().state_dict()}, path)
    return str(path)


def _cfg(tmp_path, pretrained, hooks, max_iters=2, **extra):
    return dict(
        model=dict(type='ToyFLoRAModel', pretrained=pretrained),
        work_dir=str(tmp_path / 'work'),
        train_dataloader=dict(dataset=dict(type='ToyFLoRADataset'), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              num_workers=0),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1,
                                                               momentum=0.9)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                              end=4)],
        auto_scale_lr=dict(enable=True, base_batch_size=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=max_iters,
                                           by_epoch=False)),
        log_processor=dict(by_epoch=False),
        custom_hooks=hooks if isinstance(hooks, list) else [hooks],
        randomness=dict(seed=0),
        experiment_name=f'toy_{tmp_path.name}',
        **extra)


def test_hook_injects_freezes_and_rebuilds_optimizer(tmp_path, pretrained):
    hook = dict(type='flora_mm.FLoRAHook', adapter=ADAPTER, trainable=['head'])
    runner = Runner.from_cfg(_cfg(tmp_path, pretrained, hook))
    base = {k: v.clone() for k, v in torch.load(pretrained)['state_dict'].items()}
    runner.train()
    model = runner.model
    assert sorted(count_adapter_params(model)['per_layer']) == ['backbone.conv1',
                                                                'backbone.conv2']
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if '.flora_' in n or n.startswith('head.')}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = runner.optim_wrapper.optimizer.param_groups
    assert {names[id(p)] for g in groups for p in g['params']} == trainable
    # auto_scale_lr (x2) applied once to the rebuilt optimizer, then the schedulers rebuilt
    assert [g['initial_lr'] for g in groups] == [pytest.approx(0.2)]
    assert runner.param_schedulers[0].optimizer is runner.optim_wrapper
    # frozen base = pretrained file (init_cfg ran after injection), untouched by training
    for key, value in base.items():
        if key.endswith(('weight', 'bias')):
            assert torch.equal(model.state_dict()[f'backbone.{key}'], value), key


def test_hook_without_adapter_or_trainable_changes_nothing(tmp_path, pretrained):
    runner = Runner.from_cfg(_cfg(tmp_path, pretrained, dict(type='flora_mm.FLoRAHook')))
    runner.train()
    assert all(p.requires_grad for p in runner.model.parameters())
    assert not count_adapter_params(runner.model)['per_layer']


@pytest.mark.parametrize('spelling', ['AdapterCheckpointHook', 'FLoRAHook argument'])
def test_adapter_only_checkpoint_at_test_time_uses_init_cfg_base(tmp_path, pretrained,
                                                                 spelling):
    hook = dict(type='flora_mm.FLoRAHook', adapter=ADAPTER, trainable=['head'])
    if spelling == 'AdapterCheckpointHook':
        hooks = [hook, dict(type='flora_mm.AdapterCheckpointHook')]
    else:  # the former spelling, kept for existing configs
        hooks = [dict(hook, adapter_only_checkpoint=True)]
    runner = Runner.from_cfg(_cfg(tmp_path, pretrained, hooks))
    runner.train()
    trained = {k: v.clone() for k, v in runner.model.state_dict().items()}
    ckpt = torch.load(tmp_path / 'work' / 'iter_2.pth', weights_only=False)
    assert is_adapter_only(ckpt)
    assert set(ckpt['meta']['flora_mm']['dropped_keys']) == {
        'backbone.conv1.weight', 'backbone.conv1.bias', 'backbone.bn.weight',
        'backbone.bn.bias', 'backbone.conv2.weight', 'backbone.conv2.bias'}
    assert 'backbone.bn.running_mean' in ckpt['state_dict']  # buffers are kept
    # test()'s order: before_run (injection) then load_or_resume; no init_weights by the runner
    cfg = _cfg(tmp_path / 'eval', pretrained, hooks, load_from=str(tmp_path / 'work' /
                                                                     'iter_2.pth'))
    tester = Runner.from_cfg(cfg)
    tester.call_hook('before_run')
    tester.load_or_resume()
    for key, value in trained.items():
        assert torch.equal(tester.model.state_dict()[key], value), key


def test_checkpoint_hook_priority_is_a_class_attribute(tmp_path, pretrained):
    hooks = [dict(type='flora_mm.FLoRAHook'), dict(type='flora_mm.AdapterCheckpointHook')]
    runner = Runner.from_cfg(_cfg(tmp_path, pretrained, hooks))
    ours = [h for h in runner.hooks if type(h).__name__ in ('FLoRAHook', 'AdapterCheckpointHook')]
    assert [h.priority for h in ours] == ['VERY_HIGH', 'VERY_HIGH']


def test_strip_and_fill_roundtrip():
    model = ToyFLoRAModel()
    adapt_model(model, ADAPTER, trainable=['head'])
    ckpt = {'meta': {}, 'state_dict': copy.deepcopy(model.state_dict())}
    dropped = strip_frozen(ckpt, model)
    assert 'backbone.conv1.weight' in dropped and 'head.weight' not in dropped
    assert not set(dropped) & set(ckpt['state_dict'])
    fresh = ToyFLoRAModel()
    adapt_model(fresh, ADAPTER, trainable=['head'])
    fresh.load_state_dict(model.state_dict())
    assert fill_frozen(ckpt, fresh) == []
    assert sorted(ckpt['state_dict']) == sorted(model.state_dict())


def test_bad_trainable_regex():
    with pytest.raises(ValueError, match='trainable regex'):
        FLoRAHook(trainable=['(unclosed'])


@pytest.mark.parametrize('adapter', [None, dict(type='LoRA', rank=2, targets=[r'head'])])
def test_hook_keeps_backbone_output_norms_trainable(adapter):
    """The hook's freeze (adapt_model) keeps what FLoRAConvNeXtV2 keeps trainable under every
    policy (its output norms), and the parameter table counts them in the backbone row."""
    from flora_mm.adapters import param_table
    from flora_mm.models import FLoRAConvNeXtV2
    model = nn.Module()
    model.backbone = FLoRAConvNeXtV2(arch='atto', out_indices=(2, 3),
                                     adapter=dict(type='FLoRA', rank=2))
    model.head = nn.Linear(320, 1)
    norms = sum(p.numel() for n, p in model.backbone.named_parameters() if n.startswith('norm'))
    assert norms == 2 * (160 + 320)
    report = adapt_model(model, adapter, ['head'])
    assert report.scales == ([1.0] if adapter else [])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {'backbone.norm2.weight', 'backbone.norm2.bias', 'backbone.norm3.weight',
            'backbone.norm3.bias', 'head.weight', 'head.bias'} <= trainable
    row = next(line.split() for line in param_table(model).splitlines()
               if line.startswith('backbone'))
    adapters = count_adapter_params(model.backbone)['total']
    assert row[2] == f'{adapters + norms:,}'
