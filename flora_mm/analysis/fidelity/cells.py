"""The cells of the fidelity table: a fine-tuning method, its budget and FLoRA's scale."""
from __future__ import annotations

import re
from dataclasses import dataclass

POLICIES = {'frozen': 'Frozen', 'bitfit': 'BitFit', 'full': 'Full'}
ADAPTERS = {'lora': 'LoRA', 'dora': 'DoRA', 'flora': 'FLoRA'}
_NAME = re.compile(r'(?P<method>[a-z]+)(?:@(?P<budget>b\d+)(?:-s(?P<scale>[0-9.e+-]+))?)?')


@dataclass(frozen=True)
class Cell:
    """One method of the table, named like ``frozen``, ``lora@b1`` or ``flora@b2-s0.4``.

    Attributes:
        method: A policy (``frozen``, ``bitfit``, ``full``) or an adapter (``lora``, ``dora``,
            ``flora``).
        budget: The parameter budget (``b1``, ``b2``, ...) of an adapter; None for a policy.
        scale: FLoRA's scale when it differs from the experiment's default (the scale
            sweep); None otherwise.
    """

    method: str
    budget: str | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.method in POLICIES:
            if self.budget is not None or self.scale is not None:
                raise ValueError(f'cell {self}: {self.method!r} has no budget or scale')
        elif self.method in ADAPTERS:
            if self.budget is None:
                raise ValueError(f'cell {self.method!r} needs a budget, e.g. '
                                 f"'{self.method}@b1'")
            if self.scale is not None and self.method != 'flora':
                raise ValueError(f'cell {self}: only flora cells take a scale')
        else:
            raise ValueError(f'cell method {self.method!r} is not one of '
                             f'{list(POLICIES) + list(ADAPTERS)}')

    @classmethod
    def parse(cls, name: str) -> Cell:
        """The cell of a name such as ``flora@b2-s0.4`` (inverse of ``str(cell)``)."""
        match = _NAME.fullmatch(name)
        if match is None:
            raise ValueError(f'cell {name!r} is not like frozen, lora@b1 or flora@b2-s0.4')
        scale = match['scale']
        return cls(match['method'], match['budget'], None if scale is None else float(scale))

    def __str__(self) -> str:
        name = self.method if self.budget is None else f'{self.method}@{self.budget}'
        return name if self.scale is None else f'{name}-s{self.scale:g}'

    @property
    def type(self) -> str:
        """The ``adapter['type']`` of the cell ('Frozen', 'LoRA', ...)."""
        return {**POLICIES, **ADAPTERS}[self.method]

    def sort_key(self) -> tuple:
        """Plot order: frozen, BitFit, full, then per budget LoRA, DoRA, FLoRA (+ sweep)."""
        if self.budget is None:
            return (0, list(POLICIES).index(self.method), '', 0, 0.0)
        return (1, 0, self.budget, list(ADAPTERS).index(self.method), self.scale or 0.0)

    def adapter(self, budgets: dict, kernel_rank: int, default_scale: float) -> dict:
        """The backbone ``adapter=`` dict of this cell.

        Args:
            budgets: Ranks per budget and method (``solve_budgets``).
            kernel_rank: FLoRA's spatial rank.
            default_scale: FLoRA's scale when the cell has none.

        Returns:
            The ``inject_adapters`` config (targets: the default, every conv / linear).
        """
        if self.budget is None:
            return {'type': self.type}
        rank = budgets[self.budget][self.method]['rank']
        cfg = {'type': self.type, 'rank': rank}
        if self.method == 'flora':
            cfg.update(kernel_rank=kernel_rank,
                       scale=default_scale if self.scale is None else self.scale)
        else:
            cfg['alpha'] = rank  # scale 1, as in the baseline configs
        return cfg


def solve_budgets(flora_ranks: tuple, kernel_rank: int) -> dict:
    """Ranks of every adapter at every budget: FLoRA's ranks define the budgets on
    ConvNeXt-V2-atto, LoRA's and DoRA's are solved to them (``solve_rank``).

    Args:
        flora_ranks: FLoRA channel ranks, one per budget ``b1``, ``b2``, ...
        kernel_rank: FLoRA's spatial rank.

    Returns:
        ``{'b1': {'budget': n, 'flora': {'rank', 'params'}, 'lora': ..., 'dora': ...}, ...}``.
    """
    from flora_mm.adapters import count_adapter_params, inject_adapters, solve_rank
    from flora_mm.models.backbones.flora_convnextv2 import FLoRAConvNeXtV2
    budgets = {}
    for i, rank in enumerate(flora_ranks, 1):
        entry: dict = {}
        for method in ('flora', 'lora', 'dora'):
            cfg = dict(type=ADAPTERS[method])
            if method == 'flora':
                cfg.update(rank=rank, kernel_rank=kernel_rank)
            else:
                cfg['rank'] = solve_rank(FLoRAConvNeXtV2(arch='atto'), cfg, entry['budget'])
            model = FLoRAConvNeXtV2(arch='atto')
            inject_adapters(model, cfg)
            params = count_adapter_params(model)['total']
            entry[method] = {'rank': cfg['rank'], 'params': params}
            entry.setdefault('budget', params)
        budgets[f'b{i}'] = entry
    return budgets
