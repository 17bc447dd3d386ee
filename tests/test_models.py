import pytest
import torch

from fmlab import models


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_models_accept_any_size_and_channels(name, channels, size):
    model = models.build(name, in_channels=channels, num_classes=7, image_size=size)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 7)


def test_seed_cnn_matches_the_seeds_layers():
    model = models.SeedCNN(3, 10, 32)
    conv = model.features[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (3, 32, (3, 3), (0, 0))
    dense = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    # 32x32 -> conv 3x3 valid -> 30x30 -> pool 2 -> 15x15, times 32 channels
    assert dense[0].in_features == 32 * 15 * 15 and dense[0].out_features == 64
    assert dense[1].out_features == 10


def test_lenet300100_sizes():
    model = models.LeNet300100()
    assert models.count_parameters(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_too_small_input_and_unknown_name():
    with pytest.raises(ValueError, match="too small"):
        models.LeNet5(1, 10, 8)
    with pytest.raises(ValueError, match="seedcnn"):
        models.build("vgg")
