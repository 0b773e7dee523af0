# UperNet 160k on ADE20K with ConvNeXt-V2-L, before a fine-tuning method is chosen: what every
# Table-1 row of the task shares. Each row (configs/flora/upernet, configs/baselines/upernet)
# is this file plus its `model.backbone.adapter`; without an adapter the whole backbone trains.
# Decode and auxiliary heads train fully in every row, as in the paper.
_base_ = [
    '../models/upernet_convnextv2-l.py',
    '../datasets/ade20k.py',
    '../schedules/adamw_160k.py',
    '../runtimes/mmseg_runtime.py'
]
