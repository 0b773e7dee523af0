"""Mixed precision through the tools on CPU: ``tools/train.py --amp`` (bfloat16 autocast via
``flora_mm.AmpOptimWrapper``) with the frozen base stored in bfloat16, then ``tools/test.py``
on the checkpoint without autocast."""
import json
import os.path as osp

import pytest
import torch
from mmengine.registry import OPTIM_WRAPPERS

from conftest import REPO, run_tool

pytestmark = pytest.mark.slow

SEG_DEMO = osp.join(REPO, 'configs', 'demo', 'upernet_convnextv2-atto-flora_tiny-ade.py')


def _sgd_wrapper(**kwargs):
    model = torch.nn.Linear(4, 2)
    return model, OPTIM_WRAPPERS.build(dict(
        type='flora_mm.AmpOptimWrapper',
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5), **kwargs))


def test_amp_optim_wrapper_on_cpu():
    if torch.cuda.is_available():
        pytest.skip('the CPU variant applies only without an accelerator')
    model, wrapper = _sgd_wrapper()
    assert wrapper.cast_dtype == torch.bfloat16
    x = torch.randn(8, 4)
    with wrapper.optim_context(model):
        assert torch.is_autocast_enabled('cpu')
        out = model(x)
    assert out.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    loss = out.float().square().mean()
    loss.backward()
    grad = model.weight.grad.clone()
    wrapper.step()
    # no loss scaling: plain SGD on the unscaled gradient
    torch.testing.assert_close(model.weight.detach(), before - 0.5 * grad)
    state = wrapper.state_dict()
    assert state['loss_scaler'] == {}
    _, other = _sgd_wrapper(dtype='bfloat16')
    other.load_state_dict(state)
    with pytest.raises(ValueError, match='CPU autocast supports only bfloat16'):
        _sgd_wrapper(dtype='float16')
    with pytest.raises(TypeError, match='loss_scale'):
        _sgd_wrapper(loss_scale='static')


@pytest.fixture(scope='module')
def ade_tiny(tmp_path_factory):
    from flora_mm.testing.tiny_datasets import make_ade20k
    root = tmp_path_factory.mktemp('tiny')
    make_ade20k(str(root / 'ade' / 'ADEChallengeData2016'), num_train=4, num_val=2,
                img_size=64)
    return str(root)


def test_train_amp_bf16_frozen_then_test(tmp_path, ade_tiny):
    cfg = tmp_path / 'amp.py'
    cfg.write_text(f"_base_ = {SEG_DEMO!r}\n"
                   "custom_imports = dict(imports=['flora_mm', 'amp_probe_hook'], "
                   "allow_failed_imports=False)\n"
                   f"custom_hooks = [dict(type='AmpProbeHook', out_dir={str(tmp_path)!r})]\n")
    work = tmp_path / 'work'
    options = ['train_cfg.max_iters=2', 'train_cfg.val_interval=3',
               'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2',
               'train_dataloader.batch_size=2', 'model.backbone.frozen_dtype=bfloat16']
    run_tool(['tools/train.py', cfg, '--amp', '--work-dir', work, '--cfg-options', *options],
             FLORA_MM_TINY_DATA=ade_tiny)
    with open(tmp_path / 'amp_probe.json') as f:
        probe = json.load(f)
    assert probe['wrapper'].endswith('amp_optim_wrapper.AmpOptimWrapper')
    assert probe['cast_dtype'] == 'torch.bfloat16'
    train_calls = [c for c in probe['calls'] if c['autocast']]
    assert len(train_calls) == 2  # the 2 training iterations ran under bf16 autocast
    for call in train_calls:
        assert call['autocast_dtype'] == 'torch.bfloat16'
        assert set(call['outputs']) == {'torch.bfloat16'}
    # the validation after the last iteration runs without autocast: fp32 on the bf16 base
    for call in probe['calls']:
        if not call['autocast']:
            assert set(call['outputs']) == {'torch.float32'}
    dtypes = probe['param_dtypes']
    assert dtypes['backbone.stages.2.blocks.0.mlp.fc1.weight'] == 'torch.bfloat16'
    assert dtypes['backbone.stages.2.blocks.0.mlp.fc1.flora_core'] == 'torch.float32'
    assert dtypes['backbone.stages.2.blocks.0.norm.weight'] == 'torch.float32'
    assert dtypes['decode_head.conv_seg.weight'] == 'torch.float32'
    ckpt = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=False)
    state = ckpt['state_dict']
    assert state['backbone.stem.0.weight'].dtype == torch.bfloat16
    cores = [v for k, v in state.items() if k.endswith('flora_core')]
    assert cores and all(c.dtype == torch.float32 for c in cores)
    assert any(c.abs().sum() > 0 for c in cores)  # zero-initialized cores were trained
    assert all(torch.isfinite(c).all() for c in cores)
    assert 'loss_scaler' in ckpt['optimizer']
    # tools/test.py without --amp: the bf16 frozen base runs in fp32 (input dtype)
    run_tool(['tools/test.py', cfg, work / 'iter_2.pth', '--work-dir', tmp_path / 'test',
              '--cfg-options', 'model.backbone.frozen_dtype=bfloat16'],
             FLORA_MM_TINY_DATA=ade_tiny)
    logs = sorted((tmp_path / 'test').glob('*/*.json'))
    with open(logs[-1]) as f:
        metrics = json.load(f)
    assert 0 <= metrics['mIoU'] <= 100 and 0 <= metrics['aAcc'] <= 100
