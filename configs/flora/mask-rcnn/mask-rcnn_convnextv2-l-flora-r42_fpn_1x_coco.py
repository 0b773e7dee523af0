# FLoRA on ConvNeXt-V2-L, Mask R-CNN 1x on COCO.
# Table 1, FLoRA row "12.77M" (here 12.84M).
# Paper settings: r1 = r2 = 42 (solved for the budget with flora_mm.adapters.solve_rank),
# kernel rank 2 on every spatial mode, scale s = 4 (the authors' ConvNeXt example); on every
# conv / linear of the backbone. Only the adapters of the backbone train.
_base_ = '../../_base_/tasks/mask-rcnn_convnextv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(type='FLoRA', rank=42, kernel_rank=2, scale=4.0)))
