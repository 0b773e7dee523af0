"""The Table-4 benchmark's library on tiny models: the real Table-1 configs are the ones named,
synthetic batches are plausible, trainable counts per method match independent counts, the
limit job really computes input gradients, and the JSON merges and resumes. No timing
assertions (timings belong to the benchmark, not to tests)."""
import json
import math
import os.path as osp
import statistics

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config

from flora_mm.adapters import adapter_layers, count_adapter_params
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
    'loha': dict(_delete_=True, type='LoHa', rank=3, use_effective_conv2d=True,
                 targets=TARGETS),
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
    jobs = table4.table_jobs([task], list(table4.METHODS), [0, 1],
                             root=osp.join(REPO, 'configs'))
    assert len(jobs) == 2 * len(table4.METHODS)
    expected = {'frozen': ('Frozen', None), 'limit': ('Frozen', None), 'flora': ('FLoRA', 42),
                'lora': ('LoRA', 42), 'dora': ('DoRA', 42), 'loha': ('LoHa', 19),
                'lokr': ('LoKr', 180), 'full': ('Full', None)}
    for key, job in jobs.items():
        got_task, method, cp = key.split('/')
        assert got_task == task and job['with_cp'] == (cp == 'cp1')
        assert job['input_grad'] == (method == 'limit')
        cfg = Config.fromfile(job['config'])
        backbone = cfg.model.backbone
        assert backbone.arch == 'large'
        assert (backbone.adapter.type, backbone.adapter.get('rank')) == expected[method]
        assert tuple(job['input_size']) == table4.TASKS[task].input_size
        assert job['count_macs'] == (method == 'limit')  # the floor needs the limit's count


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
def test_run_table_merges_resumes_and_summarizes(tmp_path, monkeypatch):
    out = str(tmp_path / 'table4.json')
    jobs = {f'tiny/{m}/cp0': _job(SEG, m) for m in ('limit', 'flora', 'lora')}
    report = table4.run_table(jobs, out, rounds=1, log=lambda _: None)
    with open(out) as f:
        on_disk = json.load(f)
    assert sorted(on_disk['runs']) == sorted(jobs)
    for key, runs in on_disk['runs'].items():
        assert len(runs) == 1 and 'error' not in runs[0], runs
    # the summary is the ratio of the medians of the raw samples
    cell = report['summary']['tiny/cp0']
    runs = on_disk['runs']

    def med(key):
        return statistics.median(runs[f'tiny/{key}/cp0'][0]['samples_s'])

    assert cell['ratios']['flora']['step_vs_lora'] == pytest.approx(med('flora') / med('lora'))
    assert cell['ratios']['flora']['step_vs_limit'] == pytest.approx(med('flora') / med('limit'))
    mem = {m: runs[f'tiny/{m}/cp0'][0]['memory']['added'] for m in ('flora', 'lora')}
    assert cell['ratios']['flora']['mem_vs_lora'] == (
        pytest.approx(mem['flora'] / mem['lora']) if mem['lora'] else None)
    target = cell['targets']['flora_step_vs_lora']
    assert target['target'] == 1.0 and target['met'] == (target['value'] <= 1.0)
    text = table4.format_table(report['summary'])
    assert '| flora |' in text and '| lora |' in text and '| limit |' in text

    # resume: the jobs with a run on disk do not run again, the missing one does
    finished = {k: v[0]['finished'] for k, v in runs.items()}
    lora = on_disk['runs'].pop('tiny/lora/cp0')[0]
    with open(out, 'w') as f:
        json.dump(on_disk, f)
    ran = []
    monkeypatch.setattr(table4, 'run_job_subprocess',
                        lambda job, timeout=None: ran.append(job) or dict(lora))
    table4.run_table(jobs, out, rounds=1, log=lambda _: None)
    assert ran == [jobs['tiny/lora/cp0']]
    with open(out) as f:
        again = json.load(f)
    assert {k: len(v) for k, v in again['runs'].items()} == {k: 1 for k in jobs}
    assert {k: v[0]['finished'] for k, v in again['runs'].items() if k != 'tiny/lora/cp0'} == {
        k: t for k, t in finished.items() if k != 'tiny/lora/cp0'}
    table4.run_table(jobs, out, rounds=1, log=lambda _: None)
    assert len(ran) == 1  # everything there: nothing runs


def _run(samples, added_gib, trainable=100):
    return dict(samples_s=samples, memory=dict(added=added_gib * 2**30),
                backbone_trainable=trainable, adapter_params=trainable // 2)


def test_summarize_medians_ratios_and_targets():
    """Hand-made runs: medians pool every run's samples, memory is the median over runs,
    ratios and target verdicts follow; failed runs and a zero reference memory are handled."""
    runs = {
        'coco/limit/cp0': [_run([1.0, 3.0], 2.0), _run([2.0, 9.0], 4.0)],  # median 2.5; 3 GiB
        'coco/lora/cp0': [_run([2.0, 2.0, 2.0], 4.0), {'error': 'killed'}],
        'coco/flora/cp0': [_run([2.2, 2.4, 2.0], 3.0)],                    # 2.2 s; 3 GiB
        'coco/dora/cp0': [{'error': 'out of memory'}],
        'ade20k/lora/cp1': [_run([1.0], 0.0)],
        'ade20k/flora/cp1': [_run([0.5], 1.0)],
    }
    summary = table4.summarize(runs)
    assert sorted(summary) == ['ade20k/cp1', 'coco/cp0']
    coco = summary['coco/cp0']
    assert sorted(coco['methods']) == ['flora', 'limit', 'lora']  # DoRA: no successful run
    assert coco['methods']['limit']['step_s'] == pytest.approx(2.5)
    assert coco['methods']['limit']['mem_gib'] == pytest.approx(3.0)
    assert coco['methods']['lora']['runs'] == 1
    flora = coco['ratios']['flora']
    assert flora['step_vs_lora'] == pytest.approx(1.1)
    assert flora['step_vs_limit'] == pytest.approx(2.2 / 2.5)
    assert flora['mem_vs_lora'] == pytest.approx(0.75)
    assert flora['mem_vs_limit'] == pytest.approx(1.0)
    targets = coco['targets']
    assert targets['flora_step_vs_lora'] == dict(value=pytest.approx(1.1), target=1.0, met=False)
    assert targets['flora_mem_vs_lora']['met'] is True
    assert targets['flora_step_vs_limit'] == dict(value=pytest.approx(0.88), target=1.1,
                                                  met=True)
    ade = summary['ade20k/cp1']
    assert ade['ratios']['flora']['mem_vs_lora'] is None  # LoRA added nothing: no ratio
    assert 'flora_mem_vs_lora' not in ade['targets']
    assert ade['targets']['flora_step_vs_lora']['value'] == pytest.approx(0.5)
    text = table4.format_table(summary)
    # no MACs counted: no floor columns
    assert '| flora | 100 | 2.20 | 1.100 | 0.880 | - | - | 3.00 | 0.750 | 1.000 |' in text
    assert 'flora_step_vs_lora 1.100 (<= 1.00: MISSED)' in text


@pytest.mark.slow
def test_run_table_records_failures(tmp_path):
    out = str(tmp_path / 'bad.json')
    jobs = {'tiny/flora/cp0': dict(_job(SEG), config=str(tmp_path / 'missing.py'))}
    report = table4.run_table(jobs, out, log=lambda _: None)
    assert 'error' in report['runs']['tiny/flora/cp0'][0]
    assert 'missing.py' in report['runs']['tiny/flora/cp0'][0]['error']
    assert report['summary'] == {}


def test_floor_from_counted_limit_and_analytic_adapter_macs():
    """The floor: the limit's counted step MACs and time, the adapters' analytic MACs; the
    analytic count agrees with FlopCounterMode's count of a whole LoHa step (UperNet: the
    heads' work does not depend on the backbone's weights, so the steps differ only there)."""
    size = (128, 128)  # the tiny config pads to its 128 x 128 crop: no padding to guess
    runs = {m: table4.run_job(dict(_job(SEG, m, size), count_macs=True))
            for m in ('limit', 'loha')}
    limit, loha = runs['limit'], runs['loha']
    # the limit: the backbone's convs / linears forward and input gradients, plus the heads
    assert limit['step_macs'] > 2 * limit['backbone_forward_macs'] > 0
    assert limit['adapter_macs'] == 0
    # LoHa runs merged everywhere: per layer the weight gradient (its forward MACs) plus
    # 3x the rebuild; FlopCounterMode sees no elementwise work (3 terms per weight element,
    # x3) and the LoHa step has no input gradient at the stem (the limit's input has one)
    model, _, _ = table4.prepare_job(_job(SEG, 'loha', size))
    layers = adapter_layers(model.backbone)
    assert loha['adapter_paths'] == {'merged': len(layers)}
    elementwise = 9 * sum(layer.weight.numel() for layer in layers.values())
    stem = layers['stem.0']
    stem_macs = 2 * (size[0] // 4) * (size[1] // 4) * stem.weight.numel()  # batch 2
    counted = loha['step_macs'] - limit['step_macs'] + stem_macs
    assert loha['adapter_macs'] == counted + elementwise
    # the floor: the limit's time scaled by the MACs
    cell = table4.summarize({f'tiny/{m}/cp0': [r] for m, r in runs.items()})['tiny/cp0']
    for method, run in runs.items():
        floor = limit['step_s'] * (1 + run['adapter_macs'] / limit['step_macs'])
        assert cell['methods'][method]['floor_s'] == pytest.approx(floor)
        assert cell['ratios'][method]['step_vs_floor'] == pytest.approx(run['step_s'] / floor)
    assert cell['ratios']['loha']['adapter_macs_vs_limit_backbone'] == pytest.approx(
        loha['adapter_macs'] / (2 * limit['backbone_forward_macs']))
    text = table4.format_table({'tiny/cp0': cell})
    assert '/ floor' in text and 'GMACs counted' in text
