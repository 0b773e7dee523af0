"""The first run on a GPU machine (``bash tools/gpu_check.sh``; docs/gpu_check.md): what it
checks, and its report.

Stages, each in its own process with a time limit; a stage that fails or times out is recorded
and the next one runs:

1. ``suite``: the GPU suite (tests/test_gpu) and the CUDA build check
   (tests/test_stack/test_cuda_build.py); skipped tests are listed with their reasons;
2. ``train/<model>``: 20 iterations of ``tools/train.py --amp`` of each demo config on
   ``cuda:0``; the loss must go down (the mean of the last 5 logged losses below that of the
   first 5) and the log must show CUDA memory;
3. ``profile``: the per-layer profile of FLoRA and LoRA at the COCO Table-1 shape (Mask R-CNN,
   2 x 800 x 1333) on CUDA under fp16 autocast: ``auto``'s choice against each forced forward
   mode per layer group (:mod:`flora_mm.analysis.layer_profile`);
4. ``table4``: the ADE20K task of Table 4 (limit, FLoRA, LoRA; ``--device cuda --amp``),
   absolute step time and peak memory beside the paper's (:mod:`flora_mm.analysis.table4`).

``python -m flora_mm.testing.gpu_check --root REPO --out DIR`` runs them and writes
``DIR/report.md`` and a log per stage; its exit status is 1 when any stage (or the environment
setup the shell script did before, ``--setup-log`` / ``--setup-rc``) failed. Without a GPU it
says so and exits 0.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import os.path as osp
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

ITERS = 20
# 16 training images per tiny set, 4 per batch: 4 iterations per epoch for the detectors
DEMO_TRAIN = {
    'upernet': ('upernet_convnextv2-atto-flora_tiny-ade.py', [
        f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS + 1}',
        f'param_scheduler.0.end={ITERS}', f'default_hooks.checkpoint.interval={ITERS}']),
    'mask-rcnn': ('mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py', [
        f'train_cfg.max_epochs={ITERS // 4}', f'train_cfg.val_interval={ITERS // 4 + 1}',
        f'param_scheduler.1.T_max={ITERS // 4}', f'param_scheduler.1.end={ITERS // 4}',
        f'default_hooks.checkpoint.interval={ITERS // 4}']),
    'oriented-rcnn': ('oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py', [
        f'train_cfg.max_epochs={ITERS // 4}', f'train_cfg.val_interval={ITERS // 4 + 1}',
        f'param_scheduler.1.T_max={ITERS // 4}', f'param_scheduler.1.end={ITERS // 4}',
        f'default_hooks.checkpoint.interval={ITERS // 4}']),
}
TAIL_LINES = 40


@dataclass
class Stage:
    """A command and how to read its result.

    Attributes:
        name: Stage name in the report.
        cmd: The command (run in the repository root).
        timeout: Seconds before the stage (its whole process group) is killed.
        check: Called as ``check(log_text)`` after a zero exit; returns ``(ok, markdown)``.
        env: Extra environment variables.
    """

    name: str
    cmd: list
    timeout: float
    check: Callable[[str], tuple] | None = None
    env: dict = field(default_factory=dict)


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return '\n'.join(text.rstrip().splitlines()[-lines:])


def run_stage(stage: Stage, root: str, out: str) -> dict:
    """Run one stage; its output goes to ``out/<name>.log``.

    Returns:
        ``name``, ``status`` (``'passed'``, ``'failed'`` or ``'timed out'``), ``seconds``,
        ``returncode``, ``details`` (markdown: the check's summary, or the log's tail) and
        ``log``.
    """
    log = osp.join(out, stage.name.replace('/', '_') + '.log')
    start = time.time()
    with open(log, 'w') as f:
        proc = subprocess.Popen([str(c) for c in stage.cmd], cwd=root, stdout=f,
                                stderr=subprocess.STDOUT, env={**os.environ, **stage.env},
                                start_new_session=True)  # its own group: killed as a whole
        try:
            returncode = proc.wait(timeout=stage.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    with open(log) as f:
        text = f.read()
    result = dict(name=stage.name, seconds=round(time.time() - start, 1),
                  returncode=returncode, log=log)
    if returncode is None:
        status, details = 'timed out', f'killed after {stage.timeout:.0f} s; the log ends:\n\n' \
            f'```\n{_tail(text)}\n```'
    elif returncode != 0:
        status, details = 'failed', f'exit code {returncode}; the log ends:\n\n' \
            f'```\n{_tail(text)}\n```'
    elif stage.check is None:
        status, details = 'passed', ''
    else:
        try:
            ok, details = stage.check(text)
        except Exception as err:  # a result the check cannot read is a failed stage
            ok, details = False, f'could not read the result: {type(err).__name__}: {err}'
        status = 'passed' if ok else 'failed'
    return dict(result, status=status, details=details)


# ----------------------------------------------------------------------------- checks
def junit_summary(path: str) -> tuple:
    """``(ok, markdown)`` from a pytest JUnit XML: counts, failures and skip reasons."""
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    failed, skipped = [], {}
    for case in suite.iter('testcase'):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        for kind in ('failure', 'error'):
            node = case.find(kind)
            if node is not None:
                failed.append(f'- {name}: {(node.get("message") or "").splitlines()[0][:300]}')
        node = case.find('skipped')
        if node is not None:
            reason = node.get('message', '')
            skipped.setdefault(reason, []).append(name)
    passed = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    lines = [f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
             f"{counts['skipped']} skipped"]
    lines += failed
    lines += [f'- skipped ({len(names)}): {reason}' for reason, names in skipped.items()]
    return passed > 0 and not failed, '\n'.join(lines)


def loss_trend(work_dir: str, iters: int = ITERS, window: int = 5) -> dict:
    """The logged losses of a training run (mmengine's ``vis_data/scalars.json``).

    Returns:
        ``losses`` (by iteration), ``first`` / ``last`` (means of the first and last
        ``window``), ``down`` (last < first, all finite, ``iters`` of them), ``cuda_memory_mb``
        (the largest ``memory`` logged: mmengine logs it on CUDA only; None elsewhere) and
        ``s_per_iter`` (median ``time``).
    """
    # the last run's log, when the work directory holds several
    scalars = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    rows = []
    with open(scalars) as f:
        for line in f:
            row = json.loads(line)
            if 'loss' in row:
                rows.append(row)
    rows.sort(key=lambda r: r['step'])
    losses = [r['loss'] for r in rows]
    first = statistics.mean(losses[:window])
    last = statistics.mean(losses[-window:])
    memory = [r['memory'] for r in rows if 'memory' in r]
    return dict(losses=losses, first=first, last=last,
                down=len(losses) == iters and all(map(math.isfinite, losses)) and last < first,
                cuda_memory_mb=max(memory) if memory else None,
                s_per_iter=statistics.median(r['time'] for r in rows))


def train_check(work_dir: str) -> Callable[[str], tuple]:
    def check(_log: str) -> tuple:
        trend = loss_trend(work_dir)
        ok = trend['down'] and trend['cuda_memory_mb'] is not None
        return ok, (f"{len(trend['losses'])} iterations; loss {trend['first']:.3f} (mean of the "
                    f"first 5) -> {trend['last']:.3f} (last 5): "
                    f"{'down' if trend['down'] else 'NOT down'}; "
                    f"{trend['s_per_iter']:.3f} s/iter; CUDA memory "
                    + (f"{trend['cuda_memory_mb']} MB" if trend['cuda_memory_mb'] is not None
                       else 'not logged: the run was not on CUDA')
                    + '\n\nlosses: ' + ', '.join(f'{v:.3f}' for v in trend['losses']))
    return check


def profile_check(path: str, slack: float = 1.1) -> Callable[[str], tuple]:
    """Reads the layer profile's JSON: totals, and every group where ``auto`` took more than
    ``slack`` x the best forced mode (a choice to revisit on this GPU)."""
    def check(_log: str) -> tuple:
        from flora_mm.analysis.layer_profile import format_profile, format_steps
        with open(path) as f:
            report = json.load(f)
        labels = list(report['methods'])
        slow = []
        for row in report['rows']:
            for label in labels:
                forced = {m: row['ms'][f'{label}/{m}'] for m in ('factorized', 'merged')}
                best = min(forced, key=forced.get)
                if row['ms'][f'{label}/auto'] > slack * forced[best]:
                    slow.append(f"- {label}, {row['names'][0]} (x{row['count']}): auto picks "
                                f"{row['auto'][label]}, {row['ms'][f'{label}/auto']:.2f} ms; "
                                f'{best} {forced[best]:.2f} ms')
        verdict = (f'auto within {slack:.2f}x of the best forced mode in every group'
                   if not slow else f'auto slower than {slack:.2f}x the best forced mode in '
                   f'{len(slow)} group(s):\n' + '\n'.join(slow))
        return True, '\n\n'.join([verdict, format_profile(report['rows'], labels),
                                  format_steps(report['backbone_steps'])])
    return check


def table4_check(path: str, task: str = 'ade20k') -> Callable[[str], tuple]:
    """Reads Table 4's JSON: absolute step time and peak memory per method beside the
    paper's minutes per epoch and GB, and the ratio table."""
    def check(_log: str) -> tuple:
        from flora_mm.analysis.table4 import PAPER_TABLE4, format_table
        with open(path) as f:
            report = json.load(f)
        failed = [f'- {key}: {runs[-1]["error"][-300:]}' for key, runs in report['runs'].items()
                  if 'error' in runs[-1]]
        # the allocator's peak (max_memory_allocated); nvidia-smi, likely the paper's source,
        # also counts the allocator's cache and the CUDA context
        lines = ['| method | step (s/iter) | peak (GiB, allocator) | added by the step (GiB) | '
                 'paper time (min/epoch) | paper GPU (GB) |', '|---|---|---|---|---|---|']
        for key, runs in report['runs'].items():
            run = runs[-1]
            if 'error' in run:
                continue
            method = key.split('/')[1]
            paper = PAPER_TABLE4.get(task, {}).get(method)
            lines.append(f"| {method} | {run['step_s']:.3f} | {run['memory']['peak'] / 2**30:.2f} "
                         f"| {run['memory']['added'] / 2**30:.2f} | "
                         + (f'{paper[0]} | {paper[1]:.2f} |' if paper else '- | - |'))
        return not failed, '\n'.join(failed + lines) + '\n' + format_table(report['summary'])
    return check


# ----------------------------------------------------------------------------- the run
def default_stages(root: str, out: str, data: str) -> list[Stage]:
    """The four kinds of stages above, with their outputs under ``out``."""
    from flora_mm.analysis.table4 import config_path
    py = sys.executable
    stages = [Stage('suite', [py, '-m', 'pytest', 'tests/test_gpu',
                              'tests/test_stack/test_cuda_build.py', '-q', '-p',
                              'no:cacheprovider', f'--junitxml={out}/suite.xml'], 420)]
    stages[0].check = lambda _log: junit_summary(osp.join(out, 'suite.xml'))
    for model, (config, options) in DEMO_TRAIN.items():
        work_dir = osp.join(out, 'train', model)
        stages.append(Stage(
            f'train/{model}',
            [py, 'tools/train.py', osp.join('configs', 'demo', config), '--amp',
             '--work-dir', work_dir, '--cfg-options', *options,
             'default_hooks.logger.interval=1'],
            240, train_check(work_dir), env=dict(FLORA_MM_TINY_DATA=data,
                                                  CUDA_VISIBLE_DEVICES='0')))
    profile = osp.join(out, 'layer_profile_coco_cuda.json')
    stages.append(Stage(
        'profile', [py, 'tools/analysis/profile_adapter_layers.py',
                    f"FLoRA={config_path('coco', 'flora', 'configs')}",
                    f"LoRA={config_path('coco', 'lora', 'configs')}",
                    '--input-size', 800, 1333, '--batch-size', 2, '--device', 'cuda',
                    '--amp', 'float16', '--out', profile], 300, profile_check(profile)))
    table = osp.join(out, 'table4_ade20k_cuda.json')
    stages.append(Stage(
        'table4', [py, 'tools/analysis/benchmark_table4.py', '--tasks', 'ade20k', '--methods',
                   'limit', 'flora', 'lora', '--with-cp', 0, '--device', 'cuda', '--amp',
                   '--timeout', 240, '--out', table], 420, table4_check(table)))
    return stages


def environment(root: str) -> str:
    """The machine in one markdown list: GPU, torch / CUDA, mmcv's CUDA ops, commit."""
    import torch
    from mmcv.ops import get_compiling_cuda_version
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root,
                            capture_output=True, text=True).stdout.strip() or 'unknown'
    return '\n'.join([
        f'- GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible, '
        f'compute capability {".".join(map(str, torch.cuda.get_device_capability(0)))})',
        f'- torch {torch.__version__}, CUDA {torch.version.cuda}; mmcv ops compiled with CUDA: '
        f'{get_compiling_cuda_version()}',
        f'- commit {commit}, {time.strftime("%Y-%m-%d %H:%M:%S")}'])


def format_report(results: list[dict], header: str) -> str:
    """The report: a status table, then each stage's details."""
    lines = ['# GPU check', '', header, '', '| stage | status | seconds |', '|---|---|---|']
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']} |" for r in results]
    failed = [r['name'] for r in results if r['status'] != 'passed']
    lines += ['', f"**{len(results) - len(failed)} of {len(results)} stages passed**"
              + (f"; not passed: {', '.join(failed)}" if failed else '')]
    for r in results:
        lines += ['', f"## {r['name']}: {r['status']}", '', f"log: `{r['log']}`"]
        if r['details']:
            lines += ['', r['details']]
    return '\n'.join(lines) + '\n'


def run_check(stages: list[Stage], root: str, out: str, header: str = '',
              before: list[dict] = (), log=print) -> int:
    """Run ``stages`` in order, write ``out/report.md`` after each; 1 if any did not pass
    (``before``: results of earlier stages, e.g. the environment setup)."""
    results = list(before)
    for stage in stages:
        log(f'[gpu_check] {stage.name} ...')
        results.append(run_stage(stage, root, out))
        log(f"[gpu_check] {stage.name}: {results[-1]['status']} "
            f"({results[-1]['seconds']} s)")
        _write_text(osp.join(out, 'report.md'), format_report(results, header))
    return int(any(r['status'] != 'passed' for r in results))


def _write_text(path: str, text: str) -> None:
    from flora_mm.adapters import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def setup_result(log: str, returncode: int) -> dict:
    """The shell script's environment setup as a stage result."""
    text = open(log).read() if osp.exists(log) else ''
    return dict(name='setup', status='passed' if returncode == 0 else 'failed', seconds='-',
                returncode=returncode, log=log, details='' if returncode == 0 else
                f'exit code {returncode}; the log ends:\n\n```\n{_tail(text)}\n```')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='The first run on a GPU machine.')
    parser.add_argument('--root', default='.', help='the repository')
    parser.add_argument('--out', default='work_dirs/gpu_check')
    parser.add_argument('--setup-log', default=None)
    parser.add_argument('--setup-rc', type=int, default=0)
    args = parser.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print('[gpu_check] no CUDA GPU on this machine (torch.cuda.is_available() is False): '
              'nothing to check')
        return 0
    root, out = osp.abspath(args.root), osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    from flora_mm.testing import make_all
    data = osp.join(out, 'tiny_data')
    make_all(data)
    before = [setup_result(args.setup_log, args.setup_rc)] if args.setup_log else []
    status = run_check(default_stages(root, out, data), root, out, environment(root),
                       before)
    print(f"[gpu_check] report: {osp.join(out, 'report.md')}")
    return status


if __name__ == '__main__':
    sys.exit(main())
