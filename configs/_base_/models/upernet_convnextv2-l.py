# UperNet + FCN auxiliary head (mmseg's base, SyncBN heads) on a ConvNeXt-V2-L backbone.
# Without `adapter` the backbone is fully trainable; configs under configs/flora and
# configs/baselines set `model.backbone.adapter` to pick the fine-tuning method.
_base_ = 'mmseg::_base_/models/upernet_r50.py'

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
    data_preprocessor=dict(size=(512, 512)),  # the crop of datasets/ade20k.py
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='flora_mm.FLoRAConvNeXtV2',
        arch='large',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        with_cp=False,
        pretrained=pretrained),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150),
    # sliding-window inference as in mmseg's ConvNeXt UperNet recipes (crop 512, stride 341)
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
