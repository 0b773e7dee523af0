# Demo: the Table-2 FLoRA config (InternViT-6B, UperNet, FSDP through FlexibleRunner) with the
# tiny InternViT preset (width 64, 4 blocks) on the tiny ADE20K set of
# tools/misc/make_tiny_datasets.py (128 px, 6 of the 150 classes drawn), for a CPU.
# Differs from the real config only in size (backbone, head width, crop, schedule), BN instead
# of SyncBN (SyncBN needs CUDA), fp32 compute (bf16 matmuls are slow on most CPUs), no backbone
# weights to load, hence full checkpoints (adapter-only ones need the frozen base from a
# `pretrained` file; tests/test_tools/test_internvit_fsdp.py runs them with one).
# Data root: $FLORA_MM_TINY_DATA (default data/tiny) + /ade/ADEChallengeData2016.
_base_ = '../flora/upernet-internvit/upernet_internvit-6b-flora-r8_8xb2-80k_ade20k-504x504.py'

data_root = '{{$FLORA_MM_TINY_DATA:data/tiny}}/ade/ADEChallengeData2016/'
crop_size = (112, 112)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny', img_size=112, out_indices=(0, 1, 2, 3), drop_path_rate=0., with_cp=False,
        pretrained=None),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

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
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
strategy = dict(model_wrapper=dict(mixed_precision=None))
custom_hooks = []
env_cfg = dict(cudnn_benchmark=False)
