# Mask R-CNN + FPN (mmdet's base) on a ConvNeXt-V2-L backbone from timm (flora_mm).
# Without `adapter` the backbone is fully trainable; configs under configs/flora and
# configs/baselines set `model.backbone.adapter` to pick the fine-tuning method.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

# Every conv / linear weight of the backbone (stem, downsampling convs, 7x7 depthwise convs,
# MLP linears): the "all weight matrices or tensors" of the paper (Sec. 5.2), 196M weights.
# `(.*\.)?` lets the names carry a wrapper prefix.
adapter_targets = [
    r'(.*\.)?stem[._]0', r'(.*\.)?downsample\.1', r'(.*\.)?conv_dw', r'(.*\.)?mlp\.fc[12]'
]
# FCMAE-pretrained, ImageNet-22k fine-tuned ConvNeXt-V2-L (timm state dict, local file):
# timm's `convnextv2_large.fcmae_ft_in22k_in1k`, see docs/configs.md.
pretrained = 'checkpoints/convnextv2_large.fcmae_ft_in22k_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='flora_mm.FLoRAConvNeXtV2',
        arch='large',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        with_cp=False,
        pretrained=pretrained),
    neck=dict(in_channels=[192, 384, 768, 1536]))
