"Models: parameter counts, shapes for 1- and 3-channel inputs, channels_last, init, registry errors."
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltpaper.models import MODELS, ShortcutA, build_model, n_params

torch.set_num_threads(1)


@pytest.mark.parametrize('name,num_classes,in_channels,expected', [
    ('resnet32', 10, 3, 464_154),          # LDAM-DRW ResNet_s(BasicBlock, [5, 5, 5]) at CIFAR-10
    ('resnet32', 100, 3, 464_154 + 90 * 65),
    ('resnet32', 10, 1, 464_154 - 2 * 9 * 16),
    ('small_resnet', 10, 1, 75_002),
    ('resnet50', 1000, 3, 25_557_032),     # torchvision's published count
    ('resnet50', 10, 1, 25_557_032 - 990 * 2049 - 2 * 64 * 49),
])
def test_param_counts(name, num_classes, in_channels, expected):
    assert n_params(build_model(name, num_classes, in_channels=in_channels)) == expected


@pytest.mark.parametrize('name,size', [('resnet32', 32), ('resnet32', 64), ('small_resnet', 28), ('small_resnet', 32), ('resnet50', 64)])
@pytest.mark.parametrize('in_channels', [1, 3])
def test_forward_shapes(name, size, in_channels):
    m = build_model(name, 7, in_channels=in_channels).eval()
    with torch.no_grad(): out = m(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_wrong_channel_count_fails():
    with pytest.raises(RuntimeError):
        build_model('small_resnet', 10, in_channels=1)(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize('name', ['resnet32', 'small_resnet'])
def test_channels_last_same_function(name):
    torch.manual_seed(0); a = build_model(name, 10, in_channels=3).eval()
    torch.manual_seed(0); b = build_model(name, 10, in_channels=3, channels_last=True).eval()
    assert b.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x.contiguous(memory_format=torch.channels_last)), rtol=1e-4, atol=1e-4)


def test_resnet32_structure():
    m = build_model('resnet32', 10)
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)            # 31 convs + 1 linear = 32 layers
    assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [5, 5, 5]
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels] == [16, 32, 64]
    shortcuts = [l for l in m.modules() if isinstance(l, ShortcutA)]
    assert len(shortcuts) == 2 and all(n_params(s) == 0 for s in shortcuts)  # option A: parameter-free
    assert isinstance(m.linear, nn.Linear) and m.linear.in_features == 64
    # Kaiming-normal (fan_in, gain sqrt 2): std of a 64->64 3x3 conv is sqrt(2 / 576)
    assert abs(m.layer3[2].conv2.weight.std().item() - (2 / 576) ** 0.5) < 0.004


def test_shortcut_a_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_seeded_init_is_reproducible():
    torch.manual_seed(5); a = build_model('small_resnet', 10, in_channels=1)
    torch.manual_seed(5); b = build_model('small_resnet', 10, in_channels=1)
    torch.manual_seed(6); c = build_model('small_resnet', 10, in_channels=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_small_resnet_learns_a_batch():
    torch.manual_seed(0)
    m = build_model('small_resnet', 10, in_channels=1)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        opt.zero_grad(); loss = F.cross_entropy(m(x), y); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_registry_errors():
    assert set(MODELS) == {'resnet32', 'resnet50', 'small_resnet', 'small_resnet_wide'}
    with pytest.raises(ValueError, match="unknown model 'vgg'"): build_model('vgg', 10)
    with pytest.raises(ValueError, match='must be >= 1'): build_model('resnet32', 0)
