"""Table 2 of the paper (InternViT-6B + UperNet on ADE20K): budgets, ranks and memory on paper.

Everything here works on the real 6B architecture built on the meta device: shapes and
parameter counts without allocating a byte of weights.
"""
from typing import Dict, List, NamedTuple, Optional

import torch

from flora_mm.adapters import count_adapter_params, solve_rank

# FLoRA's scale for InternViT-6B (see the configs for why).
FLORA_SCALE = 0.4


class Column(NamedTuple):
    """One column of Table 2: config name part, method, paper's % of parameters, paper mIoU."""

    name: str
    method: str
    percent: Optional[float]
    miou: float


COLUMNS = (
    Column('frozen', 'Frozen', None, 53.0),
    Column('full', 'Full', 100., 58.2),
    Column('bitfit', 'BitFit', 0.15, 56.1),
    Column('lora', 'LoRA', 0.32, 57.1),
    Column('dora', 'DoRA', 0.32, 57.3),
    Column('flora', 'FLoRA', 0.32, 57.7),
    Column('lora', 'LoRA', 0.66, 57.3),
    Column('dora', 'DoRA', 0.66, 57.1),
    Column('flora', 'FLoRA', 0.66, 58.0),
)


def build_backbone(arch: str = '6b', device: str = 'meta', **kwargs):
    """``FLoRAInternViT`` at 504 px (InternVL's crop) on ``device`` (meta: nothing allocated).

    Args:
        arch: Backbone preset.
        device: Where parameters live.
        **kwargs: More ``FLoRAInternViT`` arguments (e.g. ``adapter``).

    Returns:
        The backbone.
    """
    from flora_mm.models import FLoRAInternViT
    with torch.device(device):
        return FLoRAInternViT(arch=arch, img_size=504, **kwargs)


def vit_parameters(backbone) -> int:
    """Parameters of the pretrained ViT: the backbone without the new pyramid (``up1..4``)."""
    return sum(p.numel() for n, p in backbone.named_parameters()
               if not n.startswith(('up1.', 'up2.', 'up3.', 'up4.'))
               and not any(t in n for t in ('flora_', 'lora_', 'dora_')))


def adapter_cfg(method: str, rank: int = 1) -> dict:
    """The Table-2 adapter config of ``method`` (every linear of the blocks; defaults kept)."""
    if method == 'FLoRA':
        return dict(type='FLoRA', rank=rank, scale=FLORA_SCALE)
    if method in ('LoRA', 'DoRA'):
        return dict(type=method, rank=rank, alpha=rank)
    return dict(type=method)


def solve_ranks(backbone) -> Dict[str, int]:
    """Ranks of the adapter columns: ``solve_rank`` for ``percent`` of the ViT's parameters.

    Args:
        backbone: A plain ``FLoRAInternViT`` (meta device is enough).

    Returns:
        ``{'<method>-<percent>': rank}``, e.g. ``{'lora-0.32': 8, ...}``.
    """
    from flora_mm.models.backbones.flora_internvit import ADAPTER_TARGETS
    total = vit_parameters(backbone)
    ranks = {}
    for col in COLUMNS:
        if col.method in ('LoRA', 'DoRA', 'FLoRA'):
            cfg = dict(adapter_cfg(col.method), targets=ADAPTER_TARGETS)
            ranks[f'{col.name}-{col.percent}'] = solve_rank(
                backbone, cfg, round(col.percent / 100 * total))
    return ranks


def column_counts(arch: str = '6b') -> List[dict]:
    """Trainable parameters of every Table-2 column, counted on models built on the meta device.

    Args:
        arch: Backbone preset.

    Returns:
        One dict per column: ``name``, ``method``, ``percent`` (paper), ``rank`` (adapters),
        ``backbone_trainable`` (ViT parameters that train: adapters, biases or all),
        ``percent_here``, ``pyramid`` (new layers, trainable in every column), ``vit_total``.
    """
    plain = build_backbone(arch)
    ranks = solve_ranks(plain)
    total = vit_parameters(plain)
    pyramid = sum(p.numel() for n, p in plain.named_parameters() if n.startswith('up'))
    rows = []
    for col in COLUMNS:
        rank = ranks.get(f'{col.name}-{col.percent}')
        model = build_backbone(arch, adapter=adapter_cfg(col.method, rank or 1))
        trainable = sum(p.numel() for n, p in model.named_parameters()
                        if p.requires_grad and not n.startswith('up'))
        if col.method in ('LoRA', 'DoRA', 'FLoRA'):
            assert trainable == count_adapter_params(model)['total']
        rows.append(dict(name=col.name, method=col.method, percent=col.percent, rank=rank,
                         backbone_trainable=trainable,
                         percent_here=100 * trainable / total, pyramid=pyramid,
                         vit_total=total, paper_miou=col.miou))
    return rows


def memory_per_gpu(row: dict, gpus: int = 8, batch_per_gpu: int = 2, img_size: int = 504,
                   arch: str = '6b', strategy: str = 'fsdp', head_params: int = 0) -> dict:
    """Per-GPU memory on paper (GiB) of one Table-2 column.

    Model states are exact for the strategy; activations are an estimate (block inputs kept
    with activation checkpointing, one block recomputed at a time, ``34 * tokens * width``
    bytes per block in bf16 as in Korthikanti et al. 2022 without the attention matrix, which
    the fused kernel never stores; pyramid and UperNet maps at 1/3.5 resolution, about 20
    kept per level set, 1536 channels, in fp32).

    ``'fsdp'``: torch FSDP FULL_SHARD, one unit per block, fp32 master weights sharded,
    bf16 compute (MixedPrecision), fp32 gradients sharded for every unit that holds a
    trainable parameter (FSDP1 keeps one gradient for a unit's whole flat shard), AdamW
    states (2 x fp32) for the trainable parameters, sharded. ``'ddp'``: every GPU holds the
    fp32 model, gradients and AdamW states of what trains.

    Args:
        row: One entry of :func:`column_counts`.
        gpus: Data-parallel GPUs.
        batch_per_gpu: Images per GPU.
        img_size: Crop size.
        arch: Backbone preset (widths and depth).
        strategy: 'fsdp' or 'ddp'.
        head_params: Parameters of the UperNet heads (trainable in every column).

    Returns:
        Sizes in GiB: ``params``, ``grads``, ``optimizer``, ``activations``, ``total``.
    """
    from flora_mm.models.backbones.flora_internvit import ARCH_SETTINGS
    arch_cfg = ARCH_SETTINGS[arch]
    width, depth = arch_cfg['embed_dim'], arch_cfg['depth']
    vit, pyramid = row['vit_total'], row['pyramid']
    adapters = row['backbone_trainable'] if row['method'] in ('LoRA', 'DoRA', 'FLoRA') else 0
    trainable_vit = row['backbone_trainable']
    everything = vit + adapters + pyramid + head_params
    trainable = trainable_vit + pyramid + head_params
    # Units holding a trainable parameter carry a gradient for their whole flat shard.
    with_grad = (vit + adapters if trainable_vit else 0) + pyramid + head_params
    block = (vit + adapters) / depth
    shard = gpus if strategy == 'fsdp' else 1
    params = 4 * everything / shard
    grads = 4 * (with_grad if strategy == 'fsdp' else trainable) / shard
    optimizer = 8 * trainable / shard
    if strategy == 'fsdp':
        # bf16 unsharded copies of two units (current + prefetched) and the unsharded fp32
        # gradient of one unit during its reduce-scatter; the root (pyramid, heads) stays
        # unsharded in bf16.
        params += 2 * 2 * block + 2 * (pyramid + head_params)
        grads += 4 * block if trainable_vit else 0
    tokens = (img_size // 14)**2 + 1
    activations = batch_per_gpu * tokens * width * 2 * depth + 34 * batch_per_gpu * tokens * width
    side = img_size / 3.5
    activations += 20 * batch_per_gpu * side * side * 1536 * 4
    gib = 2**30
    out = dict(params=params / gib, grads=grads / gib, optimizer=optimizer / gib,
               activations=activations / gib)
    out['total'] = sum(out.values())
    return out


def uperhead_params(in_channels: int = 3200, channels: int = 1536, num_classes: int = 150,
                    aux_channels: int = 1536) -> int:
    """Parameters of mmseg's UperHead (pool scales 1, 2, 3, 6) + FCNHead as InternVL sets them.

    Counted from the layer shapes (conv weights without bias, BN weight + bias), so the
    memory table does not need mmseg.
    """
    def conv_bn(cin, cout, k):
        return cin * cout * k * k + 2 * cout
    ppm = 4 * conv_bn(in_channels, channels, 1)
    bottleneck = conv_bn(in_channels + 4 * channels, channels, 3)
    lateral = 3 * conv_bn(in_channels, channels, 1)
    fpn = 3 * conv_bn(channels, channels, 3)
    fpn_bottleneck = conv_bn(4 * channels, channels, 3)
    cls = channels * num_classes + num_classes
    aux = conv_bn(in_channels, aux_channels, 3) + aux_channels * num_classes + num_classes
    return ppm + bottleneck + lateral + fpn + fpn_bottleneck + cls + aux


def memory_table(gpus: int = 8, gpu_gib: float = 80.) -> List[dict]:
    """Rows of :func:`column_counts` with the FSDP and DDP memory of each column."""
    heads = uperhead_params()
    rows = column_counts()
    for row in rows:
        row['head_params'] = heads
        for strategy in ('fsdp', 'ddp'):
            mem = memory_per_gpu(row, gpus=gpus, strategy=strategy, head_params=heads)
            row[strategy] = mem
            row[f'{strategy}_fits'] = mem['total'] <= gpu_gib
    return rows


def format_markdown(rows: List[dict], gpu_gib: float = 80.) -> str:
    """The Table-2 budget and memory table (markdown)."""
    lines = ['| column | paper % | rank | trainable ViT params | % here | FSDP params / grads / '
             'AdamW / act. GiB | FSDP total GiB | DDP (fp32) total GiB |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        f, d = r['fsdp'], r['ddp']
        label = r['method'] + (f' {r["percent"]}%' if r['method'] in ('LoRA', 'DoRA', 'FLoRA')
                               else '')
        lines.append(
            f'| {label} | {"-" if r["percent"] is None else r["percent"]} | '
            f'{r["rank"] or "-"} | {r["backbone_trainable"]:,} | {r["percent_here"]:.3f} | '
            f'{f["params"]:.1f} / {f["grads"]:.1f} / {f["optimizer"]:.1f} / '
            f'{f["activations"]:.1f} | {f["total"]:.1f} | {d["total"]:.1f}'
            f'{"" if r["ddp_fits"] else f" (> {gpu_gib:g})"} |')
    return '\n'.join(lines)


__all__ = ['COLUMNS', 'FLORA_SCALE', 'adapter_cfg', 'build_backbone', 'column_counts',
           'format_markdown', 'memory_per_gpu', 'memory_table', 'solve_ranks',
           'uperhead_params', 'vit_parameters']
