"""The downstream packages' own tools, unmodified, on flora_mm's demo configs and tiny data.

They are the files pip installed under ``<package>/.mim/tools`` and run as subprocesses in this
environment, whose start-up hook (``flora_mm_compat.pth``) applies flora_mm/compat.py first.
Outputs are checked against independent computations (parameter counts, the number of
ground-truth objects, the log's own timings).
"""
import glob
import importlib.util
import json
import os.path as osp
import re

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_CONFIGS, run_tool

pytestmark = pytest.mark.slow


def stock_tool(package: str, tool: str) -> str:
    path = osp.join(importlib.util.find_spec(package).submodule_search_locations[0], '.mim',
                    'tools', tool)
    assert osp.isfile(path), path
    return path


def _pretrained_option(pretrained):
    return f'model.backbone.pretrained={pretrained["atto"]}'


@pytest.fixture(scope='module')
def rotated_run(tiny_all, pretrained, tmp_path_factory):
    """mmrotate's train.py (1 epoch, 2 iterations) then test.py with --out and --show-dir."""
    work = tmp_path_factory.mktemp('mmrotate_tools')
    run_tool([stock_tool('mmrotate', 'train.py'), DEMO_CONFIGS['rot'], '--work-dir', work,
              '--cfg-options', _pretrained_option(pretrained), 'train_cfg.max_epochs=1',
              'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
              'default_hooks.checkpoint.interval=1'])
    checkpoint = work / 'epoch_1.pth'
    assert checkpoint.is_file()
    results = work / 'results.pkl'
    run_tool([stock_tool('mmrotate', 'test.py'), DEMO_CONFIGS['rot'], checkpoint, '--work-dir',
              work / 'test', '--out', results, '--show-dir', work / 'show', '--cfg-options',
              _pretrained_option(pretrained)])
    logs = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
    assert len(logs) == 1
    return dict(work=work, checkpoint=checkpoint, results=results, log=logs[0])


def test_mmrotate_train_and_test(rotated_run, tiny_all):
    metrics = sorted(glob.glob(str(rotated_run['work'] / 'test' / '*' / '*.json')))
    assert metrics
    result = json.load(open(metrics[-1]))
    assert 0 <= result['dota/mAP'] <= 1
    from mmengine.fileio import load
    assert len(load(str(rotated_run['results']))) == 2
    painted = sorted(glob.glob(str(rotated_run['work'] / 'test' / '*' / 'show' / '*.png'))
                     + glob.glob(str(rotated_run['work'] / 'show' / '*.png')))
    assert len(painted) == 2, painted


def test_mmrotate_confusion_matrix_fails_as_documented(rotated_run, tmp_path):
    """mmrotate 1.0.0rc1's confusion_matrix.py still expects mmrotate 0.x results (N x 6 numpy
    boxes with scores, 5-value ground truth) and fails on the results its own test.py dumps:
    docs/usage.md says so. If this starts to pass, update docs/usage.md."""
    with pytest.raises(AssertionError, match="TypeError: 'int' object is not callable"):
        run_tool([stock_tool('mmrotate', 'analysis_tools/confusion_matrix.py'),
                  DEMO_CONFIGS['rot'], rotated_run['results'], tmp_path / 'cm'])


def _params(config, pretrained, trainable_only):
    from flora_mm.apis import build_model, load_config
    cfg = load_config(config, cfg_options={'model.backbone.pretrained': pretrained['atto']})
    model = build_model(cfg)
    if getattr(model, 'auxiliary_head', None) is not None and not trainable_only:
        model.auxiliary_head = None  # mmseg's get_flops drops it
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _number(text: str, key: str) -> float:
    match = re.search(rf'{key}: ([\d.]+)\s*([kKMGT]?)', text)
    assert match, text[-2000:]
    scale = {'': 1, 'k': 1e3, 'K': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}[match.group(2)]
    return float(match.group(1)) * scale


def test_mmrotate_get_flops(tiny_all, pretrained):
    proc = run_tool([stock_tool('mmrotate', 'analysis_tools/get_flops.py'), DEMO_CONFIGS['rot'],
                     '--shape', '128', '--cfg-options', _pretrained_option(pretrained)])
    assert _number(proc.stdout, 'Flops') > 0
    # mmcv's counter counts the trainable parameters
    expected = _params(DEMO_CONFIGS['rot'], pretrained, trainable_only=True)
    assert _number(proc.stdout, 'Params') == pytest.approx(expected, abs=10)  # 992.41 k


def test_mmseg_get_flops(tiny_all, pretrained):
    proc = run_tool([stock_tool('mmseg', 'analysis_tools/get_flops.py'), DEMO_CONFIGS['seg'],
                     '--shape', '128', '--cfg-options', _pretrained_option(pretrained)])
    assert _number(proc.stdout, 'Flops') > 0
    expected = _params(DEMO_CONFIGS['seg'], pretrained, trainable_only=False)
    assert _number(proc.stdout, 'Params') == pytest.approx(expected, rel=0.01)


def test_mmseg_browse_dataset(tiny_all, tmp_path):
    run_tool([stock_tool('mmseg', 'analysis_tools/browse_dataset.py'), DEMO_CONFIGS['seg'],
              '--output-dir', tmp_path, '--not-show'])
    pictures = sorted(tmp_path.glob('*.jpg'))
    assert len(pictures) == 4  # the 4 training images, ground truth drawn
    assert np.asarray(Image.open(pictures[0])).ndim == 3


def test_mmrotate_benchmark(rotated_run, tmp_path):
    """--task dataset / dataloader run on CPU; --task inference calls .cuda() (docs/usage.md)."""
    proc = run_tool([stock_tool('mmrotate', 'analysis_tools/benchmark.py'), DEMO_CONFIGS['rot'],
                     '--task', 'dataset', '--max-iter', '2', '--num-warmup', '0',
                     '--log-interval', '1', '--work-dir', tmp_path])
    assert re.search(r'fps', proc.stdout + proc.stderr, re.I), proc.stdout[-2000:]


def _train_times(log: str) -> list:
    return [json.loads(line)['time'] for line in open(log) if '"time"' in line
            and '"loss"' in line]


@pytest.mark.parametrize('package', ['mmdet', 'mmrotate'])
def test_analyze_logs_det_rot(package, rotated_run, tmp_path):
    tool = stock_tool(package, 'analysis_tools/analyze_logs.py')
    out = tmp_path / 'loss.png'
    run_tool([tool, 'plot_curve', rotated_run['log'], '--keys', 'loss', '--out', out,
              '--backend', 'agg'])
    assert Image.open(out).size[0] > 100
    proc = run_tool([tool, 'cal_train_time', rotated_run['log'], '--include-outliers'])
    average = float(re.search(r'average iter time: ([\d.]+)', proc.stdout).group(1))
    assert average == pytest.approx(np.mean(_train_times(rotated_run['log'])), abs=1e-4)


def test_analyze_logs_mmseg(rotated_run, tmp_path):
    out = tmp_path / 'loss.png'
    proc = run_tool([stock_tool('mmseg', 'analysis_tools/analyze_logs.py'), rotated_run['log'],
                     '--keys', 'loss', '--out', out, '--backend', 'agg'])
    assert 'save curve to' in proc.stdout
    assert Image.open(out).size[0] > 100
