"""Build-time adaptation of a whole model: inject, freeze, and report what changed."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch.nn as nn

from .budget import count_adapter_params
from .inject import POLICY_METHODS, adapter_layers, freeze_base, inject_adapters
from .registry import ADAPTERS_POLICY


@dataclass
class AdaptReport:
    """What :func:`adapt_model` did, as data for the caller to log.

    Attributes:
        method: ``adapter['type']``; None when only ``trainable`` was applied or nothing was.
        injected: Layers adapted by this call.
        existing: Layers that had an adapter already and kept it.
        refrozen: Parameters meant to train that the model's own ``train()`` froze again.
        changed: Whether the set of trainable parameters changed.
        trainable: Trainable parameter elements afterwards.
        total: All parameter elements.
        scales: The distinct effective scales ``s`` of the injected layers (LoRA / DoRA:
            alpha / rank).
    """

    method: str | None
    injected: list[str]
    existing: list[str]
    refrozen: list[str]
    changed: bool
    trainable: int
    total: int
    scales: list[float]

    def summary(self) -> str:
        """One line: what was injected and how much of the model trains."""
        if self.method in POLICY_METHODS:
            head = f'{self.method} freeze policy (nothing injected)'
        elif self.method is not None:
            head = f'{self.method} injected into {len(self.injected)} layers'
            if self.scales:
                head += f' (scale {", ".join(f"{s:g}" for s in self.scales)})'
            if self.existing:
                head += f' ({len(self.existing)} were adapted already)'
        else:
            head = 'no adapter injected'
        return f'{head}; {self.trainable:,} of {self.total:,} parameters trainable'

    def refrozen_warning(self) -> str:
        """Explain :attr:`refrozen` (empty string when nothing was re-frozen)."""
        if not self.refrozen:
            return ''
        more = ' ...' if len(self.refrozen) > 8 else ''
        return (f"{len(self.refrozen)} parameters are re-frozen by the model's own train() "
                f'(e.g. mmdet ResNet frozen_stages) and stay frozen: {self.refrozen[:8]}{more}; '
                'exclude them from the adapter targets or lower frozen_stages')


def adapt_model(model: nn.Module, adapter: Mapping | None = None,
                trainable: Sequence[str] = ()) -> AdaptReport:
    """Inject ``adapter`` where no adapter exists yet and apply its freeze policy, in place.

    Layers adapted earlier (e.g. by a backbone at construction) keep their adapter. Some
    modules reset ``requires_grad`` in ``train()`` (mmdet ResNet's ``frozen_stages``), which a
    training loop calls every iteration: that is settled here, so the trainable set reported
    is the one that will really train.

    Args:
        model: Any ``nn.Module``.
        adapter: An :func:`inject_adapters` config; None injects nothing.
        trainable: Regexes (fullmatch on parameter or module names) that stay trainable. With
            ``adapter=None`` the existing adapters plus ``trainable`` are kept; with neither,
            ``requires_grad`` is left as the model set it. Submodules may add their own: the
            regexes of a ``keep_trainable`` attribute (relative to that submodule, e.g. the
            output norms of a dense-prediction backbone) stay trainable under every policy.

    Returns:
        The report.

    Raises:
        ValueError: From :func:`inject_adapters` / :func:`freeze_base` for a bad config.
    """
    was_trainable = trainable_ids(model)
    existing = sorted(adapter_layers(model))
    injected: list[str] = []
    method = None
    keep = list(trainable) + _kept_by_modules(model)
    if adapter is not None:
        cfg = dict(adapter)
        cfg['exclude'] = list(cfg.get('exclude') or []) + [re.escape(n) for n in existing]
        injected = list(inject_adapters(model, cfg))
        method = cfg['type']
        freeze_base(model, method, keep)
    elif trainable:
        freeze_base(model, ADAPTERS_POLICY, keep)
    refrozen = []
    if adapter is not None or trainable:
        intended = trainable_ids(model)
        model.train(model.training)
        refrozen = [n for n, p in model.named_parameters()
                    if id(p) in intended and not p.requires_grad]
    counts = count_adapter_params(model)
    layers = adapter_layers(model)
    return AdaptReport(method=method, injected=injected, existing=existing, refrozen=refrozen,
                       changed=trainable_ids(model) != was_trainable,
                       trainable=counts['trainable'], total=counts['model_total'],
                       scales=sorted({layers[n].adapter_scale for n in injected}))


def param_table(model: nn.Module) -> str:
    """Trainable / adapter / total parameters per top-level module, and in total."""
    rows = [('module', 'params', 'trainable', 'adapter', '% trainable')]
    groups = [(name, list(child.parameters()), child) for name, child in model.named_children()]
    own = [p for _, p in model.named_parameters(recurse=False)]
    if own:
        groups.append(('(root)', own, None))
    for name, params, child in groups:
        n = sum(p.numel() for p in params)
        t = sum(p.numel() for p in params if p.requires_grad)
        a = count_adapter_params(child)['total'] if child is not None else 0
        rows.append((name, f'{n:,}', f'{t:,}', f'{a:,}', f'{100 * t / max(n, 1):.2f}'))
    counts = count_adapter_params(model)
    total, trained = counts['model_total'], counts['trainable']
    rows.append(('total', f'{total:,}', f'{trained:,}', f'{counts["total"]:,}',
                 f'{100 * trained / max(total, 1):.2f}'))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, '-' * len(lines[0]))
    lines.insert(len(lines) - 1, '-' * len(lines[0]))
    return '\n'.join(lines)


def _kept_by_modules(model: nn.Module) -> list[str]:
    """``keep_trainable`` regexes of the submodules, as names relative to ``model``."""
    return [f'{re.escape(name)}\\.(?:{pattern})' if name else pattern
            for name, module in model.named_modules()
            for pattern in getattr(module, 'keep_trainable', ())]


def trainable_ids(model: nn.Module) -> set[int]:
    """``id()`` of every parameter that requires grad."""
    return {id(p) for p in model.parameters() if p.requires_grad}
