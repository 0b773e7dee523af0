# UperNet 80k on ADE20K with InternViT-6B, sharded with FSDP (FlexibleRunner), before a
# fine-tuning method is chosen: what every Table-2 column shares. Each column
# (configs/flora/upernet-internvit, configs/baselines/upernet-internvit) is this file plus its
# `model.backbone.adapter`; without an adapter the whole backbone trains. The new pyramid of
# the backbone and UperNet train fully in every column.
_base_ = [
    '../models/upernet_internvit-6b.py',
    '../datasets/ade20k_504x504.py',
    '../schedules/adamw_80k_internvit.py',
    '../runtimes/mmseg_fsdp_runtime.py'
]

# No layer decay (InternVL's head-tuning setting, decay 1.0); only the full fine-tuning
# column keeps the schedule's 0.95.
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=1.0))
# Checkpoints hold no frozen weight (AdapterCheckpointHook): --resume and tools/test.py take it
# from `pretrained`.
custom_hooks = [dict(type='flora_mm.AdapterCheckpointHook')]
