# FLoRA on ConvNeXt-V2-L, Oriented R-CNN 1x on DOTA-v1.0.
# Table 1, FLoRA row "12.77M" (here 12.84M).
# Paper settings: r1 = r2 = 42 (solved for the budget with flora_mm.adapters.solve_rank),
# kernel rank 2 on every spatial mode, scale s = 4 (the authors' ConvNeXt example); on every
# conv / linear of the backbone. Only the adapters of the backbone train; neck and heads train
# fully, as in every row of Table 1.
_base_ = [
    '../../_base_/models/oriented-rcnn-le90_convnextv2-l_fpn.py',
    '../../_base_/datasets/dota.py',
    '../../_base_/schedules/adamw_1x.py',
    '../../_base_/runtimes/mmrotate_runtime.py'
]

model = dict(
    backbone=dict(
        adapter=dict(
            type='FLoRA',
            rank=42,
            kernel_rank=2,
            scale=4.0)))
