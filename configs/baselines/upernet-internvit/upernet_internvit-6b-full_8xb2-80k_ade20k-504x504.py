# Table 2, Fully FT column (100 %): every InternViT-6B parameter trains, with InternVL's
# full-tuning layer decay 0.95. Needs the sharded strategy: 16 bytes per parameter (fp32
# weights, gradients, AdamW states) are 94 GB per GPU under DDP.
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(backbone=dict(adapter=dict(type='Full')))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95))
