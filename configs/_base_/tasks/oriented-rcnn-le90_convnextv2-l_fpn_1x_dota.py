# Oriented R-CNN (le90) 1x on DOTA-v1.0 with ConvNeXt-V2-L, before a fine-tuning method is
# chosen: what every Table-1 row of the task shares. Each row (configs/flora/oriented-rcnn,
# configs/baselines/oriented-rcnn) is this file plus its `model.backbone.adapter`; without an
# adapter the whole backbone trains. Neck and heads train fully in every row, as in the paper.
_base_ = [
    '../models/oriented-rcnn-le90_convnextv2-l_fpn.py',
    '../datasets/dota.py',
    '../schedules/adamw_1x.py',
    '../runtimes/mmrotate_runtime.py'
]
