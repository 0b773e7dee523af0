# LoHa (LyCORIS, as peft's LoHaModel) at FLoRA r42's budget, 12.77M: rank 19 is solve_rank's
# choice for 12.77M (12,771,914 parameters); alpha unset (= rank: scale 1, as the LoRA rows).
# use_effective_conv2d keeps every conv kernel in (r, r, kh, kw) Tucker cores, the spatial
# structure FLoRA's kernel modes keep.
_base_ = '../../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(
    backbone=dict(
        adapter=dict(
            _delete_=True,
            type='LoHa',
            rank=19,
            use_effective_conv2d=True)))
