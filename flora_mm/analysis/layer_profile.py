"""Per-layer profile of the adapted layers of a model at its real input size.

Finds where an adapter method's train step spends its time beyond the frozen base: every
adapted layer of the model's backbone is recorded with the input it sees in one forward pass
of the real input size (:func:`layer_inputs`); layers with the same weight geometry and input
shape form one group (a ConvNeXt stage has one group per layer kind). Each group is then timed
alone (:func:`time_layer`): forward + backward of a fresh copy of the layer on a random input
that requires grad (as inside the network), for

* ``limit``: the frozen base layer (input gradient only, what any adapter must compute);
* every adapter method given (e.g. the FLoRA and LoRA configs of a table) in each forward mode
  (``auto``, ``factorized``, ``merged``), with the mode ``auto`` picks.

Times are medians over ``repeats`` interleaved rounds; group totals multiply by the number of
layers in the group. Everything runs on one ``device`` (the CPU or a GPU, synchronised around
each timing), optionally under autocast (``amp``: ``'float16'`` / ``'bfloat16'``, how
``--amp`` trains). :func:`format_profile` prints the groups and the totals, and the
difference between ``auto`` and the best forced mode per group (what a better choice would
save).
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn

from flora_mm.adapters import FORWARD_MODES, AdapterLayer, adapter_layers
from flora_mm.adapters.wrapping import unwrap_layer, wrap_layer

from .measure import median_ms, rotated


def memory_format(x: torch.Tensor) -> str:
    """``'channels_last'`` for a 4-D tensor stored NHWC (as ConvNeXt's depthwise convs get
    their inputs, after the MLP's permute), else ``'contiguous'``; the CPU kernels' speed
    differs a lot between the two."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return 'channels_last'
    return 'contiguous'


def random_input(shape, fmt: str, device='cpu') -> torch.Tensor:
    """A random input of ``shape`` in memory format ``fmt`` (see :func:`memory_format`)."""
    x = torch.randn(shape, device=device)
    if fmt == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def layer_inputs(model: nn.Module, inputs: torch.Tensor) -> 'OrderedDict[str, tuple]':
    """The input shape and memory format of every adapted layer of ``model`` in one no-grad
    forward.

    Args:
        model: A model (e.g. a backbone) with adapted layers.
        inputs: Its input batch.

    Returns:
        Layer name -> ``(shape, memory format)``, in call order (layers that did not run are
        left out).
    """
    shapes: 'OrderedDict[str, tuple]' = OrderedDict()

    def record(name: str):
        def hook(_, args) -> None:
            shapes.setdefault(name, (tuple(args[0].shape), memory_format(args[0])))
        return hook

    handles = [layer.register_forward_pre_hook(record(name))
               for name, layer in adapter_layers(model).items()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def group_layers(model: nn.Module, shapes: dict) -> list[dict]:
    """Group layers by (base class, weight shape, conv geometry, input shape and format).

    Returns:
        ``[{'names': [...], 'layer': first layer, 'input_shape': ..., 'memory_format': ...}]``
        in call order.
    """
    layers = adapter_layers(model)
    groups: 'OrderedDict[tuple, dict]' = OrderedDict()
    for name, (shape, fmt) in shapes.items():
        layer = layers[name]
        geometry = tuple(getattr(layer, attr, None) for attr in
                         ('stride', 'padding', 'dilation', 'groups', 'padding_mode'))
        key = (layer.adapter_base_class, tuple(layer.weight.shape), geometry, shape, fmt)
        groups.setdefault(key, {'names': [], 'layer': layer, 'input_shape': shape,
                                'memory_format': fmt})
        groups[key]['names'].append(name)
    return list(groups.values())


def plain_copy(layer: AdapterLayer) -> nn.Module:
    """A frozen copy of ``layer``'s base layer, without its adapter."""
    base = unwrap_layer(copy.deepcopy(layer))
    base.requires_grad_(False)
    return base


def variant(base: nn.Module, method: dict | None, mode: str = 'auto') -> nn.Module:
    """A copy of the frozen ``base`` with ``method`` (``wrap_layer`` arguments: ``method``,
    ``rank``, ``scale`` and the method's options, e.g. ``kernel_rank``) in forward ``mode``, or
    the bare base for None."""
    layer = copy.deepcopy(base)
    if method is None:
        return layer
    options = {k: v for k, v in method.items() if k not in ('method', 'rank', 'scale')}
    layer = wrap_layer(layer, method['method'], rank=method['rank'], options=options,
                       scale=method.get('scale'), forward_mode=mode)
    with torch.no_grad():  # FLoRA's core and LoRA's B start at zero: time real values
        for _, param in layer.adapter_named_parameters():
            param.normal_(0, 0.02)
    return layer


def auto_choice(layer: AdapterLayer, x: torch.Tensor) -> str:
    """The forward mode ``auto`` takes for ``x`` in a train step."""
    return 'factorized' if layer._use_factorized(x) else 'merged'


def autocast(device: torch.device, amp: str | None):
    """Autocast to ``amp`` (a dtype name) on ``device``'s type, or nothing for None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp))


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_layer(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor,
               amp: str | None = None) -> float:
    """Seconds of one forward + backward of ``layer`` on ``x`` (which requires grad; its
    gradient is reset first), under autocast to ``amp`` if given."""
    x.grad = None
    _sync(x.device)
    start = time.perf_counter()
    with autocast(x.device, amp):
        out = layer(x)
    out.backward(grad)
    _sync(x.device)
    return time.perf_counter() - start


def interleaved(runs: dict, repeats: int, warmup: int = 1) -> dict:
    """Call every run ``warmup + repeats`` times, one round at a time, each round in another
    order (:func:`~flora_mm.analysis.measure.rotated`), so that drifts hit all runs alike.

    Args:
        runs: Label -> callable returning the seconds it measured.
        repeats: Timed rounds.
        warmup: Untimed rounds first.

    Returns:
        Label -> the timed samples.
    """
    samples = {label: [] for label in runs}
    for round_ in range(warmup + repeats):
        for label in rotated(list(runs), round_):
            seconds = runs[label]()
            if round_ >= warmup:
                samples[label].append(seconds)
    return samples


def profile_groups(groups: list[dict], methods: dict, repeats: int = 5, warmup: int = 1,
                   device='cpu', amp: str | None = None) -> list[dict]:
    """Time every group for ``limit`` and each method in each forward mode.

    Args:
        groups: From :func:`group_layers`.
        methods: Label -> ``wrap_layer`` arguments (``method``, ``rank``, ``scale`` and the
            method's options, see :func:`method_of`).
        repeats: Timed rounds (variants interleaved, see :func:`interleaved`).
        warmup: Untimed rounds first.
        device: Where the layers run.
        amp: Autocast dtype name (``'float16'``, ``'bfloat16'``) or None.

    Returns:
        One row per group: ``names``, ``count``, ``weight_shape``, ``input_shape``, ``ms``
        (variant -> median ms per layer) and ``auto`` (method label -> chosen mode).
    """
    device = torch.device(device)
    rows = []
    for group in groups:
        base = plain_copy(group['layer']).to(device)
        x = random_input(group['input_shape'], group['memory_format'],
                         device).requires_grad_(True)
        with torch.no_grad(), autocast(device, amp):
            grad = torch.randn_like(base(x))  # in the output's memory format and dtype
        variants = {'limit': variant(base, None)}
        auto = {}
        for label, method in methods.items():
            for mode in FORWARD_MODES:
                variants[f'{label}/{mode}'] = variant(base, method, mode)
            with torch.enable_grad(), autocast(device, amp):
                auto[label] = auto_choice(variants[f'{label}/auto'], x)
        samples = interleaved({key: partial(time_layer, layer, x, grad, amp)
                               for key, layer in variants.items()}, repeats, warmup)
        rows.append(dict(names=group['names'], count=len(group['names']),
                         weight_shape=list(base.weight.shape), input_shape=list(x.shape),
                         memory_format=group['memory_format'],
                         ms={k: median_ms(v) for k, v in samples.items()},
                         auto=auto))
    return rows


def totals(rows: list[dict]) -> dict:
    """Sum over groups of ``count * ms`` per variant, plus per method the best forced mode
    per group (``<label>/best``)."""
    total: dict = {}
    for row in rows:
        for key, ms in row['ms'].items():
            total[key] = total.get(key, 0.) + row['count'] * ms
        for label in row['auto']:
            best = min(row['ms'][f'{label}/{m}'] for m in FORWARD_MODES if m != 'auto')
            total[f'{label}/best'] = total.get(f'{label}/best', 0.) + row['count'] * best
    return total


def format_profile(rows: list[dict], labels: list[str]) -> str:
    """A markdown table per group (ms per layer) and the totals (ms per step)."""
    head = ['layers', 'n', 'weight', 'input', 'limit']
    for label in labels:
        head += [f'{label} auto', f'{label} fact.', f'{label} merged']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        cells = [row['names'][0] + (' ...' if row['count'] > 1 else ''), str(row['count']),
                 'x'.join(map(str, row['weight_shape'])),
                 'x'.join(map(str, row['input_shape']))
                 + (' NHWC' if row['memory_format'] == 'channels_last' else ''),
                 f'{row["ms"]["limit"]:.1f}']
        for label in labels:
            ms = row['ms']
            cells += [f'{ms[f"{label}/auto"]:.1f} ({row["auto"][label][0]})',
                      f'{ms[f"{label}/factorized"]:.1f}', f'{ms[f"{label}/merged"]:.1f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    total = totals(rows)
    lines += ['', '| total (ms per step) | limit | ' + ' | '.join(
        f'{label} auto | {label} best mode per group' for label in labels) + ' |',
        '|---|' + '---|' * (1 + 2 * len(labels)),
        f'| adapted layers | {total["limit"]:.0f} | ' + ' | '.join(
            f'{total[f"{label}/auto"]:.0f} | {total[f"{label}/best"]:.0f}' for label in labels)
        + ' |']
    return '\n'.join(lines)


def backbone_steps(backbones: dict, inputs: torch.Tensor, repeats: int = 3,
                   input_grad: tuple = ('limit',), amp: str | None = None) -> dict:
    """Forward + backward of whole backbones in one process, interleaved: the in-network
    counterpart of the per-layer times, free of the process-to-process drift of separate runs.

    Args:
        backbones: Label -> backbone in train mode (same base weights for a fair comparison).
        inputs: The batch (on the backbones' device); the loss is the mean square of every
            output.
        repeats: Timed rounds after one untimed round (see :func:`interleaved`).
        input_grad: Labels whose input requires grad (the frozen base as the limit).
        amp: Autocast dtype name or None.

    Returns:
        Label -> step times in seconds.
    """
    def step(model: nn.Module, requires_grad: bool) -> float:
        x = inputs.detach().requires_grad_(requires_grad)
        _sync(x.device)
        start = time.perf_counter()
        with autocast(x.device, amp):
            outs = model(x)
        sum(out.float().pow(2).mean() for out in outs).backward()
        _sync(x.device)
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    return interleaved({label: partial(step, model, label in input_grad)
                        for label, model in backbones.items()}, repeats)


def method_of(model: nn.Module) -> dict:
    """The ``wrap_layer`` arguments of a model's adapters (read from its first adapted layer)."""
    layer = next(iter(adapter_layers(model).values()))
    return dict(layer.adapter_options, method=layer.adapter_type, rank=layer.adapter_rank,
                scale=layer.adapter_scale)


def profile_configs(configs: dict, input_size, batch_size: int = 1, repeats: int = 5,
                    cfg_options: dict | None = None, device='cpu',
                    amp: str | None = None) -> dict:
    """Profile the backbone layers of configs that differ in the adapter method only; the whole
    backbones are also timed, with the limit (the first config's backbone frozen, input
    requiring grad, every stage in train mode).

    Args:
        configs: Label -> config path (e.g. ``{'FLoRA': ..., 'LoRA': ...}``); the first one's
            backbone gives the layer inputs, every one its method.
        input_size: ``(H, W)`` of the backbone input.
        batch_size: Images per batch.
        repeats: Timed rounds per group.
        cfg_options: Overrides for every config.
        device: Where everything runs (e.g. ``'cuda'``).
        amp: Autocast dtype name (``'float16'``, ``'bfloat16'``) or None.

    Returns:
        ``{'methods': label -> method, 'rows': profile_groups rows, 'totals': totals,
        'backbone_steps': label -> whole-backbone step times (s), 'limit' first}``.
    """
    from flora_mm.apis import build_model, load_config
    methods, backbones = {}, {}
    for label, path in [('limit', next(iter(configs.values())))] + list(configs.items()):
        cfg = load_config(path, cfg_options=cfg_options)
        cfg.model.backbone.pretrained = None
        if label == 'limit':
            cfg.model.backbone.adapter = dict(type='Frozen')
        torch.manual_seed(0)  # the same base weights for every method
        backbones[label] = nn.Module.train(build_model(cfg, cfg.model.backbone).to(device),
                                           True)
        if label != 'limit':
            methods[label] = method_of(backbones[label])
    inputs = torch.randn(batch_size, 3, *input_size, device=device)
    first = backbones[next(iter(configs))]
    rows = profile_groups(group_layers(first, layer_inputs(first, inputs)), methods,
                          repeats=repeats, device=device, amp=amp)
    steps = backbone_steps(backbones, inputs, repeats, amp=amp)
    return dict(methods=methods, rows=rows, totals=totals(rows), backbone_steps=steps)


def format_steps(steps: dict) -> str:
    """Median whole-backbone step per label, its ratio to the last label's and to the
    limit's (when there is one)."""
    medians = {label: statistics.median(v) for label, v in steps.items()}
    refs = [ref for ref in ('limit', list(medians)[-1]) if ref in medians]
    return '\n'.join(f'backbone forward + backward, {label}: {m:.2f} s median of '
                     f'{len(steps[label])} ('
                     + ', '.join(f'{m / medians[ref]:.3f}x {ref}' for ref in refs) + ')'
                     for label, m in medians.items())
