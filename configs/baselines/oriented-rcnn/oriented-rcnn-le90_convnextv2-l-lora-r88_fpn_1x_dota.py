# Table 1, LoRA row "25.89M" (here 25.96M): LoRA (alpha = rank, i.e. scale 1) on the
# same backbone layers as FLoRA; convs are adapted through their (out, in*k*k) matrix.
_base_ = '../../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(
    backbone=dict(
        adapter=dict(
            _delete_=True,
            type='LoRA',
            rank=88,
            alpha=88,
            targets={{_base_.adapter_targets}})))
