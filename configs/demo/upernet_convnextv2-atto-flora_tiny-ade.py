# Demo: the FLoRA UperNet config of Table 1 on ConvNeXt-V2-atto and the tiny ADE20K set of
# tools/misc/make_tiny_datasets.py (128 px, 6 of the 150 classes drawn), for a CPU.
# Differs from the real config only in size: backbone, head width, crop, schedule; BN instead
# of SyncBN (SyncBN needs CUDA), no backbone weights to load.
# Data root: $FLORA_MM_TINY_DATA (default data/tiny) + /ade/ADEChallengeData2016.
_base_ = '../flora/upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'

data_root = '{{$FLORA_MM_TINY_DATA:data/tiny}}/ade/ADEChallengeData2016/'
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', pretrained=None, drop_path_rate=0., adapter=dict(rank=16)),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=160, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(crop_size=crop_size, stride=(85, 85)))  # the recipe's 2/3 overlap

# the colours and textures are the labels: no photometric distortion
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

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
