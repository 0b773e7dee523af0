# Table 1, LoRA row "25.89M" (here 25.96M): the LoRA r42 config with a larger rank
# (alpha is not set: it defaults to the rank, scale 1).
_base_ = './mask-rcnn_convnextv2-l-lora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(rank=88)))
