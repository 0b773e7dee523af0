# Fidelity experiment, shifted task (tools/analysis/fidelity.py, docs/fidelity.md):
# mmrotate's Rotated RetinaNet (le90) on a ConvNeXt-V2-atto pre-trained on front-view source
# scenes, detecting rotated planes, ships and large vehicles seen from above with new textures
# (DOTA format, 96 px). Sized and scheduled like the in-domain config; the tool sets the same
# keys per run.
_base_ = 'mmrotate::rotated_retinanet/rotated-retinanet-rbox-le90_r50_fpn_1x_dota.py'

# importing flora_mm registers the backbone and restores `collections.Sequence` for mmrotate
custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)

data_root = 'work_dirs/fidelity/data/topdown_96px_96x48/'
metainfo = dict(classes=('plane', 'ship', 'large-vehicle'))
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
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.Resize', scale=img_scale, keep_ratio=True),
    dict(type='mmdet.RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='mmdet.PackDetInputs')
]
test_pipeline = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.Resize', scale=img_scale, keep_ratio=True),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),  # no pause at epoch ends
    dataset=dict(data_root=data_root, ann_file='train/annfiles/',
                 data_prefix=dict(img_path='train/images/'), metainfo=metainfo,
                 img_shape=img_scale, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='val/annfiles/',
                 data_prefix=dict(img_path='val/images/'), metainfo=metainfo,
                 img_shape=img_scale, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 400  # about 17 epochs of the 96 generated training images
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=max_iters // 15),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=max_iters // 15,
         end=max_iters)
]
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(_delete_=True, type='AdamW', lr=2e-3,
                                        weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
default_hooks = dict(logger=dict(interval=30),
                     checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
