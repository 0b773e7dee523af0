# Fidelity experiment, in-domain task (tools/analysis/fidelity.py, docs/fidelity.md):
# mmdet's RetinaNet on a ConvNeXt-V2-atto pre-trained on the generated source scenes, detecting
# their buildings, trees and cars (COCO format, 96 px). Sized for a CPU: P3-P5 only, anchors
# for 10-40 px objects, a 2-conv 64-channel head. This config owns the schedule (400 iterations,
# AdamW 2e-3, batch 4); the tool writes data and weights and sets `data_root`,
# `model.backbone.pretrained` and `model.backbone.adapter` per run. The values here make the
# config runnable by tools/train.py once the tool has run.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py', 'mmdet::_base_/datasets/coco_detection.py',
    '../_base_/runtimes/mmdet_runtime.py'
]

data_root = 'work_dirs/fidelity/data/scenes_96px_96x48/'
metainfo = dict(classes=('building', 'tree', 'car'))
img_scale = (96, 96)

model = dict(
    backbone=dict(
        _delete_=True,
        type='flora_mm.FLoRAConvNeXtV2',
        arch='atto',
        out_indices=(1, 2, 3),
        pretrained='work_dirs/fidelity/pretrain/convnextv2_atto_source_100it.pth',
        adapter=dict(type='FLoRA', rank=4, kernel_rank=2, scale=4.0)),
    neck=dict(in_channels=[80, 160, 320], out_channels=64, start_level=0,
              add_extra_convs=False, num_outs=3),
    bbox_head=dict(
        num_classes=3, in_channels=64, stacked_convs=2, feat_channels=64,
        anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32])),
    test_cfg=dict(nms_pre=200, max_per_img=20))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False, batch_sampler=None,
    sampler=dict(type='InfiniteSampler', shuffle=True),  # no pause at epoch ends
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_iters = 400  # about 17 epochs of the 96 generated training images
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=max_iters // 15),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=max_iters // 15,
         end=max_iters)
]
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
default_hooks = dict(logger=dict(interval=30),
                     checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
