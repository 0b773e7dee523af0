"""Every config under configs/ builds: model (ConvNeXt-V2-atto instead of -L), datasets
(lazily, no files needed), optimizer; and each method trains exactly what it should.

Trainable parameters must be: the adapter parameters reported by ``count_adapter_params`` (and
re-derived from the weight shapes with ``layer_param_count``) for FLoRA / LoRA / DoRA, the
backbone biases for BitFit, the whole backbone for full fine-tuning, nothing of the backbone
for the frozen base; plus, always, every parameter of the neck and heads.
"""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, MODELS, init_default_scope

import flora_mm  # noqa: F401  (registers flora_mm's modules, compat fixes)
from flora_mm.adapters import count_adapter_params, layer_param_count, parse_adapter_cfg, \
    select_layers

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True)
    if '_base_' not in p and 'internvit' not in p)  # Table 2: test_internvit_configs.py
ATTO_CHANNELS = [40, 80, 160, 320]
# The paper's layer set, "all weight matrices or tensors" (Sec. 5.2), as the configs named it
# before they relied on the default `targets`: stem, downsampling convs, 7x7 depthwise convs,
# MLP linears.
PAPER_LAYERS = [r'stem\.0', r'stages\.\d+\.downsample\.1', r'.*\.conv_dw', r'.*\.mlp\.fc[12]']


def test_config_set_is_complete():
    """Table 1 (3 tasks x FLoRA/LoRA/DoRA at 3 budgets, BitFit, full FT, frozen base) and the
    Fig. 3 / Fig. 5 sweeps, the demos and the fidelity experiment's configs are all there."""
    names = [osp.basename(c) for c in CONFIGS]
    for task in ('mask-rcnn_', 'upernet_', 'oriented-rcnn-le90_'):
        for method in ('flora', 'lora', 'dora'):
            assert sum(n.startswith(task) and f'-{method}-r' in n and '-s0' not in n
                       and '-k1' not in n and 'atto' not in n for n in names) >= 3, (task, method)
        for method in ('bitfit', 'full', 'frozen'):
            assert sum(n.startswith(task) and f'-{method}_' in n for n in names) == 1
    assert sum('-s0.' in n for n in names) == 2
    assert len([c for c in CONFIGS if c.startswith('configs/demo/')]) == 3
    assert len([c for c in CONFIGS if c.startswith('configs/fidelity/')]) == 2


def _small(cfg: Config) -> None:
    """Swap ConvNeXt-V2-L for atto (channels of the neck / heads follow), no weights file."""
    backbone = cfg.model.backbone
    backbone.update(arch='atto', pretrained=None)
    if 'neck' in cfg.model:
        cfg.model.neck.in_channels = ATTO_CHANNELS
    if 'decode_head' in cfg.model:
        cfg.model.decode_head.in_channels = ATTO_CHANNELS
        cfg.model.auxiliary_head.in_channels = ATTO_CHANNELS[2]


def _expected_backbone_trainable(backbone: torch.nn.Module, adapter: dict) -> int:
    method = adapter['type'] if adapter else 'Full'
    if method in ('FLoRA', 'LoRA', 'DoRA'):
        counts = count_adapter_params(backbone)
        targets = adapter.get('targets') or PAPER_LAYERS
        layers = [n for n, m in backbone.named_modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                  and any(re.fullmatch(t, n) for t in targets)]
        # every conv / linear of ConvNeXt-V2 is targeted: stem, 3 downsamples, 3 per block
        assert sorted(counts['per_layer']) == sorted(layers)
        assert len(layers) == 1 + 3 + 3 * sum(backbone.depths)
        analytic = sum(
            layer_param_count(tuple(backbone.get_submodule(n).weight.shape), method,
                              adapter['rank'], adapter.get('kernel_rank', 1)) for n in layers)
        assert counts['total'] == analytic
        return counts['total']
    if method == 'BitFit':
        return sum(p.numel() for n, p in backbone.named_parameters() if n.endswith('bias'))
    if method == 'Full':
        return sum(p.numel() for p in backbone.parameters())
    assert method == 'Frozen'
    return 0


@pytest.mark.parametrize('arch', ['atto', 'large'])
def test_default_targets_are_the_paper_layers(arch):
    """An adapter without ``targets`` selects exactly the paper's layers on the real archs."""
    import timm
    with torch.device('meta'):  # ConvNeXt-V2-L's 196M weights, without allocating them
        net = timm.create_model(f'convnextv2_{arch}', num_classes=0)
    backbone = torch.nn.ModuleDict(dict(stem=net.stem, stages=net.stages))
    spec = parse_adapter_cfg(dict(type='FLoRA', rank=1))
    default = [p.name for p in select_layers(backbone, spec)]
    spec.targets = PAPER_LAYERS
    assert default == [p.name for p in select_layers(backbone, spec)]
    depths = [len(stage.blocks) for stage in net.stages]
    assert len(default) == 1 + 3 + 3 * sum(depths)


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds(config):
    cfg = Config.fromfile(osp.join(ROOT, config))
    assert cfg.custom_imports == dict(imports=['flora_mm'], allow_failed_imports=False)
    assert cfg.model.backbone.type == 'flora_mm.FLoRAConvNeXtV2'
    if config.startswith(('configs/demo/', 'configs/fidelity/')):
        assert cfg.model.backbone.arch == 'atto'
        cfg.model.backbone.pretrained = None  # the fidelity tool generates its weights
    else:
        assert cfg.model.backbone.arch == 'large'
        _small(cfg)
    init_default_scope(cfg.default_scope)

    model = MODELS.build(cfg.model)
    adapter = cfg.model.backbone.get('adapter')
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    others = [(n, p) for n, p in model.named_parameters() if not n.startswith('backbone.')]
    assert all(n in trainable for n, _ in others), 'neck and heads must train'
    backbone_trainable = sum(p.numel() for n, p in model.backbone.named_parameters()
                             if p.requires_grad)
    assert backbone_trainable == _expected_backbone_trainable(model.backbone, adapter)

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = DATASETS.build({**cfg[loader].dataset, 'lazy_init': True})
        assert len(dataset.pipeline.transforms) >= 3

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    in_optimizer = {id(p) for group in optim_wrapper.optimizer.param_groups
                    for p in group['params']}
    assert {id(p) for p in model.parameters() if p.requires_grad} <= in_optimizer
