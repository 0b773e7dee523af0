"""Training cost at the real sizes (the paper's Table 4): one iteration of the Table-1 configs.

Each measurement is one *job*: a config (with ``--cfg-options``-style overrides), built in a
fresh process (:func:`run_job`), trained for ``warmup + steps`` iterations on one synthetic
batch of the configs' input size with plausible ground truth (boxes with masks, rotated
boxes, a segmentation map; :func:`synthetic_batch`). An iteration is the real train step:
``model.train_step(data, optim_wrapper)`` (data preprocessor, losses, backward, clipping,
AdamW through mmengine's optimizer wrapper, ``flora_mm.AmpOptimWrapper`` with ``amp``).
Reported: the step times after warm-up and the peak memory the iterations add on top of the
built model (:func:`flora_mm.analysis.measure.peak_memory`: resident set size on CPU,
allocator peak on CUDA), warm-up included, so optimizer state and gradients count.

The table (:func:`run_table`) crosses tasks (Mask R-CNN on COCO at 1333x800, UperNet on
ADE20K at 512x512, Oriented R-CNN on DOTA at 1024x1024, all ConvNeXt-V2-L) with methods
(:data:`METHODS`) and ``with_cp``; ``limit`` is the frozen base with the backbone's input
requiring grad and its stages in train mode (drop path on, as under an adapter method), i.e.
the adapters' forward and activation gradients through every layer but no weight gradient:
what any adapter method must at least compute. Jobs run one process at a time, in rounds with a
rotated order so that drifts of a shared machine hit all methods alike, and every finished
job is merged into the JSON at once, so an interrupted table resumes where it stopped.

The floor of a method (:func:`summarize`) is the limit plus the method's own minimal work at
the limit's rate::

    floor_s = limit_s * (limit_macs + adapter_macs) / limit_macs
            = limit_s + adapter_macs / (limit_macs / limit_s)

* ``limit_s``: the limit's measured step time (median);
* ``limit_macs``: the multiply-accumulates of one whole limit train step, counted by torch's
  ``FlopCounterMode`` (:func:`~flora_mm.analysis.measure.mac_counter`) on an extra, untimed
  step of the limit job: every matmul / conv of the backbone's forward and input gradients
  and of the neck's and heads' forward, input and weight gradients. Elementwise work
  (norms, activations, the optimizer), RoIAlign, NMS, sampling and the data preprocessor
  are not MACs and not counted, but they are in ``limit_s``: ``limit_macs / limit_s`` is the
  whole step's average MAC rate, not the peak rate of the big convs;
* ``adapter_macs``: what the method's adapters add to that step, counted analytically per
  adapted layer at the shapes the layer sees in the step
  (:func:`flora_mm.adapters.cost.adapter_step_macs`: the cheaper of the factorized branch's
  forward and backward, ``3 A``, and the merged path's weight gradient plus its rebuild and
  the rebuild's backward, ``base + 3 R``; elementwise terms count one per element).

``step_s / floor_s`` says how close an implementation gets to its own arithmetic: 1 would be
adapters that cost exactly their MACs at the rate of the rest of the step (thin low-rank
matmuls and weight-space rebuilds usually run slower per MAC than the backbone's big ops).
"""
from __future__ import annotations

import copy
import json
import math
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .measure import peak_memory, rotated, write_json


@dataclass(frozen=True)
class Task:
    """A Table-1 task: config folder, file-name prefix and suffix, training input size and
    the smallest batch it trains with (UperNet's pooled 1x1 branch has a BatchNorm that needs
    two images)."""

    folder: str
    prefix: str
    suffix: str
    input_size: tuple  # (H, W)
    min_batch: int = 1


TASKS = {
    'coco': Task('mask-rcnn', 'mask-rcnn_convnextv2-l', '_fpn_1x_coco.py', (800, 1333)),
    'ade20k': Task('upernet', 'upernet_convnextv2-l', '_8xb2-160k_ade20k-512x512.py',
                   (512, 512), min_batch=2),
    'dota': Task('oriented-rcnn', 'oriented-rcnn-le90_convnextv2-l', '_fpn_1x_dota.py',
                 (1024, 1024)),
}
# method -> (configs/<folder>, name part); ``limit`` is ``frozen`` with input gradients.
METHODS = {
    'frozen': ('baselines', 'frozen'),
    'limit': ('baselines', 'frozen'),
    'flora': ('flora', 'flora-r42'),
    'lora': ('baselines', 'lora-r42'),
    'dora': ('baselines', 'dora-r42'),
    'loha': ('baselines', 'loha-r19'),
    'lokr': ('baselines', 'lokr-r180'),
    'full': ('baselines', 'full'),
}
# The paper's Table 4 (ConvNeXt-V2-L, ~6.5% parameters): minutes per epoch, GPU GB.
PAPER_TABLE4 = {
    'coco': {'lora': (70, 17.19), 'dora': (100, 30.67), 'flora': (77, 17.94)},
    'ade20k': {'lora': (53, 11.94), 'dora': (67, 17.36), 'flora': (60, 13.10)},
}
# FLoRA / LoRA <= 1.00 (time and memory), FLoRA / limit <= 1.10.
TARGETS = {'vs_lora': 1.00, 'vs_limit': 1.10}
NUM_OBJECTS = 12


def config_path(task: str, method: str, root: str) -> str:
    """The Table-1 config of a task and method under the configs root ``root`` (the
    repository's ``configs/``), e.g. ``<root>/flora/upernet/...-flora-r42...``."""
    spec, (folder, name) = TASKS[task], METHODS[method]
    return osp.join(root, folder, spec.folder, f'{spec.prefix}-{name}{spec.suffix}')


def table_jobs(tasks, methods, with_cp_values, *, root, device='cpu', amp=None,
               batch_size=None, warmup=1, steps=2, threads=None, count_macs=False) -> dict:
    """The jobs of a table, keyed ``'<task>/<method>/cp<0|1>'`` (see :func:`run_job`); the
    limit's jobs always count the MACs of a step (the floor needs them), the others when
    ``count_macs``."""
    jobs = {}
    for task in tasks:
        for cp in with_cp_values:
            for method in methods:
                jobs[f'{task}/{method}/cp{int(cp)}'] = dict(
                    config=config_path(task, method, root), with_cp=bool(cp),
                    input_grad=method == 'limit', input_size=list(TASKS[task].input_size),
                    device=device, amp=amp,
                    batch_size=batch_size or (None if device.startswith('cuda')
                                              else TASKS[task].min_batch),
                    warmup=warmup, steps=steps,
                    threads=threads, count_macs=count_macs or method == 'limit')
    return jobs


# ----------------------------------------------------------------------------- synthetic data
def _boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n`` boxes (x1, y1, x2, y2), sides 4% to 40% of the image, inside it."""
    bw = rng.uniform(0.04, 0.4, n) * w
    bh = rng.uniform(0.04, 0.4, n) * h
    x1 = rng.uniform(0, w - bw)
    y1 = rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)


def _ellipse_masks(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """One filled ellipse inscribed in each box, ``(n, h, w)`` uint8."""
    ys, xs = np.mgrid[:h, :w]
    masks = np.zeros((len(boxes), h, w), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        masks[i] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    return masks


def synthetic_batch(model, batch_size: int, input_size, seed: int = 0) -> dict:
    """One batch for ``model.train_step`` of an mmdet / mmseg / mmrotate model.

    Images are smooth random colour fields of ``input_size`` (H, W); ground truth has
    :data:`NUM_OBJECTS` objects: boxes with inscribed elliptical masks (models with a mask
    head), rotated boxes (le90) for rotated heads, a segmentation map of class rectangles for
    segmentors; labels cover the model's classes.

    Args:
        model: The built model (its head decides the kind of ground truth).
        batch_size: Images in the batch.
        input_size: ``(H, W)``.
        seed: Random seed.

    Returns:
        ``dict(inputs=[uint8 (3, H, W)], data_samples=[...])``.
    """
    h, w = input_size
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch_size):
        coarse = rng.integers(0, 256, (3, h // 32 + 1, w // 32 + 1)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(h, w),
                                              mode='bilinear', align_corners=False)[0]
        inputs.append(img.clamp(0, 255).to(torch.uint8))
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                    scale_factor=(1.0, 1.0), flip=False, flip_direction=None)
        samples.append(_sample(model, rng, h, w, meta))
    return dict(inputs=inputs, data_samples=samples)


def _sample(model, rng: np.random.Generator, h: int, w: int, meta: dict):
    if hasattr(model, 'decode_head'):  # mmseg segmentor
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        num_classes = model.decode_head.num_classes
        seg = np.full((h, w), rng.integers(num_classes), np.int64)
        for x1, y1, x2, y2 in _boxes(rng, NUM_OBJECTS, h, w).astype(int):
            seg[y1:y2, x1:x2] = rng.integers(num_classes)
        sample = SegDataSample(metainfo=meta)
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(seg)[None])
        return sample
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    bbox_head = model.roi_head.bbox_head
    instances = InstanceData()
    boxes = _boxes(rng, NUM_OBJECTS, h, w)
    instances.labels = torch.from_numpy(rng.integers(bbox_head.num_classes, size=NUM_OBJECTS))
    if getattr(bbox_head, 'predict_box_type', 'hbox') == 'rbox':
        from mmrotate.structures.bbox import RotatedBoxes
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        sides = (boxes[:, 2:] - boxes[:, :2]) * 0.7
        angles = rng.uniform(-np.pi / 2, np.pi / 2, (NUM_OBJECTS, 1)).astype(np.float32)
        instances.bboxes = RotatedBoxes(torch.from_numpy(
            np.concatenate([centers, sides, angles], 1)))
    else:
        from mmdet.structures.bbox import HorizontalBoxes
        instances.bboxes = HorizontalBoxes(torch.from_numpy(boxes))
        if getattr(model.roi_head, 'with_mask', False):
            from mmdet.structures.mask import BitmapMasks
            instances.masks = BitmapMasks(_ellipse_masks(boxes, h, w), h, w)
    sample = DetDataSample(metainfo=meta)
    sample.gt_instances = instances
    return sample


# ----------------------------------------------------------------------------- one job
def _backbone_counts(model) -> dict:
    from flora_mm.adapters import count_adapter_params
    backbone = model.backbone
    return {'backbone_trainable': sum(p.numel() for p in backbone.parameters()
                                      if p.requires_grad),
            'backbone_total': sum(p.numel() for p in backbone.parameters()),
            'adapter_params': count_adapter_params(backbone)['total'],
            'model_trainable': sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _record_shapes(backbone: nn.Module) -> tuple[dict, list]:
    """Hooks recording the input and output shape of every conv / linear of the backbone on
    its first call."""
    shapes, handles = {}, []

    def hook(name):
        def record(module, args, output):
            shapes.setdefault(name, (tuple(args[0].shape), tuple(output.shape)))
        return record
    for name, module in backbone.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(module.register_forward_hook(hook(name)))
    return shapes, handles


def _macs(backbone: nn.Module, shapes: dict) -> dict:
    """Forward MACs of the backbone's convs / linears and the adapters' own work in a train
    step (:func:`flora_mm.adapters.cost.adapter_step_macs`), at the recorded shapes."""
    from flora_mm.adapters import adapter_layers
    from flora_mm.adapters.cost import adapter_step_macs
    base = 0
    for name, (_, out_shape) in shapes.items():
        weight = backbone.get_submodule(name).weight
        base += math.prod(out_shape) // out_shape[-1 if weight.dim() == 2 else 1] * weight.numel()
    paths, adapter = {}, 0
    for name, layer in adapter_layers(backbone).items():
        step = adapter_step_macs(layer, shapes[name][0])
        adapter += step.macs
        paths[step.path] = paths.get(step.path, 0) + 1
    return dict(backbone_forward_macs=base, adapter_macs=adapter, adapter_paths=paths)


def _count_step(model, optim_wrapper, data) -> dict:
    """MACs of one more train step (untimed), the whole model. (Not per module: torch's
    module tracker attributes backward ops to the wrong modules.)"""
    from .measure import mac_counter
    with mac_counter() as counter:
        model.train_step(copy.deepcopy(data), optim_wrapper)
    return dict(step_macs=counter.get_total_flops() // 2)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def prepare_job(job: dict) -> tuple:
    """Build a job's model (train mode, on its device), optimizer wrapper and batch.

    Args:
        job: ``config`` (path), ``cfg_options`` (dict, optional), ``with_cp``, ``input_grad``
            (the backbone's input requires grad: the ``limit`` column), ``input_size``
            ``[H, W]``, ``device``, ``amp`` (None, ``'float16'`` or ``'bfloat16'``) and
            ``batch_size`` (None: 1 on CPU, the config's ``train_dataloader.batch_size`` on
            CUDA).

    Returns:
        ``(model, optim_wrapper, data)``.
    """
    from mmengine.optim import build_optim_wrapper

    from flora_mm.apis import build_model, enable_amp, load_config
    device = torch.device(job.get('device', 'cpu'))
    cfg = load_config(job['config'], cfg_options=job.get('cfg_options'))
    cfg.model.backbone.pretrained = None  # random weights time the same
    cfg.model.backbone.with_cp = bool(job.get('with_cp'))
    if job.get('amp'):
        enable_amp(cfg)
        cfg.optim_wrapper.dtype = job['amp']
    batch_size = job.get('batch_size') or (
        cfg.train_dataloader.batch_size if device.type == 'cuda' else 1)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    if job.get('input_grad'):
        # the adapters' forward without the adapters: stages a frozen backbone would run in
        # eval mode run in train mode (drop path on), as under an adapter method
        nn.Module.train(model.backbone, True)
        model.backbone.register_forward_pre_hook(
            lambda _, args: (args[0].detach().requires_grad_(True), *args[1:]))
    return model, optim_wrapper, synthetic_batch(model, batch_size, job['input_size'])


def run_job(job: dict) -> dict:
    """Run a job's iterations and measure them (see :func:`prepare_job` for the keys; also
    ``warmup``, ``steps``, ``threads``, None for torch's default, and ``count_macs``: count
    one more, untimed step's MACs).

    Returns:
        ``samples_s`` (step times after warm-up), ``step_s`` (their median), ``memory``
        (``before`` / ``peak`` / ``added`` bytes), ``losses`` (total loss per iteration),
        parameter counts, the effective settings, ``backbone_forward_macs`` (the backbone's
        convs / linears at the shapes of the step), ``adapter_macs`` and ``adapter_paths``
        (the adapters' own step work and how many layers take which path, see the module
        docstring) and with ``count_macs`` ``step_macs`` (counted).
    """
    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    device = torch.device(job.get('device', 'cpu'))
    model, optim_wrapper, data = prepare_job(job)
    samples, losses = [], []
    shapes, hooks = _record_shapes(model.backbone)
    with peak_memory(device) as memory:
        for i in range(job.get('warmup', 1) + job.get('steps', 2)):
            if i == 1:
                for handle in hooks:
                    handle.remove()
            batch = copy.deepcopy(data)  # the preprocessor pads masks in place
            _sync(device)
            start = time.perf_counter()
            log_vars = model.train_step(batch, optim_wrapper)
            _sync(device)
            if i >= job.get('warmup', 1):
                samples.append(time.perf_counter() - start)
            losses.append(float(log_vars['loss']))
    counted = _count_step(model, optim_wrapper, data) if job.get('count_macs') else {}
    return dict(samples_s=samples, step_s=statistics.median(samples), memory=memory,
                losses=losses, batch_size=len(data['inputs']),
                input_size=list(job['input_size']), threads=torch.get_num_threads(),
                device=str(device), **_backbone_counts(model), **_macs(model.backbone, shapes),
                **counted)


def run_job_subprocess(job: dict, timeout: float | None = None) -> dict:
    """:func:`run_job` in a fresh Python process (clean peak memory); errors are returned as
    ``{'error': ...}`` with the end of the child's output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'result.json')
        cmd = [sys.executable, '-m', 'flora_mm.analysis.table4', json.dumps(job), out]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {'error': f'timed out after {timeout} s'}
        if proc.returncode != 0 or not osp.exists(out):
            return {'error': f'exit code {proc.returncode}: '
                             f'{(proc.stdout + proc.stderr)[-3000:]}'}
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- the table
def _load(path: str) -> dict:
    if osp.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def run_table(jobs: dict, out: str, rounds: int = 1, timeout: float | None = None,
              log=print) -> dict:
    """Run every job ``rounds`` times (fresh process each, rotated order per round), merging
    each result into ``out`` at once; jobs that already have enough runs there are skipped.

    Args:
        jobs: From :func:`table_jobs` (or hand-made, same keys).
        out: The JSON file (created or resumed).
        rounds: Runs per job.
        timeout: Seconds per run.
        log: Progress printer.

    Returns:
        The report: ``meta``, ``runs`` (key -> list of run results) and ``summary``.
    """
    report = _load(out)
    report.setdefault('runs', {})
    report['meta'] = dict(torch=torch.__version__, machine=platform.processor()
                          or platform.machine(), cpus=os.cpu_count(), targets=TARGETS,
                          jobs={**report.get('meta', {}).get('jobs', {}), **jobs})
    keys = list(jobs)
    for r in range(rounds):
        for key in rotated(keys, r):
            runs = report['runs'].setdefault(key, [])
            if len([run for run in runs if 'error' not in run]) > r:
                continue
            start = time.time()
            result = run_job_subprocess(jobs[key], timeout)
            result['wall_s'] = time.time() - start
            result['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
            runs.append(result)
            report['summary'] = summarize(report['runs'])
            write_json(out, report)
            if 'error' in result:
                log(f'[table4] {key} round {r}: FAILED {result["error"][-500:]}')
            else:
                log(f'[table4] {key} round {r}: step {result["step_s"]:.2f} s, peak '
                    f'+{result["memory"]["added"] / 2**30:.2f} GiB '
                    f'({result["wall_s"]:.0f} s wall)')
    report['summary'] = summarize(report['runs'])
    write_json(out, report)
    return report


def summarize(runs: dict) -> dict:
    """Per task and ``with_cp``: median step time and peak memory per method (over all runs'
    samples), their ratios to LoRA and to the limit, and the targets' verdicts."""
    cells: dict = {}
    for key, results in runs.items():
        task, method, cp = key.split('/')
        ok = [r for r in results if 'error' not in r]
        if not ok:
            continue
        cells.setdefault(f'{task}/{cp}', {})[method] = dict(
            step_s=statistics.median(s for r in ok for s in r['samples_s']),
            mem_gib=statistics.median(r['memory']['added'] for r in ok) / 2**30,
            runs=len(ok), backbone_trainable=ok[0]['backbone_trainable'],
            adapter_params=ok[0]['adapter_params'],
            backbone_forward_macs=ok[0].get('backbone_forward_macs'),
            adapter_macs=ok[0].get('adapter_macs'),
            step_macs=next((r['step_macs'] for r in ok if 'step_macs' in r), None))
    summary = {}
    for cell, methods in cells.items():
        entry = {'methods': methods, 'ratios': {}, 'targets': {}}
        for ref in ('lora', 'limit'):
            if ref not in methods:
                continue
            for method, values in methods.items():
                entry['ratios'].setdefault(method, {})[f'step_vs_{ref}'] = (
                    values['step_s'] / methods[ref]['step_s'])
                entry['ratios'][method][f'mem_vs_{ref}'] = (
                    values['mem_gib'] / methods[ref]['mem_gib'] if methods[ref]['mem_gib']
                    else None)
        _floors(methods, entry['ratios'])
        flora = entry['ratios'].get('flora', {})
        for ref, limit in TARGETS.items():
            for quantity in ('step', 'mem'):
                value = flora.get(f'{quantity}_{ref}')
                if value is not None:
                    entry['targets'][f'flora_{quantity}_{ref}'] = dict(
                        value=value, target=limit, met=value <= limit)
        summary[cell] = entry
    return summary


def _floors(methods: dict, ratios: dict) -> None:
    """Add ``floor_s`` to the limit and every adapter method, ``step_vs_floor`` and the
    adapters' MACs relative to the limit step's (see the module docstring)."""
    limit = methods.get('limit', {})
    if not limit.get('step_macs'):
        return
    for method, values in methods.items():
        if method != 'limit' and not values.get('adapter_params'):
            continue  # frozen / full: not an adapter, no floor
        extra = values.get('adapter_macs') or 0
        values['floor_s'] = limit['step_s'] * (limit['step_macs'] + extra) / limit['step_macs']
        ratios.setdefault(method, {})['step_vs_floor'] = values['step_s'] / values['floor_s']
        ratios[method]['adapter_macs_vs_limit'] = extra / limit['step_macs']
        if limit.get('backbone_forward_macs'):  # the limit's backbone: forward + input grads
            ratios[method]['adapter_macs_vs_limit_backbone'] = (
                extra / (2 * limit['backbone_forward_macs']))


def format_table(summary: dict, methods=tuple(METHODS)) -> str:
    """A markdown table per task / ``with_cp`` cell, with the paper's ratios beside ours."""
    lines = []
    for cell in sorted(summary):
        task, cp = cell.split('/')
        entry = summary[cell]
        lines += [f'\n**{task}, with_cp={cp == "cp1"}**\n',
                  '| method | backbone trainable | step (s) | / LoRA | / limit | floor (s) | '
                  '/ floor | peak added (GiB) | / LoRA | / limit | paper time / LoRA | '
                  'paper GPU / LoRA |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        paper = PAPER_TABLE4.get(task, {})
        for method in methods:
            values = entry['methods'].get(method)
            if values is None:
                continue
            ratios = entry['ratios'].get(method, {})
            ref = paper.get('lora')
            ours = [_num(ratios.get(k)) for k in ('step_vs_lora', 'step_vs_limit')]
            mem = [_num(ratios.get(k)) for k in ('mem_vs_lora', 'mem_vs_limit')]
            paper_cols = ([_num(paper[method][0] / ref[0]), _num(paper[method][1] / ref[1])]
                          if method in paper and ref else ['-', '-'])
            floor = values.get('floor_s')
            floor_cols = ['-', '-'] if floor is None else [f'{floor:.2f}',
                                                          _num(ratios['step_vs_floor'])]
            lines.append(f'| {method} | {values["backbone_trainable"]:,} | '
                         f'{values["step_s"]:.2f} | {ours[0]} | {ours[1]} | '
                         f'{floor_cols[0]} | {floor_cols[1]} | '
                         f'{values["mem_gib"]:.2f} | {mem[0]} | {mem[1]} | '
                         f'{paper_cols[0]} | {paper_cols[1]} |')
        verdicts = [f'{k} {v["value"]:.3f} (<= {v["target"]:.2f}: {"met" if v["met"] else "MISSED"})'
                    for k, v in entry['targets'].items()]
        if verdicts:
            lines.append('\nTargets: ' + '; '.join(verdicts))
        limit = entry['methods'].get('limit', {})
        if limit.get('step_macs'):
            shares = []
            for method in methods:
                ratios = entry['ratios'].get(method, {})
                if method != 'limit' and 'adapter_macs_vs_limit' in ratios:
                    shares.append(f'{method} {100 * ratios["adapter_macs_vs_limit"]:.1f}% ('
                                  f'{100 * ratios.get("adapter_macs_vs_limit_backbone", 0):.1f}%)')
            lines.append(f'\nLimit step: {limit["step_macs"] / 1e9:.1f} GMACs counted; adapter '
                         'MACs vs the limit step (vs its backbone, forward + input gradients): '
                         + ', '.join(shares))
    return '\n'.join(lines)


def _num(value) -> str:
    return '-' if value is None else f'{value:.3f}'


def _child(argv: list[str]) -> None:
    job, out = json.loads(argv[0]), argv[1]
    result = run_job(job)
    write_json(out, result)


if __name__ == '__main__':
    _child(sys.argv[1:])
