# UperNet + FCN auxiliary head (mmseg's base, SyncBN heads) on the ConvNeXt-V2-L backbone of
# convnextv2-l.py.
_base_ = ['mmseg::_base_/models/upernet_r50.py', './convnextv2-l.py']

model = dict(
    data_preprocessor=dict(size=(512, 512)),  # the crop of datasets/ade20k.py
    pretrained=None,
    backbone=dict(_delete_=True, **_base_.convnextv2_large),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150),
    # sliding-window inference as in mmseg's ConvNeXt UperNet recipes (crop 512, stride 341)
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
