# LoKr (LyCORIS, as peft's LoKrModel) at FLoRA r42's budget, 12.77M. With the default
# decompose_factor -1 (factors near the square root) LoKr saturates at 0.35M parameters on
# ConvNeXt-V2-L; decompose_factor 4 makes W1 (4, 4) and W2 (out/4, in/4 * k) and rank 180
# (of W2) is solve_rank's choice for 12.77M (12,790,672 parameters). alpha unset (scale 1).
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='LoKr', rank=180, decompose_factor=4)))
