# FLoRA on InternViT-6B, UperNet 80k on ADE20K, sharded with FSDP (FlexibleRunner).
# Table 2, FLoRA column at 0.32 % of the parameters (here r = 8: 19.67M = 0.333 % of 5.906B).
# Rank: flora_mm.adapters.solve_rank on the real 6B built on the meta device (docs/configs.md,
# tests/test_configs/test_internvit_configs.py recomputes it); r1 = r2, on every linear of the
# 48 blocks. Scale s = 0.4 of the paper's {0.04, 0.4, 4}: with factors of std 1/sqrt(2r), one
# Adam step on the zero-initialised core moves every element of an adapted weight by about
# s * lr / 2 at any rank and width, LoRA (alpha = r) by lr * sqrt(r / (3 * d_in)) (0.03 lr
# here) and full fine-tuning by about lr. s = 4 would move the 6B weights twice as fast as
# InternVL's full fine-tuning, which already needs layer decay to be stable; s = 0.04 as
# slowly as LoRA; and the paper says InternViT-6B needs another scale than ConvNeXt-V2-L (4).
# Only adapters (and, as in every column, the new pyramid and UperNet) train.
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(
    backbone=dict(
        adapter=dict(type='FLoRA', rank=8, scale=0.4, targets={{_base_.adapter_targets}})))
