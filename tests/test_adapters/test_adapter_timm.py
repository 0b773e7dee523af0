"""FLoRA on a real timm ConvNeXt-V2 (skipped without timm)."""
import pytest
import torch

from flora_mm.adapters import adapter_layers, count_adapter_params, freeze_base, \
    inject_adapters, merge_adapters, unmerge_adapters

from .helpers import assert_close

timm = pytest.importorskip('timm')


@pytest.fixture(scope='module')
def atto():
    torch.manual_seed(0)
    return timm.create_model('convnextv2_atto', pretrained=False, num_classes=10).eval()


def test_convnextv2_atto_stages(atto):
    model = atto
    x = torch.randn(1, 3, 64, 64)
    plain_keys = set(model.state_dict())
    with torch.no_grad():
        expected = model(x)
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 4, 'kernel_rank': 2,
                                     'targets': [r'stages\..*']})
    # atto runs its MLP as 1x1 convs: 12 blocks x (7x7 dw conv, fc1, fc2) + 3 downsample convs
    assert all(isinstance(m, torch.nn.Conv2d) for m in layers.values())
    assert len(layers) == 12 * 3 + 3
    assert 'stages.0.blocks.0.conv_dw' in layers and 'stages.1.downsample.1' in layers
    assert tuple(layers['stages.0.blocks.0.conv_dw'].flora_core.shape) == (4, 1, 2, 2)
    assert plain_keys < set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    trainable = freeze_base(model, 'FLoRA', trainable=['head'])
    assert trainable == count_adapter_params(model)['total'] + sum(
        p.numel() for p in model.head.parameters())
    model.train()
    model(x).sum().backward()
    assert all(layer.flora_core.grad is not None for layer in adapter_layers(model).values())
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.flora_core.normal_(0, 0.05)
        model.eval()
        adapted = model(x)
        merge_adapters(model)
        assert_close(model(x), adapted, rtol=1e-4)
        unmerge_adapters(model)
        assert_close(model(x), adapted, rtol=1e-4)


def test_conv2d_same_is_rejected_with_a_clear_error():
    model = torch.nn.Sequential(timm.layers.Conv2dSame(3, 8, 3, stride=2))
    with pytest.raises(ValueError) as info:
        inject_adapters(model, {'type': 'FLoRA', 'rank': 2})
    assert "'0'" in str(info.value) and 'Conv2dSame overrides forward()' in str(info.value)
    assert '(8, 3, 3, 3)' in str(info.value)
