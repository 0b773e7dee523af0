"""Every config under configs/ builds: model (ConvNeXt-V2-atto instead of -L), datasets
(lazily, no files needed), optimizer; and each method trains exactly what it should.

Trainable parameters must be: the adapter parameters reported by ``count_adapter_params`` (and
re-derived from the weight shapes with ``layer_param_count``) for the adapter methods, the
backbone biases for BitFit, the whole backbone for full fine-tuning, nothing of the backbone
for the frozen base; plus, always, the backbone's output norms and every parameter of the
neck and heads. The neck / decode head receive normalized features; the frozen base runs
deterministically in train mode while every other method keeps its drop path.
"""
import glob
import logging
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, MODELS, init_default_scope

import flora_mm  # noqa: F401  (registers flora_mm's modules, compat fixes)
from flora_mm.adapters import adapter_layers, adapter_method, count_adapter_params, \
    layer_param_count, parse_adapter_cfg, select_layers

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


def _output_norm_params(backbone: torch.nn.Module) -> dict:
    """The LayerNorm of every output stage (official ConvNeXt det / seg names)."""
    params = {n: p for n, p in backbone.named_parameters() if re.fullmatch(r'norm\d\..*', n)}
    assert sorted(params) == sorted(f'norm{i}.{k}' for i in backbone.out_indices
                                    for k in ('weight', 'bias'))
    return params


def _expected_backbone_trainable(backbone: torch.nn.Module, adapter: dict) -> int:
    method = adapter['type'] if adapter else 'Full'
    norms = sum(p.numel() for p in _output_norm_params(backbone).values())
    if method not in ('BitFit', 'Full', 'Frozen'):
        counts = count_adapter_params(backbone)
        targets = adapter.get('targets') or PAPER_LAYERS
        layers = [n for n, m in backbone.named_modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                  and any(re.fullmatch(t, n) for t in targets)]
        # every conv / linear of ConvNeXt-V2 is targeted: stem, 3 downsamples, 3 per block
        assert sorted(counts['per_layer']) == sorted(layers)
        assert len(layers) == 1 + 3 + 3 * sum(backbone.depths)
        options = {k: v for k, v in adapter.items() if k in adapter_method(method).adapter_keys}
        analytic = sum(
            layer_param_count(tuple(backbone.get_submodule(n).weight.shape), method,
                              adapter['rank'], **options) for n in layers)
        assert counts['total'] == analytic
        return counts['total'] + norms
    if method == 'BitFit':
        return sum(p.numel() for n, p in backbone.named_parameters()
                   if n.endswith('bias') or re.fullmatch(r'norm\d\.weight', n))
    if method == 'Full':
        return sum(p.numel() for p in backbone.parameters())
    assert method == 'Frozen'
    return norms


def _check_features(model: torch.nn.Module, drop_path: bool) -> None:
    """What the neck / decode head receives is normalized per position across channels; in
    train mode the frozen base is deterministic, other methods keep their drop path."""
    backbone = model.backbone
    assert all(p.requires_grad for p in _output_norm_params(backbone).values())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        if getattr(model, 'neck', None) is None:  # UperNet: the decode head takes these
            feats = model.extract_feat(x)
        else:  # the FPN's inputs
            seen = []
            handle = model.neck.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            model.extract_feat(x)
            handle.remove()
            feats, = seen
    assert len(feats) == len(backbone.out_indices)
    for feat in feats:
        torch.testing.assert_close(feat.mean(1), torch.zeros_like(feat[:, 0]), rtol=0,
                                   atol=1e-4)
        torch.testing.assert_close(feat.var(1, unbiased=False), torch.ones_like(feat[:, 0]),
                                   rtol=0, atol=1e-3)

    backbone.train()
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(backbone(x))
    same = all(torch.equal(a, b) for a, b in zip(*outs))
    frozen = not any(p.requires_grad for p in backbone.stages.parameters())
    assert all(s.training != frozen for s in backbone.stages)
    assert same == (frozen or not drop_path)


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


# The fast lane builds each task's FLoRA row and the LoRA, BitFit and frozen rows on COCO.
FAST_BUILDS = [osp.join('configs', kind, task, name) for kind, task, name in (
    ('flora', 'mask-rcnn', 'mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'),
    ('flora', 'upernet', 'upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'),
    ('flora', 'oriented-rcnn', 'oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'),
    ('baselines', 'mask-rcnn', 'mask-rcnn_convnextv2-l-lora-r42_fpn_1x_coco.py'),
    ('baselines', 'mask-rcnn', 'mask-rcnn_convnextv2-l-bitfit_fpn_1x_coco.py'),
    ('baselines', 'mask-rcnn', 'mask-rcnn_convnextv2-l-frozen_fpn_1x_coco.py'))]


@pytest.mark.parametrize('config', [
    c if c in FAST_BUILDS else pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS])
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
    _check_features(model, drop_path=cfg.model.backbone.get('drop_path_rate', 0) > 0)
    if adapter and adapter['type'] in ('LoRA', 'DoRA'):  # alpha = rank unless set: scale 1
        assert 'alpha' not in adapter
        assert {layer.adapter_scale for layer in adapter_layers(model.backbone).values()} == {1.}

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg[loader] is None:  # the test-server config trains on train + val, no validation
            continue
        dataset = DATASETS.build({**cfg[loader].dataset, 'lazy_init': True})
        assert len(dataset.pipeline.transforms) >= 3

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    in_optimizer = {id(p) for group in optim_wrapper.optimizer.param_groups
                    for p in group['params']}
    assert {id(p) for p in model.parameters() if p.requires_grad} <= in_optimizer


@pytest.mark.slow
@pytest.mark.parametrize('method', ['lora', 'dora'])
def test_lora_dora_rank_override_keeps_scale_one(method):
    """`--cfg-options model.backbone.adapter.rank=16` on a LoRA / DoRA row: alpha follows the
    rank (scale 1), and the log says so; an explicit alpha still sets the scale."""
    path = osp.join(ROOT, 'configs', 'baselines', 'upernet',
                    f'upernet_convnextv2-l-{method}-r42_8xb2-160k_ade20k-512x512.py')
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        for options, scale in (({'model.backbone.adapter.rank': 16}, 1.),
                               ({'model.backbone.adapter.rank': 16,
                                 'model.backbone.adapter.alpha': 32}, 2.)):
            cfg = Config.fromfile(path)
            cfg.merge_from_dict(options)
            _small(cfg)
            backbone = MODELS.build(cfg.model.backbone)
            layers = adapter_layers(backbone).values()
            assert {(layer.adapter_scale, layer.adapter_config['rank']) for layer in layers} == {
                (scale, 16)}
            assert any(f'(scale {scale:g})' in r for r in records), records
    finally:
        logger.removeHandler(handler)
