# Table 2, FLoRA column at 0.66 % (here r = 16: 39.37M = 0.667 %); otherwise as r8.
_base_ = './upernet_internvit-6b-flora-r8_8xb2-80k_ade20k-504x504.py'

model = dict(backbone=dict(adapter=dict(rank=16)))
