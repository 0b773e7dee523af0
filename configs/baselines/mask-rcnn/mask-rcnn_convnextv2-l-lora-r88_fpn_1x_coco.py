# Table 1, LoRA row "25.89M" (here 25.96M): the LoRA r42 config with a larger rank
# (alpha = rank keeps the scale at 1).
_base_ = './mask-rcnn_convnextv2-l-lora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(rank=88, alpha=88)))
