# Table 1, LoRA row "12.94M" (here 12.93M): LoRA on the same backbone layers as FLoRA,
# alpha unset (it defaults to the rank: scale 1); convs are adapted through their
# (out, in*k*k) matrix.
_base_ = '../../_base_/tasks/oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(type='LoRA', rank=42)))
