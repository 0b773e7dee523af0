# Table 1, DoRA row "13.07M" (here 13.10M): DoRA (alpha = rank, i.e. scale 1) on the
# same backbone layers as FLoRA; convs are adapted through their (out, in*k*k) matrix.
_base_ = '../../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(
    backbone=dict(
        adapter=dict(
            _delete_=True,
            type='DoRA',
            rank=42,
            alpha=42)))
