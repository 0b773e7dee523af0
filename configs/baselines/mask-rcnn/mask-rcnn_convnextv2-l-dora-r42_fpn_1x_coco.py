# Table 1, DoRA row "13.07M" (here 13.10M): DoRA on the same backbone layers as FLoRA,
# alpha unset (it defaults to the rank: scale 1); convs are adapted through their
# (out, in*k*k) matrix.
_base_ = '../../_base_/tasks/mask-rcnn_convnextv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(type='DoRA', rank=42)))
