# mmseg's runtime trained through mmengine's FlexibleRunner + FSDPStrategy (torch FSDP,
# FULL_SHARD): one FSDP unit per InternViT block, bf16 compute with fp32 master weights,
# gradient reduction and buffers; the full state dict is gathered on rank 0 (CPU) to save.
# Launched by the same tools/dist_train.sh; see docs/configs.md for the per-GPU memory.
_base_ = './mmseg_runtime.py'

runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(
        sharding_strategy='FULL_SHARD',
        use_orig_params=True,  # frozen and trainable parameters share flat units
        auto_wrap_policy=dict(
            type='flora_mm.class_name_wrap_policy', class_names=['InternViTBlock']),
        mixed_precision=dict(
            param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32')),
    state_dict_cfg='full')
