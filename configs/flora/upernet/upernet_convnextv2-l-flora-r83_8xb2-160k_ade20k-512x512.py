# Table 1, FLoRA row "25.65M" (here 25.66M): the r42 config with a larger rank.
_base_ = './upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(rank=83)))
