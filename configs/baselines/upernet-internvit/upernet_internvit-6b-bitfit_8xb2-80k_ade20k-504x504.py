# Table 2, BitFit column "0.15 %": the biases of InternViT-6B train (924,800 = 0.016 %;
# InternViT-6B has no qkv bias, so no bias set reaches the paper's 0.15 %, see docs/configs.md).
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(backbone=dict(adapter=dict(type='BitFit')))
