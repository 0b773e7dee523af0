"""The Table-4 benchmark's library on tiny models: the real Table-1 configs are the ones named,
synthetic batches are plausible, trainable counts per method match independent counts, the
limit job really computes input gradients, and the JSON merges and resumes. No timing
assertions (timings belong to the benchmark, not to tests)."""
import json
import math
import os
import os.path as osp
import statistics

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config

from flora_mm.adapters import count_adapter_params
from flora_mm.analysis import table4
from flora_mm.models import FLoRAConvNeXtV2

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'demo')
SEG = osp.join(DEMO, 'upernet_convnextv2-atto-flora_tiny-ade.py')
DET = osp.join(DEMO, 'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py')
ROT = osp.join(DEMO, 'oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py')
TARGETS = [r'(.*\.)?stem[._]0', r'(.*\.)?downsample\.1', r'(.*\.)?conv_dw', r'(.*\.)?mlp\.fc[12]']
ADAPTERS = {
    'frozen': dict(_delete_=True, type='Frozen'),
    'full': dict(_delete_=True, type='Full'),
    'flora': dict(_delete_=True, type='FLoRA', rank=3, kernel_rank=2, scale=4.0,
                  targets=TARGETS),
    'lora': dict(_delete_=True, type='LoRA', rank=3, alpha=3, targets=TARGETS),
    'dora': dict(_delete_=True, type='DoRA', rank=3, alpha=3, targets=TARGETS),
}


def _job(config, method='flora', size=(64, 64), batch_size=2, **kwargs):
    # UperNet trains with 2 images at least (BatchNorm on its pooled 1x1 branch)
    return dict(config=config, input_size=list(size), input_grad=method == 'limit',
                batch_size=batch_size,
                cfg_options={'model.backbone.adapter': ADAPTERS.get(method, ADAPTERS['frozen'])},
                warmup=1, steps=1, threads=1, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize('task', list(table4.TASKS))
def test_table_jobs_name_the_real_table1_configs(task):
    jobs = table4.table_jobs([task], list(table4.METHODS), [0, 1])
    assert len(jobs) == 2 * len(table4.METHODS)
    expected = {'frozen': ('Frozen', None), 'limit': ('Frozen', None), 'flora': ('FLoRA', 42),
                'lora': ('LoRA', 42), 'dora': ('DoRA', 42), 'full': ('Full', None)}
    for key, job in jobs.items():
        got_task, method, cp = key.split('/')
        assert got_task == task and job['with_cp'] == (cp == 'cp1')
        assert job['input_grad'] == (method == 'limit')
        cfg = Config.fromfile(osp.join(REPO, job['config']))
        backbone = cfg.model.backbone
        assert backbone.arch == 'large'
        assert (backbone.adapter.type, backbone.adapter.get('rank')) == expected[method]
        assert tuple(job['input_size']) == table4.TASKS[task].input_size


def _independent_count(method):
    """Adapter / trainable count of ConvNeXt-V2-atto from the layer shapes (timm model)."""
    net = timm.create_model('convnextv2_atto', num_classes=0)
    layers = [m for n, m in net.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and n.startswith(
                  ('stem', 'stages'))]
    total = 0
    for m in layers:
        shape = tuple(m.weight.shape)
        if method == 'flora':
            ranks = [min(3, shape[0]), min(3, shape[1]), *(min(2, k) for k in shape[2:])]
            total += math.prod(ranks) + sum(i * j for i, j in zip(shape, ranks))
        else:
            cols = math.prod(shape[1:])
            r = min(3, shape[0], cols)
            total += r * (shape[0] + cols)
    return total


@pytest.mark.slow
def test_run_job_counts_per_method():
    counts = {}
    for method in ('frozen', 'limit', 'flora', 'lora', 'dora', 'full'):
        result = table4.run_job(_job(SEG, method))
        assert len(result['samples_s']) == 1 and result['step_s'] > 0
        assert all(math.isfinite(v) for v in result['losses'])
        assert result['memory']['peak'] >= result['memory']['before'] > 0
        assert result['batch_size'] == 2
        counts[method] = result
    net = timm.create_model('convnextv2_atto', num_classes=0)
    backbone_params = sum(p.numel() for n, p in net.named_parameters()
                          if not n.startswith('head'))
    # LayerNorm weight + bias on every output stage: trained with the neck in every method
    norms = sum(2 * info['num_chs'] for info in net.feature_info)
    assert counts['full']['backbone_total'] == backbone_params + norms
    assert counts['full']['backbone_trainable'] == backbone_params + norms
    assert counts['frozen']['backbone_trainable'] == counts['limit']['backbone_trainable'] == norms
    assert counts['flora']['backbone_trainable'] == _independent_count('flora') + norms
    assert counts['lora']['backbone_trainable'] == _independent_count('lora') + norms
    dora = FLoRAConvNeXtV2(arch='atto', adapter={k: v for k, v in ADAPTERS['dora'].items()
                                                 if k != '_delete_'})
    assert counts['dora']['backbone_trainable'] == count_adapter_params(dora)['total'] + norms
    for method in ('flora', 'lora', 'dora'):
        assert counts[method]['adapter_params'] == counts[method]['backbone_trainable'] - norms
    # necks and heads train in every method
    heads = counts['frozen']['model_trainable'] - norms
    assert heads > 0
    for method in ('flora', 'lora', 'dora', 'full'):
        assert counts[method]['model_trainable'] == heads + counts[method]['backbone_trainable']


def test_limit_job_computes_input_gradients():
    model, wrapper, data = table4.prepare_job(_job(SEG, 'limit'))
    seen = []
    model.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    model.train_step(data, wrapper)
    assert seen[0].requires_grad and seen[0].grad is not None
    assert seen[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    # the adapters' forward without adapters: every stage in train mode (drop path on), where
    # the frozen baseline runs its stages in eval mode
    assert all(m.training for m in model.backbone.modules())
    frozen, _, _ = table4.prepare_job(_job(SEG, 'frozen'))
    assert not any(stage.training for stage in frozen.backbone.stages)


@pytest.mark.parametrize('config,size', [(DET, (96, 160)), (ROT, (128, 128)), (SEG, (64, 96))])
def test_synthetic_batches_fit_the_models(config, size):
    model, wrapper, data = table4.prepare_job(_job(config, 'flora', size, batch_size=2))
    assert len(data['inputs']) == 2
    for img, sample in zip(data['inputs'], data['data_samples']):
        assert img.shape == (3, *size) and img.dtype == torch.uint8
        assert img.float().std() > 10  # not a flat image
        if 'gt_sem_seg' in sample:
            seg = sample.gt_sem_seg.data
            assert seg.shape == (1, *size) and 0 <= seg.min() and seg.max() < 150
            assert len(seg.unique()) > 1
            continue
        gt = sample.gt_instances
        assert len(gt) == table4.NUM_OBJECTS
        boxes = gt.bboxes.tensor
        if boxes.shape[1] == 5:  # rotated (cx, cy, w, h, angle), le90 angles
            assert (boxes[:, 4].abs() <= np.pi / 2).all() and (boxes[:, 2:4] > 0).all()
        else:
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= size[1]).all()
            assert (boxes[:, 3] <= size[0]).all() and (boxes[:, 2:] > boxes[:, :2]).all()
            masks = gt.masks.to_ndarray()
            assert masks.shape == (table4.NUM_OBJECTS, *size) and masks.any(axis=(1, 2)).all()
            ys, xs = np.nonzero(masks[0])
            x1, y1, x2, y2 = boxes[0].tolist()
            assert x1 - 1 <= xs.min() and xs.max() <= x2 and y1 - 1 <= ys.min() <= ys.max() <= y2
    log_vars = model.train_step(data, wrapper)
    assert math.isfinite(float(log_vars['loss']))


@pytest.mark.slow
def test_run_table_merges_resumes_and_summarizes(tmp_path):
    out = str(tmp_path / 'table4.json')
    jobs = {f'tiny/{m}/cp0': _job(SEG, m) for m in ('limit', 'flora', 'lora')}
    report = table4.run_table(jobs, out, rounds=1, log=lambda _: None)
    with open(out) as f:
        on_disk = json.load(f)
    assert sorted(on_disk['runs']) == sorted(jobs)
    for key, runs in on_disk['runs'].items():
        assert len(runs) == 1 and 'error' not in runs[0], runs
    stamp = os.path.getmtime(out)
    first = {k: v[0]['finished'] for k, v in on_disk['runs'].items()}
    # resume: everything is there, nothing runs again
    table4.run_table(jobs, out, rounds=1, log=lambda _: None)
    with open(out) as f:
        again = json.load(f)
    assert {k: v[0]['finished'] for k, v in again['runs'].items()} == first
    assert all(len(v) == 1 for v in again['runs'].values())
    assert os.path.getmtime(out) >= stamp
    # the summary is the ratio of the medians of the raw samples
    cell = report['summary']['tiny/cp0']
    runs = on_disk['runs']

    def med(key):
        return statistics.median(runs[f'tiny/{key}/cp0'][0]['samples_s'])

    assert cell['ratios']['flora']['step_vs_lora'] == pytest.approx(med('flora') / med('lora'))
    assert cell['ratios']['flora']['step_vs_limit'] == pytest.approx(med('flora') / med('limit'))
    mem = {m: runs[f'tiny/{m}/cp0'][0]['memory']['added'] for m in ('flora', 'lora')}
    if mem['lora']:
        assert cell['ratios']['flora']['mem_vs_lora'] == pytest.approx(mem['flora'] / mem['lora'])
    target = cell['targets']['flora_step_vs_lora']
    assert target['target'] == 1.0 and target['met'] == (target['value'] <= 1.0)
    text = table4.format_table(report['summary'])
    assert '| flora |' in text and '| lora |' in text and '| limit |' in text


@pytest.mark.slow
def test_run_table_records_failures(tmp_path):
    out = str(tmp_path / 'bad.json')
    jobs = {'tiny/flora/cp0': dict(_job(SEG), config=str(tmp_path / 'missing.py'))}
    report = table4.run_table(jobs, out, log=lambda _: None)
    assert 'error' in report['runs']['tiny/flora/cp0'][0]
    assert 'missing.py' in report['runs']['tiny/flora/cp0'][0]['error']
    assert report['summary'] == {}
