"""Config handling of tools/train.py and tools/test.py, and the CPU distributed setup."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from conftest import free_port
from flora_mm.apis import (build_test_config, build_train_config, close_distributed,
                           parse_test_args, parse_train_args, setup_cpu_distributed)

CFG = """
default_scope = 'mmdet'
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(visualization=dict(type='DetVisualizationHook'))
"""


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / 'my_cfg.py'
    path.write_text(CFG)
    return str(path)


def test_train_flags(cfg_file, tmp_path):
    cfg = build_train_config(parse_train_args([cfg_file, '--amp', '--auto-scale-lr', '--resume',
                                         '--cfg-options', 'optim_wrapper.optimizer.lr=0.5']))
    assert cfg.optim_wrapper.type == 'flora_mm.AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.auto_scale_lr.enable is True
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.work_dir.endswith('work_dirs/my_cfg') and cfg.launcher == 'none'
    cfg = build_train_config(parse_train_args([cfg_file, '--resume', 'x.pth', '--work-dir',
                                         str(tmp_path / 'w')]))
    assert cfg.resume is True and cfg.load_from == 'x.pth' and cfg.work_dir == str(
        tmp_path / 'w')


def test_test_flags(cfg_file):
    cfg = build_test_config(parse_test_args([cfg_file, 'ckpt.pth', '--show-dir', 'shows']))
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.test_out_dir == 'shows'


@pytest.fixture
def single_rank_env(monkeypatch):
    """What torchrun sets for a one-process group on this machine."""
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)


def test_cpu_distributed_setup(monkeypatch, single_rank_env):
    if torch.cuda.is_available():
        pytest.skip('the CPU path applies only without CUDA')
    cfg = Config(dict(find_unused_parameters=True))
    assert setup_cpu_distributed(cfg, 'none') is False and 'env_cfg' not in cfg
    try:
        assert setup_cpu_distributed(cfg, 'pytorch') is True
        assert dist.is_initialized() and dist.get_backend() == 'gloo'
        # what run_train / run_test end with, so no rank exits with a live group
        close_distributed()
        assert not dist.is_initialized()
        close_distributed()  # nothing to close: a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False,
                                         find_unused_parameters=True)
    # a config's own wrapper is kept, with device_ids=None added for CPU modules
    own = Config(dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                             broadcast_buffers=True)))
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    try:
        setup_cpu_distributed(own, 'pytorch')
    finally:
        dist.destroy_process_group()
    assert own.model_wrapper_cfg == dict(type='MMDistributedDataParallel',
                                         broadcast_buffers=True, device_ids=None)


def _gloo_threads():
    """Names of this process's native gloo threads (backend workers and transport loop)."""
    names = []
    for task in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{task}/comm') as f:
            names.append(f.read().strip())
    return sorted(name for name in names if 'gloo' in name)


class _RunnerLike:
    """Holds a model wrapper in a reference cycle, as mmengine's Runner does."""

    def __init__(self, model):
        self.model = model
        self.hooks = [self]


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/task')
def test_close_distributed_joins_gloo_threads(single_rank_env):
    """No gloo thread outlives close_distributed once the runner is dropped: a DDP model in a
    reference cycle keeps the backend (and its threads) alive past destroy_process_group."""
    if torch.cuda.is_available():
        pytest.skip('the CPU path applies only without CUDA')
    before = _gloo_threads()
    try:
        setup_cpu_distributed(Config(), 'pytorch')
        runner = _RunnerLike(torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2)))
        runner.model(torch.randn(3, 4)).sum().backward()  # an allreduce on the backend
        assert len(_gloo_threads()) > len(before)
        del runner
        close_distributed()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert _gloo_threads() == before


def test_pytorch_launcher_needs_torchrun_env(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip('the CPU path applies only without CUDA')
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        setup_cpu_distributed(Config(), 'pytorch')
