"""Command-line entry points behind ``tools/train.py`` and ``tools/test.py`` (mmdet's flags)."""
import argparse
import logging
import os
from typing import List, Optional

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from .launch import build_runner, close_distributed, load_config

LAUNCHERS = ['none', 'pytorch', 'slurm', 'mpi']
AMP_WRAPPERS = ('AmpOptimWrapper', 'flora_mm.AmpOptimWrapper')


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and metrics')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value pairs merged into the config, e.g. '
        'model.backbone.adapter.rank=16 or key="[a,b]"')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_train_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train.py``."""
    parser = argparse.ArgumentParser(description='Train a model with flora_mm')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision: float16 autocast with dynamic loss '
                        "scaling on GPUs (optim_wrapper.dtype='bfloat16' for bfloat16), bfloat16 "
                        'autocast on CPUs')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real batch size / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or without a value from the latest checkpoint of '
        'the work dir')
    _common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def parse_test_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/test.py``."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model with flora_mm')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (full or adapter-only)')
    parser.add_argument('--out', help='dump predictions: a .pkl file (mmdet / mmrotate) or a '
                        'directory of label maps (mmseg)')
    parser.add_argument('--show-dir', help='save painted predictions in this directory')
    _common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to mixed precision (what ``--amp`` does).

    ``OptimWrapper`` becomes ``flora_mm.AmpOptimWrapper`` with ``loss_scale='dynamic'``:
    mmengine's ``AmpOptimWrapper`` on a GPU (float16 unless ``optim_wrapper.dtype`` says
    ``'bfloat16'``), bfloat16 autocast without loss scaling on a CPU. A config that already
    names mmengine's ``AmpOptimWrapper`` keeps its settings and gets the CPU-capable class.

    Args:
        cfg: The config, modified in place.

    Raises:
        ValueError: ``optim_wrapper.type`` is another wrapper.
    """
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type in AMP_WRAPPERS:
        print_log('AMP training is already enabled in the config.', logger='current',
                  level=logging.WARNING)
    elif wrapper_type != 'OptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper_type!r}')
    else:
        cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.optim_wrapper.type = 'flora_mm.AmpOptimWrapper'


def build_train_config(args: argparse.Namespace) -> Config:
    """The runner config for ``tools/train.py`` arguments (mmdet's ``train.py`` semantics).

    Args:
        args: Output of :func:`parse_train_args`.

    Returns:
        The config with ``--amp``, ``--auto-scale-lr`` and ``--resume`` applied.
    """
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def build_test_config(args: argparse.Namespace) -> Config:
    """The runner config for ``tools/test.py`` arguments.

    Args:
        args: Output of :func:`parse_test_args`.

    Returns:
        The config with ``load_from`` and ``--show-dir`` / mmseg ``--out`` applied.
    """
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    scope = cfg.get('default_scope', 'mmdet')
    if args.show_dir:
        hooks = cfg.get('default_hooks', {})
        if 'visualization' not in hooks:
            raise ValueError('--show-dir needs default_hooks.visualization in the config')
        hooks.visualization.draw = True
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
            # mmseg's hook paints only every `interval`-th batch (default 50)
            hooks.visualization.interval = 1
        else:
            hooks.visualization.test_out_dir = args.show_dir
    if args.out and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def run_train(argv: Optional[List[str]] = None) -> None:
    """``tools/train.py``: build the runner, train, and close the process group."""
    runner = build_runner(build_train_config(parse_train_args(argv)))
    runner.train()
    del runner  # the group's backend is freed only with the model wrapper (close_distributed)
    close_distributed()


def run_test(argv: Optional[List[str]] = None) -> dict:
    """``tools/test.py``: build the runner and test; returns the metrics."""
    args = parse_test_args(argv)
    cfg = build_test_config(args)
    runner = build_runner(cfg)
    if args.out and cfg.get('default_scope', 'mmdet') != 'mmseg':
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {args.out!r}: the dump file must be a .pkl file')
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    del runner
    close_distributed()
    return metrics
