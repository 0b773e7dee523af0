# Demo: the Table-2 FLoRA config (InternViT-6B, UperNet, FSDP through FlexibleRunner) with the
# tiny InternViT preset (width 64, 4 blocks) on the tiny ADE20K set of
# tools/misc/make_tiny_datasets.py, for a CPU. Built from the same parts as the real config
# (configs/_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py) with the tiny data;
# differs only in size (backbone, head width, crop, schedule), BN instead of SyncBN (SyncBN
# needs CUDA), fp32 compute (bf16 matmuls are slow on most CPUs), no backbone weights to load,
# hence full checkpoints (adapter-only ones need the frozen base from a `pretrained` file;
# tests/test_tools/test_internvit_fsdp.py runs them with one).
_base_ = [
    '../_base_/models/upernet_internvit-6b.py',
    '../_base_/datasets/tiny_ade.py',
    '../_base_/schedules/adamw_80k_internvit.py',
    '../_base_/runtimes/mmseg_fsdp_runtime.py'
]

crop_size = (112, 112)  # 8 x 8 patches of 14


def at_crop_size(pipeline):
    """A pipeline of tiny_ade.py with every `scale` / `crop_size` set to this crop."""
    return [dict(t, **{k: crop_size for k in ('scale', 'crop_size') if k in t}) for t in pipeline]


train_pipeline = at_crop_size(_base_.train_pipeline)
test_pipeline = at_crop_size(_base_.test_pipeline)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny', img_size=112, out_indices=(0, 1, 2, 3), drop_path_rate=0., with_cp=False,
        pretrained=None,
        adapter=dict(type='FLoRA', rank=8, scale=0.4, targets=_base_.adapter_targets)),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

max_iters = 100
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='PolyLR', power=1.0, begin=0, end=max_iters, eta_min=0., by_epoch=False)
]
# no layer decay, as in the Table-2 adapter columns
optim_wrapper = dict(optimizer=dict(lr=2e-3), paramwise_cfg=dict(decay_rate=1.0))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
strategy = dict(model_wrapper=dict(mixed_precision=None))
env_cfg = dict(cudnn_benchmark=False)
