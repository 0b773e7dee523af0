# Kernel rank 1 (the paper's other choice): every spatial update of a filter is separable.
_base_ = './mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(kernel_rank=1)))
