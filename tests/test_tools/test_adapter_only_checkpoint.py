"""Adapter-only checkpoints through ``tools/train.py`` / ``tools/test.py`` and merging.

An mmseg FCN on FLoRAConvNeXtV2-atto (deterministic: no dropout, no random augmentation) is
trained three times: A with adapter-only checkpoints (``AdapterCheckpointHook``), B with full
checkpoints (the same config without that hook), C resumed from A's iteration-2 adapter-only
checkpoint.
"""
import glob
import json
import os.path as osp
import textwrap

import pytest
import torch

from conftest import load_probe, run_tool

pytestmark = pytest.mark.slow

SEG = """
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['flora_mm', 'flora_probe_hook'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=(64, 64)),
    backbone=dict(type='flora_mm.FLoRAConvNeXtV2', arch='atto', out_indices=(2, ),
                  pretrained='{atto}',
                  adapter=dict(type='FLoRA', rank=4, kernel_rank=2, scale=4.0)),
    decode_head=dict(type='FCNHead', in_channels=160, in_index=0, channels=32, num_convs=1,
                     concat_input=False, dropout_ratio=0., num_classes=150, norm_cfg=norm_cfg,
                     align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ADE20KDataset', data_root='{data}/ade',
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ADE20KDataset', data_root='{data}/ade',
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'),
                 pipeline=pipeline))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_cfg = dict(type='TestLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=1000)
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.01))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=4)]
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
custom_hooks = [dict(type='FLoRAProbeHook', out_dir='.'),
                dict(type='flora_mm.FLoRAHook'),
                dict(type='flora_mm.AdapterCheckpointHook')]
"""
CHECKPOINT_HOOK = ",\n                dict(type='flora_mm.AdapterCheckpointHook')"


@pytest.fixture(scope='module')
def seg_runs(tmp_path_factory, tiny_data, pretrained):
    root = tmp_path_factory.mktemp('seg')
    cfg, cfg_full = root / 'seg.py', root / 'seg_full.py'
    text = textwrap.dedent(SEG).format(atto=pretrained['atto'], data=tiny_data)
    cfg.write_text(text)
    assert CHECKPOINT_HOOK in text
    cfg_full.write_text(text.replace(CHECKPOINT_HOOK, ''))
    runs = {}
    for name in ('A', 'B', 'C'):
        work = root / name
        args = ['tools/train.py', cfg_full if name == 'B' else cfg, '--work-dir', work]
        if name == 'C':
            args += ['--resume', root / 'A' / 'iter_2.pth']
        run_tool(args + ['--cfg-options', f'custom_hooks.0.out_dir={work}'])
        runs[name] = work
    return cfg, runs


def test_adapter_only_checkpoint_content_and_size(seg_runs):
    _, runs = seg_runs
    small = torch.load(runs['A'] / 'iter_4.pth', weights_only=False)
    full = torch.load(runs['B'] / 'iter_4.pth', weights_only=False)
    meta = small['meta']['flora_mm']
    assert meta['adapter_only'] and 'flora_mm' not in full['meta']
    dropped = set(meta['dropped_keys'])
    assert dropped == set(full['state_dict']) - set(small['state_dict'])
    assert all(k.startswith('backbone.') and '.flora_' not in k for k in dropped)
    assert 'backbone.stem.0.weight' in dropped
    # kept: adapters, the head, BatchNorm buffers; and the training state
    assert any('.flora_core' in k for k in small['state_dict'])
    assert 'decode_head.convs.0.bn.running_mean' in small['state_dict']
    assert {'optimizer', 'param_schedulers', 'message_hub'} <= set(small)
    for key, value in small['state_dict'].items():
        assert torch.equal(value, full['state_dict'][key]), key  # A and B trained identically
    ratio = osp.getsize(runs['A'] / 'iter_4.pth') / osp.getsize(runs['B'] / 'iter_4.pth')
    assert ratio < 0.15, ratio


def test_resume_from_adapter_only_checkpoint_continues_exactly(seg_runs):
    _, runs = seg_runs
    a, c = load_probe(runs['A']), load_probe(runs['C'])
    assert c['info']['start_iter'] == 2
    assert sorted(c['info']['losses']) == [2, 3]
    for it in (2, 3):
        assert c['info']['losses'][it] == pytest.approx(a['info']['losses'][it], rel=1e-6,
                                                        abs=1e-7)
    for name, value in a['after'].items():
        torch.testing.assert_close(c['after'][name], value, rtol=1e-5, atol=1e-7)


def _metrics(work_dir):
    files = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    assert files, f'no metrics json under {work_dir}'
    with open(files[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def test_test_time_adapter_only_matches_full_checkpoint(seg_runs, tmp_path):
    cfg, runs = seg_runs
    results = {}
    for name in ('A', 'B'):
        work = tmp_path / name
        run_tool(['tools/test.py', cfg, runs[name] / 'iter_4.pth', '--work-dir', work])
        results[name] = _metrics(work)
    assert isinstance(results['A']['mIoU'], float)
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert results['A'][key] == results['B'][key], (key, results)


def test_merge_adapters_tool(seg_runs, tmp_path, capsys):
    import importlib.util

    from flora_mm.apis import build_model, load_config
    from flora_mm.apis.merge import plain_model_cfg
    spec = importlib.util.spec_from_file_location(
        'merge_adapters', osp.join(osp.dirname(osp.dirname(osp.dirname(__file__))), 'tools',
                                   'model_converters', 'merge_adapters.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg_path, runs = seg_runs
    out_a, out_b = tmp_path / 'merged_a.pth', tmp_path / 'merged_b.pth'
    assert tool.main([str(cfg_path), str(runs['A'] / 'iter_4.pth'), str(out_a)]) == 0
    assert tool.main([str(cfg_path), str(runs['B'] / 'iter_4.pth'), str(out_b)]) == 0
    merged_a = torch.load(out_a, weights_only=False)['state_dict']
    merged_b = torch.load(out_b, weights_only=False)['state_dict']
    assert not any('flora_' in k for k in merged_a)
    for key, value in merged_b.items():  # adapter-only and full checkpoints merge alike
        assert torch.equal(merged_a[key], value), key
    # the plain model (adapter=None) with merged weights == the adapted model
    cfg = load_config(str(cfg_path))
    adapted = build_model(cfg).eval()
    adapted.load_state_dict(torch.load(runs['B'] / 'iter_4.pth',
                                       weights_only=False)['state_dict'])
    plain = build_model(cfg, plain_model_cfg(cfg.model)).eval()
    plain.load_state_dict(merged_a, strict=True)
    pretrained = torch.load(cfg.model.backbone.pretrained, weights_only=True)
    assert not torch.equal(merged_a['backbone.stem.0.weight'], pretrained['stem.0.weight'])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain._forward(x), adapted._forward(x), rtol=1e-4,
                                   atol=1e-4)
    # errors are clear and never leave a half-written output
    out_a.write_bytes(b'previous')
    assert tool.main([str(cfg_path), str(tmp_path / 'missing.pth'), str(out_a)]) == 1
    assert 'missing.pth' in capsys.readouterr().err
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': {'foo': torch.zeros(1)}}, bad)
    assert tool.main([str(cfg_path), str(bad), str(out_a)]) == 1
    err = capsys.readouterr().err
    assert 'unexpected keys' in err and "'foo'" in err
    assert out_a.read_bytes() == b'previous'
    assert not list(tmp_path.glob('.merged_a.pth.*'))
    # an adapter-only checkpoint needs the pretrained base it was trained from
    assert tool.main([str(cfg_path), str(runs['A'] / 'iter_4.pth'), str(out_a),
                      '--cfg-options', 'model.backbone.pretrained=None']) == 1
    assert 'adapter-only' in capsys.readouterr().err
    assert out_a.read_bytes() == b'previous'
