"""The GPU suite, ``pytest -m gpu``: runs wherever ``torch.cuda.is_available()``; elsewhere
every test is skipped with the reason below."""
import pytest
import torch

NO_GPU = 'no CUDA GPU here (torch.cuda.is_available() is False); the GPU suite needs one'

# every module of this package: ``pytestmark = GPU``
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]
