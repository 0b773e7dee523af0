# Table 1, FLoRA row "40.49M" (here 40.38M): the r42 config with a larger rank.
_base_ = './oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(rank=129)))
