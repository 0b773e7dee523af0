"""Two-process DDP training on CPU through ``tools/dist_train.sh``.

1. Mask R-CNN with ``FLoRAConvNeXtV2(adapter=...)`` (adapters built with the model) and
   ``FLoRAHook(adapter=None)``, whose optimizer is pruned to the trainable parameters.
2. Faster R-CNN with mmdet's ResNet-18, adapted by ``FLoRAHook`` at ``before_run`` (the model
   was wrapped in DDP without adapters: the hook must re-wrap it and rebuild the optimizer).

Both run without ``find_unused_parameters`` (DDP would fail with "Expected to have finished
reduction" if a registered parameter got no gradient) and are checked with the probe hook.
"""
import math
import re
import textwrap

import pytest
import torch

from conftest import load_probe, run_tool

pytestmark = pytest.mark.slow

DET_COMMON = """
custom_imports = dict(imports=['flora_mm', 'flora_probe_hook'], allow_failed_imports=False)
classes = ('sports ball', 'kite', 'tv')
train_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset', data_root='{data}/coco/', metainfo=dict(classes=classes),
        ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
            dict(type='Resize', scale=(64, 64), keep_ratio=True),
            dict(type='RandomFlip', prob=0.),
            dict(type='PackDetInputs')]))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=10, val_interval=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.005, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3)]
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=1000, by_epoch=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
"""

MASK_RCNN = """
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
model = dict(
    backbone=dict(_delete_=True, type='flora_mm.FLoRAConvNeXtV2', arch='atto',
                  pretrained='{atto}',
                  adapter=dict(type='FLoRA', rank=4, kernel_rank=1, scale=4.0)),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3)))
custom_hooks = [dict(type='flora_mm.FLoRAHook'), dict(type='FLoRAProbeHook', out_dir='{out}')]
"""

FASTER_RCNN_R18 = """
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
model = dict(
    backbone=dict(depth=18, init_cfg=dict(type='Pretrained', checkpoint='{resnet18}')),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3)))
custom_hooks = [
    dict(type='flora_mm.FLoRAHook',
         adapter=dict(type='FLoRA', rank=4, kernel_rank=1, scale=4.0,
                      targets=[r'backbone\\.layer\\d\\.\\d+\\.conv\\d']),
         trainable=['neck', 'rpn_head', 'roi_head']),
    dict(type='FLoRAProbeHook', out_dir='{out}')]
"""


def _write(tmp_path, body, **fmt):
    path = tmp_path / 'cfg.py'
    path.write_text(textwrap.dedent(body + DET_COMMON).format(**fmt))
    return path


def _check_ddp_run(work_dir):
    probes = [load_probe(work_dir, r) for r in (0, 1)]
    for probe in probes:
        info = probe['info']
        assert info['world_size'] == 2
        assert info['wrapper'] == 'MMDistributedDataParallel'
        assert info['find_unused_parameters'] is False
        assert info['device_ids'] is None  # CPU DDP
        assert info['optimizer'] == info['trainable'] and info['trainable']
        assert info['scheduler_optimizer_ok']
        losses = [info['losses'][i] for i in sorted(info['losses'])]
        assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
        frozen = [n for n in probe['before'] if n not in set(info['trainable'])]
        assert frozen
        for name in frozen:
            assert torch.equal(probe['before'][name], probe['after'][name]), name
        # every trainable tensor is updated (a 1x1 spatial factor of a 1x1 conv is a scalar
        # redundant with the core; its update can vanish in fp32 rounding)
        still = [n for n in info['trainable'] if probe['before'][n].numel() > 1
                 and torch.equal(probe['before'][n], probe['after'][n])]
        assert not still, still
    # the loss drops (averaged over both ranks to smooth the per-image noise)
    mean = [sum(p['info']['losses'][i] for p in probes) / 2 for i in range(10)]
    assert sum(mean[-3:]) < sum(mean[:3]), mean
    # both ranks end with the same weights, adapters included
    assert probes[0]['info']['trainable'] == probes[1]['info']['trainable']
    for name, value in probes[0]['after'].items():
        assert torch.equal(value, probes[1]['after'][name]), name
    return probes


def test_dist_train_backbone_with_adapter(tmp_path, tiny_data, pretrained):
    cfg = _write(tmp_path, MASK_RCNN, data=tiny_data, atto=pretrained['atto'], out=tmp_path,
                 with_mask=True)
    run_tool(['tools/dist_train.sh', cfg, 2, '--work-dir', tmp_path / 'work'])
    probes = _check_ddp_run(tmp_path)
    info = probes[0]['info']
    backbone = [n for n in info['trainable'] if n.startswith('backbone.')]
    out_norm = re.compile(r'backbone\.norm\d\.')  # the output norms train in every method
    assert backbone and all('.flora_' in n or out_norm.match(n) for n in backbone)
    assert any('.flora_' in n for n in backbone)
    assert any(n.startswith('roi_head.mask_head.') for n in info['trainable'])
    # the frozen backbone is exactly the local pretrained file
    state = torch.load(pretrained['atto'], weights_only=True)
    for name, value in probes[0]['after'].items():
        if name.startswith('backbone.') and '.flora_' not in name and not out_norm.match(name):
            assert torch.equal(value, state[name[len('backbone.'):]]), name


def test_dist_train_hook_adapts_plain_resnet(tmp_path, tiny_data, pretrained):
    cfg = _write(tmp_path, FASTER_RCNN_R18, data=tiny_data, resnet18=pretrained['resnet18'],
                 out=tmp_path, with_mask=False)
    proc = run_tool(['tools/dist_train.sh', cfg, 2, '--work-dir', tmp_path / 'work'])
    log = proc.stdout + proc.stderr
    assert 're-wrapped the model in MMDistributedDataParallel' in log
    assert 'rebuilt the optimizer wrapper' in log
    assert '% trainable' in log and 'roi_head' in log  # the parameter table
    probes = _check_ddp_run(tmp_path)
    info = probes[0]['info']
    adapters = [n for n in info['trainable'] if '.flora_' in n]
    # layer1 is re-frozen by mmdet's ResNet (frozen_stages=1) in every train() call: its
    # adapters are reported and left out; layers 2-4 (2 blocks x 2 convs each) are trained
    assert {n.split('.')[1] for n in adapters} == {'layer2', 'layer3', 'layer4'}
    assert len({n.rsplit('.flora_', 1)[0] for n in adapters}) == 12
    assert 're-frozen' in log and 'backbone.layer1.0.conv1.flora_core' in log
    assert not any(n.startswith('backbone.') and '.flora_' not in n for n in info['trainable'])
    # frozen ResNet weights are the pretrained file (init_cfg ran after the hook's injection)
    state = torch.load(pretrained['resnet18'], weights_only=True)['state_dict']
    for name, value in probes[0]['after'].items():
        if name.startswith('backbone.') and '.flora_' not in name:
            assert torch.equal(value, state[name[len('backbone.'):]]), name
