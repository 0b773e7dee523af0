"""InternViT-6B (InternVL) as an OpenMMLab segmentation backbone, with adapters at construction.

The architecture of InternVL's ``segmentation/`` code (mmseg 0.30): a plain ViT with patch 14,
a class token, learned position embeddings, pre-norm blocks with RMSNorm, QK-normalisation
(RMSNorm over the full width, before the heads are split), LayerScale and stochastic depth;
four block outputs are turned into a stride 4/8/16/32 pyramid (nominal: with patch 14 the
real strides are 3.5/7/14/28) by transposed convolutions and a max-pool, which UperNet takes.
Module and parameter names are those of the official ``intern_vit_6b_224px.pth`` and of the
InternVL segmentation checkpoints, so both load without renaming.
"""
import copy
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import DropPath, LayerNorm2d, LayerScale, Mlp

from flora_mm.adapters import adapt_model
from flora_mm.registry import MODELS
from .internvit_checkpoint import load_pretrained, resize_pos_embed

# `6b`: InternViT-6B as released (5.9B parameters), with the block outputs InternVL's UperNet
# config feeds the pyramid. `tiny`: the same code at a size for tests and CPU demos.
ARCH_SETTINGS: Dict[str, dict] = {
    '6b': dict(embed_dim=3200, depth=48, num_heads=25, mlp_ratio=4.,
               out_indices=(11, 23, 35, 47)),
    'tiny': dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=4., out_indices=(0, 1, 2, 3)),
}
# Every linear weight of the transformer blocks (what LoRA / DoRA / FLoRA adapt in Table 2).
ADAPTER_TARGETS = [r'(.*\.)?blocks\.\d+\.attn\.(qkv|proj)', r'(.*\.)?blocks\.\d+\.mlp\.fc[12]']
# The feature pyramid is new (not in the pretrained file): it trains in every column.
PYRAMID = r'up[1-4]'


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, computed in fp32 (InternViT's numerics).

    Args:
        dim: Normalised width.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class InternAttention(nn.Module):
    """Multi-head self-attention with optional QK RMSNorm over the full width.

    Args:
        dim: Token width.
        num_heads: Heads; ``dim`` must be divisible by it.
        qkv_bias: Bias of the fused qkv projection (InternViT-6B has none).
        qk_normalization: RMSNorm of q and k (each ``dim`` wide) before splitting heads.
        proj_drop: Dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False,
                 qk_normalization: bool = True, proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'InternAttention: width {dim} is not divisible by '
                             f'num_heads={num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.q_norm = RMSNorm(dim) if qk_normalization else nn.Identity()
        self.k_norm = RMSNorm(dim) if qk_normalization else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [q | k | v], each head-major
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
                   for t in (q, k, v))
        # softmax(q k^T / sqrt(head_dim)) v, the fused kernel where the device has one
        x = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class InternViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: Bias of the qkv projection.
        qk_normalization: QK RMSNorm.
        init_values: LayerScale initial value (None: no LayerScale).
        drop_path: Stochastic depth rate of this block.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
                 qk_normalization: bool = True, init_values: Optional[float] = 0.1,
                 drop_path: float = 0.):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = InternAttention(dim, num_heads, qkv_bias, qk_normalization)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = RMSNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution to tokens (``proj`` as in the checkpoint)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), h, w


@MODELS.register_module()
class FLoRAInternViT(BaseModule):
    """InternViT (InternVL) with a UperNet feature pyramid and optional adapters.

    Construction order, as in ``FLoRAConvNeXtV2`` (all in ``__init__``, since mmengine's test
    path never calls ``init_weights``): build, load ``pretrained`` (position embeddings
    resized to ``img_size``), inject the adapter, freeze the base. The pyramid ``up1..up4`` is
    new and always trains (like InternVL's head tuning, which freezes only the ViT).

    Args:
        arch: ``'6b'``, ``'tiny'``, or a dict with ``embed_dim``, ``depth``, ``num_heads``,
            ``mlp_ratio`` and ``out_indices``.
        img_size: Training crop size; the position embeddings are stored for its patch grid
            (other input sizes are served by resizing them on the fly).
        patch_size: Patch size (14 for InternViT-6B).
        in_chans: Input channels.
        qkv_bias: Bias of the qkv projections (InternViT-6B: False).
        qk_normalization: QK RMSNorm (InternViT-6B: True).
        init_values: LayerScale initial value (InternViT-6B: 0.1).
        drop_path_rate: Stochastic depth, linear over the blocks (InternVL full tuning: 0.4).
        out_indices: Blocks whose outputs form the pyramid (default: the arch's).
        with_fpn: Build the stride 4/8/16/32 pyramid from the four outputs (InternVL's
            ``with_fpn``); False returns the four stride-14 maps.
        with_final_norm: LayerNorm at the end of each pyramid branch.
        with_cp: Activation checkpointing per block (non-reentrant).
        pretrained: Local InternViT checkpoint (official ``intern_vit_6b_224px.pth`` layout,
            optionally wrapped in ``module`` / ``state_dict`` / ``model``).
        pretrain_size: Image size the checkpoint's position embeddings were trained at (only
            for the log; the grid is read from the tensor).
        adapter: ``inject_adapters`` config; without ``targets`` every ``nn.Linear`` of the
            blocks is adapted (qkv, proj, fc1, fc2). ``type`` may be a freeze policy
            ('BitFit', 'Full', 'Frozen'); None trains everything.
        trainable: Extra regexes (fullmatch on parameter or module names) that stay trainable.
        init_cfg: mmengine init config (``type='Pretrained'`` is rejected, use ``pretrained``).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: int = 224,
                 patch_size: int = 14,
                 in_chans: int = 3,
                 qkv_bias: bool = False,
                 qk_normalization: bool = True,
                 init_values: Optional[float] = 0.1,
                 drop_path_rate: float = 0.,
                 out_indices: Optional[Sequence[int]] = None,
                 with_fpn: bool = True,
                 with_final_norm: bool = False,
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 pretrain_size: int = 224,
                 adapter: Optional[dict] = None,
                 trainable: Sequence[str] = (),
                 init_cfg: Optional[dict] = None):
        if init_cfg is not None and any(
                cfg.get('type') == 'Pretrained'
                for cfg in (init_cfg if isinstance(init_cfg, list) else [init_cfg])):
            raise ValueError('FLoRAInternViT: use `pretrained=<local file>` instead of '
                             "init_cfg=dict(type='Pretrained')")
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'FLoRAInternViT: arch={arch!r} is not one of '
                                 f'{list(ARCH_SETTINGS)} (or a dict of settings)')
            settings = dict(ARCH_SETTINGS[arch])
        else:
            settings = dict(arch)
            missing = {'embed_dim', 'depth', 'num_heads'} - set(settings)
            if missing:
                raise ValueError(f'FLoRAInternViT: arch dict lacks {sorted(missing)}')
        dim, depth = settings['embed_dim'], settings['depth']
        out_indices = tuple(settings.get('out_indices', ()) if out_indices is None
                            else out_indices)
        if (not out_indices or any(i not in range(depth) for i in out_indices)
                or len(set(out_indices)) != len(out_indices)
                or (with_fpn and len(out_indices) != 4)):
            raise ValueError(f'FLoRAInternViT: out_indices={out_indices} must be distinct block '
                             f'indices in 0..{depth - 1}' + (' (four of them with with_fpn)'
                                                               if with_fpn else ''))
        if img_size % patch_size:
            raise ValueError(f'FLoRAInternViT: img_size={img_size} is not a multiple of '
                             f'patch_size={patch_size}')
        self.arch = arch
        self.embed_dim = dim
        self.patch_size = patch_size
        self.out_indices = out_indices
        self.with_fpn = with_fpn
        self.with_cp = with_cp
        self.pretrained = pretrained
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList(
            InternViTBlock(dim, settings['num_heads'], settings.get('mlp_ratio', 4.), qkv_bias,
                           qk_normalization, init_values, rates[i]) for i in range(depth))
        if with_fpn:
            def norm():
                return LayerNorm2d(dim) if with_final_norm else nn.Identity()
            # Indices as InternVL's nn.Sequential, so its segmentation checkpoints load.
            self.up1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), LayerNorm2d(dim),
                                     nn.GELU(), nn.ConvTranspose2d(dim, dim, 2, 2), norm())
            self.up2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), norm())
            self.up3 = nn.Sequential(nn.Identity(), norm())
            self.up4 = nn.Sequential(nn.MaxPool2d(2, 2), norm())
        self.out_channels = (dim, ) * len(out_indices)
        self._init_new_weights()
        if pretrained is not None:
            load_pretrained(self, pretrained)
        self.adapter = copy.deepcopy(adapter)
        if adapter is not None:
            adapter = dict(adapter)
            adapter.setdefault('targets', ADAPTER_TARGETS)
            keep = list(trainable) + ([PYRAMID] if with_fpn else [])
            report = adapt_model(self, adapter, keep)
            print_log(f'FLoRAInternViT: {report.summary()} (pyramid included)', logger='current')
        elif trainable:
            raise ValueError('FLoRAInternViT: `trainable` needs an `adapter` (without one the '
                             'whole backbone is trained)')

    def _init_new_weights(self) -> None:
        # InternVL's initialisation: truncated normal for linears and embeddings, He-normal
        # (fan-out) for the (transposed) convolutions. Skipped on the meta device.
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        nn.init.trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """Keep the weights set in ``__init__`` (InternVL init or ``pretrained``)."""
        if self.pretrained is None and self.init_cfg is not None:
            super().init_weights()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return the four maps UperNet takes (NCHW, float32 like InternVL's backbone)."""
        x, h, w = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        pos = resize_pos_embed(self.pos_embed, (h, w))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + pos.to(x.dtype)
        use_cp = self.with_cp and self.training and torch.is_grad_enabled()
        outs = []
        for i, block in enumerate(self.blocks[:max(self.out_indices) + 1]):
            x = cp.checkpoint(block, x, use_reentrant=False) if use_cp else block(x)
            if i in self.out_indices:
                outs.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w))
        if self.with_fpn:
            outs = [up(o) for up, o in zip((self.up1, self.up2, self.up3, self.up4), outs)]
        return tuple(o.float().contiguous() for o in outs)


__all__ = ['ADAPTER_TARGETS', 'ARCH_SETTINGS', 'FLoRAInternViT', 'InternViTBlock']
