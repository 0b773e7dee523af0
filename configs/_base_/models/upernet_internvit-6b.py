# UperNet + FCN auxiliary head (mmseg's base, SyncBN heads) on InternViT-6B, sized as InternVL's
# UperNet ADE20K config (OpenGVLab/InternVL segmentation/configs/intern_vit_6b/full_tuning):
# 504 px crops (36 x 36 patches of 14; 512 is not a multiple of 14), blocks 11/23/35/47 turned
# into a 4-level pyramid, 1536-channel heads, sliding-window test (504 crops, stride 322).
# Without `adapter` the backbone is fully trainable; configs under configs/flora and
# configs/baselines set `model.backbone.adapter` to pick the fine-tuning method.
_base_ = 'mmseg::_base_/models/upernet_r50.py'

# Every linear weight of the 48 blocks (qkv, proj, fc1, fc2): 5.90B of the 5.91B parameters.
# `(.*\.)?` lets the names carry a wrapper prefix.
adapter_targets = [r'(.*\.)?blocks\.\d+\.attn\.(qkv|proj)', r'(.*\.)?blocks\.\d+\.mlp\.fc[12]']
# The official InternViT-6B weights (InternVL's `intern_vit_6b_224px.pth`, local file; see
# docs/configs.md).
pretrained = 'checkpoints/intern_vit_6b_224px.pth'

model = dict(
    data_preprocessor=dict(size=(504, 504)),  # the crop of datasets/ade20k_504x504.py
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='flora_mm.FLoRAInternViT',
        arch='6b',
        img_size=504,
        patch_size=14,
        qkv_bias=False,
        qk_normalization=True,
        init_values=0.1,
        drop_path_rate=0.4,
        out_indices=(11, 23, 35, 47),
        with_fpn=True,
        with_cp=True,
        pretrained=pretrained),
    decode_head=dict(in_channels=[3200, 3200, 3200, 3200], channels=1536, num_classes=150),
    auxiliary_head=dict(in_channels=3200, channels=1536, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=(504, 504), stride=(322, 322)))
