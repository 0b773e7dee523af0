"""The real tools on ``cuda:0``: 2 iterations of ``tools/train.py --amp`` on each demo config,
and single-node NCCL DDP through ``tools/dist_train.sh`` with one process."""
import math
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

from flora_mm.testing.mmcv_ops import DEMO_CONFIGS, TRACED_OPS

from . import CUDA_OPS, GPU

pytestmark = GPU

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.dirname(osp.abspath(__file__))
DEMO = osp.join(ROOT, 'configs', 'demo')
SEG = 'upernet_convnextv2-atto-flora_tiny-ade.py'
# 2 iterations each: iteration-based UperNet; the detectors' tiny sets have 4 training images,
# 2 per batch, one epoch
DEMOS = {
    SEG: ['train_cfg.max_iters=2', 'train_cfg.val_interval=3',
          'default_hooks.checkpoint.interval=2'],
    'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py': [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        'default_hooks.checkpoint.interval=1'],
    'oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py': [
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        'default_hooks.checkpoint.interval=1'],
}


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    from flora_mm.testing import make_all
    root = str(tmp_path_factory.mktemp('tiny_data'))
    make_all(root, num_train=4, num_val=2)
    return root


def _probed_config(demo, tmp_path, tiny_data, monkeypatch):
    """The demo config with GPUProbeHook added, written to ``tmp_path``."""
    from mmengine.config import Config
    monkeypatch.setenv('FLORA_MM_TINY_DATA', tiny_data)
    cfg = Config.fromfile(osp.join(DEMO, demo))
    cfg.custom_imports = dict(imports=['flora_mm', 'gpu_probe_hook'], allow_failed_imports=False)
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(type='GPUProbeHook', out_dir=str(tmp_path))]
    path = str(tmp_path / demo)
    cfg.dump(path)
    return path


def _run(args, tiny_data):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, FLORA_MM_TINY_DATA=tiny_data, PYTHON=sys.executable, PORT=str(port),
               PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get('PYTHONPATH', '')]))
    cmd = (['bash'] if args[0].endswith('.sh') else [sys.executable]) + [
        osp.join(ROOT, args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, f'{" ".join(cmd)} failed:\n{proc.stdout[-6000:]}'
    return proc.stdout


def _check_trained(probe, iters=2):
    info = probe['info']
    assert info['devices'] == ['cuda:0'], info['devices']
    assert len(info['losses']) == iters and all(math.isfinite(v) for v in info['losses'])
    adapters = [n for n in info['trainable'] if '.flora_' in n]
    assert adapters, 'no FLoRA parameter is trained'
    frozen = [n for n in probe['before'] if n not in set(info['trainable'])]
    assert frozen and all(torch.equal(probe['before'][n], probe['after'][n]) for n in frozen)
    return [n for n in info['trainable']
            if not torch.equal(probe['before'][n], probe['after'][n])]


def _demo_param(demo):
    """The demo, skipped on the CPU build of mmcv when its model calls mmcv ops."""
    model = {name: key for key, name in DEMO_CONFIGS.items()}[demo]
    return pytest.param(demo, marks=[CUDA_OPS] if TRACED_OPS[model] else [])


@pytest.mark.parametrize('demo', [_demo_param(demo) for demo in DEMOS])
def test_train_amp_on_cuda(demo, tmp_path, tiny_data, monkeypatch):
    config = _probed_config(demo, tmp_path, tiny_data, monkeypatch)
    _run(['tools/train.py', config, '--amp', '--work-dir', tmp_path / 'work',
          '--cfg-options', *DEMOS[demo]], tiny_data)
    probe = torch.load(tmp_path / 'gpu_probe_rank0.pt', weights_only=False)
    info = probe['info']
    assert info['optim_wrapper'] == 'AmpOptimWrapper'
    # every training forward ran under fp16 autocast (AmpOptimWrapper's default dtype)
    assert len(info['autocast']) >= 2 and set(info['autocast']) == {(True, 'torch.float16')}, \
        info['autocast']
    changed = _check_trained(probe)
    # dynamic loss scaling starts at 2**16 and halves on every overflowed (skipped) step
    skipped = round(math.log2(2.**16 / info['loss_scale']))
    assert 0 <= skipped <= 2, info['loss_scale']
    if skipped < 2:
        assert any('.flora_' in n for n in changed), 'a step was taken but no adapter moved'
    assert osp.isfile(tmp_path / 'work' / 'last_checkpoint')


def test_dist_train_nccl_one_process(tmp_path, tiny_data, monkeypatch):
    config = _probed_config(SEG, tmp_path, tiny_data, monkeypatch)
    _run(['tools/dist_train.sh', config, 1, '--work-dir', tmp_path / 'work',
                '--cfg-options', *DEMOS[SEG]], tiny_data)
    probe = torch.load(tmp_path / 'gpu_probe_rank0.pt', weights_only=False)
    info = probe['info']
    assert info['backend'] == 'nccl' and info['world_size'] == 1
    assert info['wrapper'] == 'MMDistributedDataParallel' and info['device_ids'] == [0]
    assert info['optim_wrapper'] == 'OptimWrapper'
    changed = _check_trained(probe)
    assert any('.flora_' in n for n in changed)
