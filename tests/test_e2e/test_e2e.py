"""End to end on CPU with the real tools: train -> checkpoint -> test -> metrics.

The demo configs (ConvNeXt-V2-atto + FLoRA) on the tiny datasets of
``flora_mm.testing.make_all``: UperNet through ``tools/dist_train.sh`` / ``tools/dist_test.sh``
with 2 processes (gloo), Mask R-CNN and Oriented R-CNN through ``tools/train.py`` /
``tools/test.py``. Schedules are shortened with ``--cfg-options`` to keep the suite fast.
"""
import glob
import json
import math
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs', 'demo')
SEG_CONFIG = osp.join(DEMO, 'upernet_convnextv2-atto-flora_tiny-ade.py')
DET_CONFIG = osp.join(DEMO, 'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py')
ROT_CONFIG = osp.join(DEMO, 'oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """Environment of the tool processes: the tiny datasets, this interpreter, a free port, no
    GPU (tests/conftest.py hides it; said here too, where the processes start)."""
    from flora_mm.testing import make_all
    root = str(tmp_path_factory.mktemp('tiny_data'))
    make_all(root)
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return {**os.environ, 'FLORA_MM_TINY_DATA': root, 'PYTHON': sys.executable,
            'PORT': str(port), 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}


def _run(cmd, env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, f'{" ".join(cmd)} failed:\n{proc.stdout[-6000:]}'
    return proc.stdout


def _metrics(work_dir):
    """Metrics of the last test run: mmengine's LoggerHook writes <timestamp>/<timestamp>.json."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    assert logs, f'no metrics json under {work_dir}'
    with open(logs[-1]) as f:
        return json.load(f)


def _train_test(config, work_dir, env, options):
    """tools/train.py then tools/test.py on the last checkpoint; returns the test metrics and
    the checkpoint."""
    _run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
          '--cfg-options', *options], env)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    assert osp.isfile(checkpoint)
    _run([sys.executable, 'tools/test.py', config, checkpoint,
          '--work-dir', osp.join(work_dir, 'test')], env)
    return _metrics(osp.join(work_dir, 'test')), checkpoint


def _assert_numeric(metrics, keys, low, high):
    for key in keys:
        assert key in metrics, f'{key} missing from {sorted(metrics)}'
        value = metrics[key]
        assert isinstance(value, float) and math.isfinite(value) and low <= value <= high, (
            key, value)


def _untrained_checkpoint(config, path):
    """The demo model as built, before any training: the frozen base (FLoRA's core is zero)
    with freshly initialised heads, saved as a checkpoint for tools/test.py."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    import flora_mm  # noqa: F401
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)


def _val_loss(config, checkpoint):
    """Mean total loss of a checkpoint on the validation set (the test pipeline loads the
    annotations), in eval mode with the RoI samplers seeded: the same computation for every
    checkpoint."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner, load_checkpoint

    from flora_mm.apis.launch import register_task_modules
    cfg = Config.fromfile(config)
    register_task_modules(cfg)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu')
    model.eval()
    torch.manual_seed(0)
    losses = []
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg.val_dataloader, seed=0):
            data = model.data_preprocessor(batch, True)
            losses.append(float(model.parse_losses(model(**data, mode='loss'))[0]))
    return sum(losses) / len(losses)


def _assert_learned(config, checkpoint, tmp_path, env, monkeypatch, ratio):
    """The trained checkpoint's validation loss is below ``ratio`` x the untrained model's."""
    monkeypatch.setenv('FLORA_MM_TINY_DATA', env['FLORA_MM_TINY_DATA'])
    untrained = str(tmp_path / 'untrained.pth')
    _untrained_checkpoint(config, untrained)
    before, after = _val_loss(config, untrained), _val_loss(config, checkpoint)
    print(f'validation loss untrained {before:.3f}, trained {after:.3f}')
    assert after < ratio * before, (before, after)


@pytest.mark.slow
def test_segmentation_ddp_learns(env, tmp_path, monkeypatch):
    """2-process DDP training of UperNet + FLoRA lifts mIoU far above the untrained model."""
    work_dir = str(tmp_path / 'seg')
    iters = 60
    _run(['bash', 'tools/dist_train.sh', SEG_CONFIG, '2', '--work-dir', work_dir,
          '--cfg-options', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters + 1}',
          f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.0.end={iters}'],
         env)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    assert checkpoint.endswith(f'iter_{iters}.pth')
    _run(['bash', 'tools/dist_test.sh', SEG_CONFIG, checkpoint, '2',
          '--work-dir', osp.join(work_dir, 'test')], env)
    trained = _metrics(osp.join(work_dir, 'test'))
    _assert_numeric(trained, ('mIoU', 'mAcc', 'aAcc'), 0., 100.)

    untrained = str(tmp_path / 'untrained.pth')
    monkeypatch.setenv('FLORA_MM_TINY_DATA', env['FLORA_MM_TINY_DATA'])
    _untrained_checkpoint(SEG_CONFIG, untrained)
    _run([sys.executable, 'tools/test.py', SEG_CONFIG, untrained,
          '--work-dir', str(tmp_path / 'untrained')], env)
    before = _metrics(str(tmp_path / 'untrained'))
    _assert_numeric(before, ('mIoU',), 0., 100.)
    print(f"mIoU untrained {before['mIoU']}, after {iters} iterations {trained['mIoU']}")
    # 6 classes drawn; the untrained model scores a few points, 60 iterations reach 60-75
    assert trained['mIoU'] > 50 and trained['mIoU'] > before['mIoU'] + 30, (before, trained)


def test_instance_segmentation_learns(env, tmp_path, monkeypatch):
    """2 epochs (8 iterations) of Mask R-CNN + FLoRA: the metrics are written (mAP stays near
    0, as untrained: 0.000-0.003 measured), the validation loss falls far below the untrained
    model's."""
    metrics, checkpoint = _train_test(DET_CONFIG, str(tmp_path / 'det'), env,
                                      ['train_cfg.max_epochs=2', 'train_cfg.val_interval=3',
                                       'default_hooks.checkpoint.interval=2'])
    _assert_numeric(metrics, ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'), -1., 1.)
    # measured: untrained 3.34-4.77 (6 initialisations; 3.71 with the seed used here), trained
    # 1.54-2.25 (3 runs): below 0.8x the untrained is learning
    _assert_learned(DET_CONFIG, checkpoint, tmp_path, env, monkeypatch, ratio=0.8)


@pytest.mark.slow
def test_rotated_detection_learns(env, tmp_path, monkeypatch):
    """2 epochs of Oriented R-CNN + FLoRA: the metrics are written, the validation loss falls
    far below the untrained model's."""
    metrics, checkpoint = _train_test(ROT_CONFIG, str(tmp_path / 'rot'), env,
                                      ['train_cfg.max_epochs=2', 'train_cfg.val_interval=3',
                                       'default_hooks.checkpoint.interval=2'])
    _assert_numeric(metrics, ('dota/mAP', 'dota/AP50'), 0., 1.)
    # measured: untrained 2.19-2.50 (4 initialisations; 2.50 with the seed used here), trained
    # 0.87-0.89 (3 runs; dota/mAP 0.0 in each, as untrained): below 0.6x the untrained is learning
    _assert_learned(ROT_CONFIG, checkpoint, tmp_path, env, monkeypatch, ratio=0.6)
