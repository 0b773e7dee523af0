# Demo: the FLoRA Oriented R-CNN config of Table 1 on ConvNeXt-V2-atto and the tiny DOTA set of
# tools/misc/make_tiny_datasets.py, for a CPU. Built from the same parts as the real config
# (configs/_base_/tasks/oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py) with the tiny data;
# differs only in size: backbone, FLoRA rank, proposal / RoI counts, schedule; no backbone
# weights to load.
_base_ = [
    '../_base_/models/oriented-rcnn-le90_convnextv2-l_fpn.py',
    '../_base_/datasets/tiny_dota.py',
    '../_base_/schedules/adamw_8e_tiny.py',
    '../_base_/runtimes/mmrotate_runtime.py'
]

model = dict(
    backbone=dict(
        arch='atto', pretrained=None, drop_path_rate=0.,
        adapter=dict(type='FLoRA', rank=16, kernel_rank=2, scale=4.0)),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(nms_pre=200, max_per_img=20)))

default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=_base_.max_epochs))
