# Table 1, DoRA row "26.16M" (here 26.12M): the DoRA r42 config with a larger rank
# (alpha is not set: it defaults to the rank, scale 1).
_base_ = './oriented-rcnn-le90_convnextv2-l-dora-r42_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(rank=88)))
