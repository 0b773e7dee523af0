"""Read InternViT weights from local files (the official ``intern_vit_6b_224px.pth`` layout).

The official file is a flat state dict, possibly wrapped in ``module`` (DeepSpeed), with the
names ``FLoRAInternViT`` uses: ``patch_embed.proj.{weight,bias}``, ``cls_token``,
``pos_embed`` ``(1, 1 + 16 * 16, 3200)`` (224 px / 14), and per block ``blocks.<i>.norm1.weight``,
``attn.qkv.weight`` (no bias), ``attn.q_norm.weight``, ``attn.k_norm.weight``,
``attn.proj.{weight,bias}``, ``ls1.gamma``, ``norm2.weight``, ``mlp.fc{1,2}.{weight,bias}``,
``ls2.gamma``. Remapping is shape-only: the position embeddings are resized bicubically to
the model's patch grid (the training crop, e.g. 36 x 36 for 504 px) and the patch kernel to
the model's patch size, as InternVL's segmentation code does.
"""
import math
import re
from typing import Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from .convnextv2_checkpoint import LoadReport, log_key_problems, read_checkpoint_file, \
    unwrap_state_dict

StateDict = Dict[str, torch.Tensor]
# New layers of the segmentation backbone, never in a pretrained ViT file.
_NEW = re.compile(r'up[1-4]\.')


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubically resize ``(1, 1 + h * w, C)`` position embeddings (square source grid) to
    ``grid``; the class-token embedding is kept as is.

    Args:
        pos_embed: Embeddings with the class token first.
        grid: Target ``(height, width)`` in patches.

    Returns:
        ``(1, 1 + grid[0] * grid[1], C)`` in the input dtype.
    """
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f'pos_embed has {patches.shape[1]} patch positions, not a square grid')
    if (side, side) == tuple(grid):
        return pos_embed
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode='bicubic', align_corners=False)
    patches = patches.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


def official_to_model(state: Mapping[str, torch.Tensor],
                      own: Mapping[str, torch.Tensor]) -> StateDict:
    """Fit an official InternViT state dict to a model's position grid and patch size.

    Args:
        state: Official tensors (wrappers already removed).
        own: The model's state dict (for the target shapes).

    Returns:
        The tensors, ``pos_embed`` and ``patch_embed.proj.weight`` resized where their shapes
        differ from the model's (same width required).
    """
    out = dict(state)
    pos, target = out.get('pos_embed'), own.get('pos_embed')
    if pos is not None and target is not None and pos.shape != target.shape and (
            pos.shape[-1] == target.shape[-1]):
        side = int(round((target.shape[1] - 1)**0.5))
        out['pos_embed'] = resize_pos_embed(pos, (side, side))
    kernel, target = out.get('patch_embed.proj.weight'), own.get('patch_embed.proj.weight')
    if kernel is not None and target is not None and kernel.shape[:2] == target.shape[:2] and (
            kernel.shape[2:] != target.shape[2:]):
        out['patch_embed.proj.weight'] = F.interpolate(
            kernel.float(), size=tuple(target.shape[2:]), mode='bicubic',
            align_corners=False).to(kernel.dtype)
    return out


def load_pretrained(module: torch.nn.Module, path: str) -> LoadReport:
    """Load InternViT weights from a local file into ``FLoRAInternViT``.

    Missing keys (except the new pyramid ``up1..up4``) and unexpected keys are logged by name
    as warnings.

    Args:
        module: The backbone, before adapters are injected.
        path: Local checkpoint file (``.pth`` read with ``weights_only=True``, or
            ``.safetensors``).

    Returns:
        The missing, unexpected and ignored (outside a ``backbone.`` prefix) keys.

    Raises:
        ValueError: A tensor does not fit the model (wrong ``arch``?) or no key matches.
    """
    state, ignored = unwrap_state_dict(read_checkpoint_file(path))
    own = module.state_dict()
    state = official_to_model(state, own)
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'pretrained={path!r} does not fit the model (is `arch` right?): '
                         'shape mismatch for ' + '; '.join(mismatched[:10]) +
                         (f' and {len(mismatched) - 10} more' if len(mismatched) > 10 else ''))
    loaded = [k for k in state if k in own]
    if not loaded:
        raise ValueError(f'pretrained={path!r}: no key matches the model; file keys start with '
                         f'{sorted(state)[:5]}, model keys with {sorted(own)[:5]}')
    missing = sorted(k for k in own if k not in state and not _NEW.match(k))
    fresh = sorted(k for k in own if k not in state and _NEW.match(k))
    unexpected = sorted(k for k in state if k not in own)
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)
    print_log(f'Loaded {len(loaded)}/{len(own)} backbone tensors from {path} (the rest is the '
              'new feature pyramid)' if not missing else
              f'Loaded {len(loaded)}/{len(own)} backbone tensors from {path}', logger='current')
    report = LoadReport(missing, unexpected, ignored, fresh)
    log_key_problems(path, report, 'heads, wrappers')
    return report


__all__ = ['load_pretrained', 'official_to_model', 'resize_pos_embed']
