"""Table 2 (InternViT-6B + UperNet on ADE20K): the nine configs, their ranks recomputed on the
real 6B architecture (meta device), a forward / backward of each with the tiny preset, the
sharded strategy they select, and the memory-on-paper arithmetic."""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, FUNCTIONS, MODELS, init_default_scope

import flora_mm  # noqa: F401  (registers flora_mm's modules, compat fixes)
from flora_mm.adapters import count_adapter_params, layer_param_count
from flora_mm.analysis import table2

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '*', 'upernet-internvit',
                                                     '*.py')))
TINY = 64


def _column(config):
    """(method, rank or None) from a config file name."""
    name = osp.basename(config)
    match = re.search(r'-(flora|lora|dora)-r(\d+)_', name)
    if match:
        return {'flora': 'FLoRA', 'lora': 'LoRA', 'dora': 'DoRA'}[match[1]], int(match[2])
    return re.search(r'-(frozen|full|bitfit)_', name)[1].capitalize().replace('Bitfit',
                                                                                  'BitFit'), None


@pytest.mark.slow
def test_nine_columns_with_ranks_solved_on_the_6b():
    assert len(CONFIGS) == 9
    ranks = table2.solve_ranks(table2.build_backbone('6b'))  # meta device: nothing allocated
    found = {}
    for config in CONFIGS:
        cfg = Config.fromfile(osp.join(ROOT, config))
        backbone = cfg.model.backbone
        assert (backbone.type, backbone.arch, backbone.img_size) == (
            'flora_mm.FLoRAInternViT', '6b', 504)
        method, rank = _column(config)
        adapter = backbone.adapter
        assert adapter.type == method
        if rank is not None:
            assert adapter.rank == rank
            found[method] = found.get(method, []) + [rank]
            if method == 'FLoRA':
                assert adapter.scale in (0.04, 0.4, 4)
            else:
                assert adapter.alpha == rank
    expected = {}
    for key, rank in ranks.items():
        method = {'flora': 'FLoRA', 'lora': 'LoRA', 'dora': 'DoRA'}[key.split('-')[0]]
        expected.setdefault(method, []).append(rank)
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in
                                                        expected.items()}


@pytest.mark.slow
def test_budgets_against_layer_shapes():
    """The adapter counts of the 6B columns, re-derived from the 192 weight shapes."""
    rows = {(r['method'], r['percent']): r for r in table2.column_counts()}
    shapes = [(3 * 3200, 3200), (3200, 3200), (4 * 3200, 3200), (3200, 4 * 3200)] * 48
    for (method, percent), row in rows.items():
        if method in ('LoRA', 'DoRA', 'FLoRA'):
            assert row['backbone_trainable'] == sum(
                layer_param_count(s, method, row['rank']) for s in shapes)
            # within one rank step of the paper's share of 5.906B
            step = sum(layer_param_count(s, method, row['rank'] + 1) for s in shapes) - row[
                'backbone_trainable']
            assert abs(row['backbone_trainable'] - percent / 100 * row['vit_total']) <= step
    assert rows[('BitFit', 0.15)]['backbone_trainable'] == 48 * (3200 + 4 * 3200 + 3200) + 3200
    assert rows[('Full', 100.)]['backbone_trainable'] == rows[('Full', 100.)]['vit_total']


def test_memory_on_paper():
    row = dict(method='Full', vit_total=6_000_000_000, backbone_trainable=6_000_000_000,
               pyramid=0)
    ddp = table2.memory_per_gpu(row, gpus=8, strategy='ddp')
    # DDP, fp32: weights + gradients + two AdamW moments = 16 bytes per parameter per GPU
    assert ddp['params'] + ddp['grads'] + ddp['optimizer'] == pytest.approx(16 * 6e9 / 2**30)
    fsdp = table2.memory_per_gpu(row, gpus=8, strategy='fsdp')
    shard = 16 * 6e9 / 8 / 2**30
    unit = 6e9 / 48
    assert fsdp['params'] + fsdp['grads'] + fsdp['optimizer'] == pytest.approx(
        shard + (2 * 2 * unit + 4 * unit) / 2**30)
    frozen = table2.memory_per_gpu(dict(row, method='Frozen', backbone_trainable=0),
                                   strategy='fsdp')
    assert frozen['grads'] == 0 and frozen['optimizer'] == 0


def _tiny(cfg):
    backbone = cfg.model.backbone
    backbone.update(arch='tiny', img_size=56, out_indices=(0, 1, 2, 3), pretrained=None,
                    with_cp=False)
    bn = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (56, 56)
    cfg.model.decode_head.update(in_channels=[TINY] * 4, channels=16, norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=TINY, channels=16, norm_cfg=bn)


@pytest.mark.parametrize('config', [  # the fast lane trains the FLoRA r8 column
    c if '-flora-r8_' in c else pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS])
def test_config_builds_and_trains_tiny(config):
    cfg = Config.fromfile(osp.join(ROOT, config))
    assert cfg.runner_type == 'FlexibleRunner' and cfg.strategy.type == 'FSDPStrategy'
    assert cfg.custom_hooks == [dict(type='flora_mm.AdapterCheckpointHook')]
    policy = cfg.strategy.model_wrapper.auto_wrap_policy
    assert FUNCTIONS.get(policy.type) is flora_mm.engine.class_name_wrap_policy
    _tiny(cfg)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    method, rank = _column(config)
    backbone = model.backbone
    vit = {n: p for n, p in backbone.named_parameters() if not n.startswith('up')}
    trainable_vit = {n for n, p in vit.items() if p.requires_grad}
    if method in ('LoRA', 'DoRA', 'FLoRA'):
        counts = count_adapter_params(backbone)
        assert len(counts['per_layer']) == 4 * 4  # qkv, proj, fc1, fc2 of the 4 blocks
        assert sum(vit[n].numel() for n in trainable_vit) == counts['total']
    elif method == 'BitFit':
        assert trainable_vit == {n for n in vit if n.endswith('.bias')}
    elif method == 'Full':
        assert trainable_vit == set(vit)
    else:
        assert not trainable_vit
    others = [p for n, p in model.named_parameters()
              if not n.startswith('backbone.') or n.startswith('backbone.up')]
    assert all(p.requires_grad for p in others), 'pyramid, decode and auxiliary heads train'

    # forward / backward through mmseg's loss on random data: gradients exactly where trained
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 56, 56))))
        s.set_metainfo(dict(img_shape=(56, 56), pad_shape=(56, 56), ori_shape=(56, 56)))
        samples.append(s)
    losses = model.loss(torch.randn(2, 3, 56, 56), samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = optim_wrapper.optimizer.param_groups
    assert {id(p) for g in groups for p in g['params']} == {
        id(p) for p in model.parameters() if p.requires_grad}
    decay = cfg.optim_wrapper.paramwise_cfg.decay_rate
    assert decay == (0.95 if method == 'Full' else 1.0)
    if method == 'Full':  # InternVL's layer decay: block j gets 0.95 ** (depth + 1 - (j + 1))
        scale = {g['layer_id']: g['lr_scale'] for g in groups}
        assert scale[0] == pytest.approx(0.95**5) and scale[1] == pytest.approx(0.95**4)
        assert scale[5] == 1.0

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = DATASETS.build({**cfg[loader].dataset, 'lazy_init': True})
        assert len(dataset.pipeline.transforms) >= 3
