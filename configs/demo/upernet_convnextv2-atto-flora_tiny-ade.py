# Demo: the FLoRA UperNet config of Table 1 on ConvNeXt-V2-atto and the tiny ADE20K set of
# tools/misc/make_tiny_datasets.py, for a CPU. Built from the same parts as the real config
# (configs/_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py) with the tiny data;
# differs only in size: backbone, FLoRA rank, head width, crop, schedule; BN instead of SyncBN
# (SyncBN needs CUDA), no backbone weights to load.
_base_ = [
    '../_base_/models/upernet_convnextv2-l.py',
    '../_base_/datasets/tiny_ade.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/runtimes/mmseg_runtime.py'
]

norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(
        arch='atto', pretrained=None, drop_path_rate=0.,
        adapter=dict(type='FLoRA', rank=16, kernel_rank=2, scale=4.0)),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=160, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(crop_size=_base_.crop_size, stride=(85, 85)))  # the recipe's 2/3 overlap

max_iters = 100
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='PolyLR', power=1.0, begin=0, end=max_iters, eta_min=0., by_epoch=False)
]
optim_wrapper = dict(optimizer=dict(lr=2e-3))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters))
env_cfg = dict(cudnn_benchmark=False)
