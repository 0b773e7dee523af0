# LoHa (LyCORIS, as peft's LoHaModel) at FLoRA r42's budget, 12.77M: rank 19 is solve_rank's
# choice for 12.77M (12,771,914 parameters); alpha unset (= rank: scale 1, as the LoRA rows).
# use_effective_conv2d keeps every conv kernel in (r, r, kh, kw) Tucker cores, the spatial
# structure FLoRA's kernel modes keep.
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='LoHa', rank=19, use_effective_conv2d=True)))
