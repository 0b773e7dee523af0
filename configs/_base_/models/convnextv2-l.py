# ConvNeXt-V2-L from timm as an OpenMMLab backbone (flora_mm), shared by the task models of
# this folder: `model = dict(backbone=dict(_delete_=True, **_base_.convnextv2_large))`.
# Without `adapter` the backbone is fully trainable; configs under configs/flora and
# configs/baselines set `model.backbone.adapter` to pick the fine-tuning method. An adapter
# without `targets` adapts every conv / linear weight of the backbone (stem, downsampling
# convs, 7x7 depthwise convs, MLP linears): the "all weight matrices or tensors" of the paper
# (Sec. 5.2), 196M weights.

# FCMAE-pretrained, ImageNet-22k fine-tuned ConvNeXt-V2-L (timm state dict, local file):
# timm's `convnextv2_large.fcmae_ft_in22k_in1k`, see docs/configs.md.
pretrained = 'checkpoints/convnextv2_large.fcmae_ft_in22k_in1k.pth'

convnextv2_large = dict(
    type='flora_mm.FLoRAConvNeXtV2',
    arch='large',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.3,
    with_cp=False,
    pretrained=pretrained)
