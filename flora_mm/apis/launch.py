"""What ``tools/train.py`` / ``tools/test.py`` do besides building the runner.

* register the modules of the package named by the config's ``default_scope`` (and build
  the config's model in it);
* on machines without CUDA, make distributed launches work: initialise a gloo process group
  before the runner is built (mmengine's ``init_dist`` calls ``torch.cuda.set_device``; the
  runner skips it when a group exists), set ``env_cfg.dist_cfg.backend='gloo'`` and wrap the
  model in DDP without ``device_ids`` (DDP rejects device ids for CPU modules), or, for a
  ``FlexibleRunner`` with ``FSDPStrategy``, give FSDP ``device_id='cpu'`` (torch FSDP runs on
  CPU processes only when told so; mmengine passes the local rank, a CUDA index).

On a GPU node nothing is changed, so the same command runs on a laptop and on a cluster.
"""
import copy
import datetime
import gc
import importlib
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from flora_mm.stack import require

# default_scope -> packages whose modules the config may name (mmrotate configs use mmdet's).
SCOPE_PACKAGES = {'mmdet': ('mmdet', ), 'mmseg': ('mmseg', ), 'mmrotate': ('mmdet', 'mmrotate')}
DDP_WRAPPERS = ('MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel')


def register_task_modules(cfg: Config) -> None:
    """Import and register the modules of the config's downstream package(s).

    Args:
        cfg: A config; ``default_scope`` (mmdet when absent, as mmdet's tools assume) picks
            ``mmdet``, ``mmseg`` or ``mmrotate`` (with mmdet). Other scopes register nothing.

    Raises:
        UnsupportedStackError: mmcv or one of those packages is missing or out of range.
    """
    scope = cfg.get('default_scope', 'mmdet')
    packages = SCOPE_PACKAGES.get(scope, ())
    if packages:
        require('mmcv', *packages, part=f'a {scope} config')
    for package in packages:
        utils = importlib.import_module(f'{package}.utils')
        utils.register_all_modules(init_default_scope=False)


def build_model(cfg: Config, model_cfg: Optional[ConfigDict] = None) -> nn.Module:
    """Build ``cfg.model`` (or ``model_cfg``, e.g. ``cfg.model.backbone``) in the config's
    default scope, with its package's modules registered, on CPU.

    Args:
        cfg: The config; its ``default_scope`` picks the registry (mmdet when absent).
        model_cfg: What to build instead of ``cfg.model``; not modified.

    Returns:
        The model (weights as initialised at construction; ``init_weights`` not called).
    """
    from mmengine.registry import MODELS, init_default_scope
    register_task_modules(cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(copy.deepcopy(model_cfg if model_cfg is not None else cfg.model))


def _dist_env(launcher: str) -> dict:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` for a launcher."""
    env = os.environ
    if launcher == 'pytorch':
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in env]
        if missing:
            raise RuntimeError(f'--launcher pytorch needs the environment variables {missing}; '
                               'start the script with torchrun (tools/dist_train.sh)')
        return dict(RANK=env['RANK'], WORLD_SIZE=env['WORLD_SIZE'],
                    LOCAL_RANK=env.get('LOCAL_RANK', '0'), MASTER_ADDR=env['MASTER_ADDR'],
                    MASTER_PORT=env['MASTER_PORT'])
    if launcher == 'slurm':
        addr = env.get('MASTER_ADDR') or subprocess.getoutput(
            f'scontrol show hostname {env["SLURM_NODELIST"]} | head -n1')
        return dict(RANK=env['SLURM_PROCID'], WORLD_SIZE=env['SLURM_NTASKS'],
                    LOCAL_RANK=env.get('SLURM_LOCALID', '0'), MASTER_ADDR=addr,
                    MASTER_PORT=env.get('MASTER_PORT', '29500'))
    if launcher == 'mpi':
        if 'MASTER_ADDR' not in env:
            raise RuntimeError('--launcher mpi needs the environment variable MASTER_ADDR')
        return dict(RANK=env['OMPI_COMM_WORLD_RANK'], WORLD_SIZE=env['OMPI_COMM_WORLD_SIZE'],
                    LOCAL_RANK=env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'),
                    MASTER_ADDR=env['MASTER_ADDR'], MASTER_PORT=env.get('MASTER_PORT', '29500'))
    raise ValueError(f'unknown launcher {launcher!r}; expected none, pytorch, slurm or mpi')


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """Prepare a distributed launch on a machine without CUDA (no-op otherwise).

    Initialises a gloo process group from the launcher's environment, sets
    ``cfg.env_cfg.dist_cfg.backend='gloo'`` and, unless the config has its own
    ``model_wrapper_cfg``, uses ``MMDistributedDataParallel(device_ids=None,
    broadcast_buffers=False)`` (``find_unused_parameters`` taken from the config, as mmengine's
    default wrapper does). A config's own DDP wrapper config gets ``device_ids=None`` if unset.
    A ``FlexibleRunner`` config (``strategy``) with ``FSDPStrategy`` gets
    ``model_wrapper.device_id='cpu'``; ``DeepSpeedStrategy`` is refused (it needs CUDA).

    Args:
        cfg: The config, modified in place.
        launcher: 'none', 'pytorch', 'slurm' or 'mpi'.

    Returns:
        True if the CPU distributed setup was applied.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    # Assign through the config (setdefault would return a detached plain dict).
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg') is None:
        cfg.env_cfg.dist_cfg = dict()
    dist_cfg = cfg.env_cfg.dist_cfg
    dist_cfg.backend = 'gloo'
    if cfg.get('strategy') is not None:
        _cpu_strategy(cfg.strategy)
    else:
        wrapper = cfg.get('model_wrapper_cfg')
        if wrapper is None:
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
        elif wrapper.get('type', 'MMDistributedDataParallel') in DDP_WRAPPERS:
            wrapper.setdefault('device_ids', None)
    if not dist.is_initialized():
        env = _dist_env(launcher)
        os.environ.update(env)
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend='gloo', init_method='env://', rank=int(env['RANK']),
                                world_size=int(env['WORLD_SIZE']), **kwargs)
    print_log(f'no CUDA device: distributed on CPU with gloo (rank {dist.get_rank()} of '
              f'{dist.get_world_size()})', logger='current')
    return True


def _cpu_strategy(strategy) -> None:
    """Make a ``FlexibleRunner`` strategy config run on CPU processes (in place)."""
    kind = strategy.get('type', '')
    if kind in ('FSDPStrategy', 'mmengine.FSDPStrategy'):
        # mmengine passes device_id=LOCAL_RANK, which FSDP reads as a CUDA index.
        if strategy.get('model_wrapper') is None:
            strategy.model_wrapper = dict()
        strategy.model_wrapper.setdefault('device_id', 'cpu')
    elif kind in ('DeepSpeedStrategy', 'mmengine.DeepSpeedStrategy'):
        raise RuntimeError('DeepSpeedStrategy needs CUDA devices; on a machine without CUDA '
                           "use strategy=dict(type='FSDPStrategy', ...)")


def load_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None) -> Config:
    """Load a config the way mmdet's tools do (options merged, ``work_dir`` resolved).

    Args:
        config: Config file path.
        launcher: Job launcher, stored as ``cfg.launcher``.
        cfg_options: ``--cfg-options`` overrides.
        work_dir: ``--work-dir``; otherwise the config's or ``./work_dirs/<config name>``.

    Returns:
        The config.
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(copy.deepcopy(cfg_options))
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = os.path.join('./work_dirs',
                                    os.path.splitext(os.path.basename(config))[0])
    return cfg


def build_runner(cfg: Config):
    """Register the config's modules, set up CPU distribution, and build the runner."""
    register_task_modules(cfg)
    setup_cpu_distributed(cfg, cfg.get('launcher', 'none'))
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        from mmengine.registry import init_default_scope
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def close_distributed() -> None:
    """Destroy the default process group, if any, after every rank has finished its run.

    Call it once the runner is dropped. The model wrapper (DDP / FSDP), held in the runner's
    reference cycles, keeps the gloo backend alive, so destroying the group alone leaves the
    backend's worker threads running into interpreter exit, where a rank can abort ("terminate
    called without an active exception", exit -6) after a run that succeeded. Collecting the
    cycles first lets ``destroy_process_group()`` free the backend, which joins its threads.
    Not under FSDP: its flat parameters are also held from C++ (an extra reference the
    collector cannot see), so there the threads still outlive the group.
    """
    if dist.is_available() and dist.is_initialized():
        # no rank may close the store (hosted by rank 0) while another still talks to it
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
