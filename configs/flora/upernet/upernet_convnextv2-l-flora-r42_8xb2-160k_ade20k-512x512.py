# FLoRA on ConvNeXt-V2-L, UperNet 160k on ADE20K.
# Table 1, FLoRA row "12.77M" (here 12.84M).
# Paper settings: r1 = r2 = 42 (solved for the budget with flora_mm.adapters.solve_rank),
# kernel rank 2 on every spatial mode, scale s = 4 (the authors' ConvNeXt example); on every
# conv / linear of the backbone. Only the adapters of the backbone train.
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='FLoRA', rank=42, kernel_rank=2, scale=4.0)))
