# Table 1, LoRA row "25.89M" (here 25.96M): the LoRA r42 config with a larger rank
# (alpha is not set: it defaults to the rank, scale 1).
_base_ = './upernet_convnextv2-l-lora-r42_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(rank=88)))
