"""A fake GPU host for tests/test_stack/test_gpu_host.py. With this folder on PYTHONPATH,
every Python process sees what it would see on a machine with one GPU: torch.cuda.is_available()
is True and one device is visible, unless ``CUDA_VISIBLE_DEVICES=''`` hides it. Nothing can run
on the fake device, so code that moves to CUDA fails, as a CPU-only build of mmcv would."""
import os

if os.environ.get('CUDA_VISIBLE_DEVICES') != '':
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
