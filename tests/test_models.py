"""The four seed variants: shapes, the seed's layer sizes, noise in training mode only, the registry."""
import pytest
import torch
from torch import nn

from aemodels import VARIANTS, create_model
from aemodels.models import ConvAE, DenoisingAE, SparseAE, VanillaAE

MLP_SHAPES = [(512, 784), (256, 512), ("d", 256), (256, "d"), (512, 256), (784, 512)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("latent_dim", [2, 32])
def test_flat_input_gives_flat_reconstruction_and_latent(variant, latent_dim):
    model = create_model(variant, latent_dim).eval()
    x = torch.rand(5, 784)
    x_hat, z = model(x)
    assert x_hat.shape == (5, 784) and z.shape == (5, latent_dim)
    assert 0.0 <= x_hat.min() and x_hat.max() <= 1.0  # sigmoid output
    assert torch.allclose(model.decode(model.encode(x)).reshape(5, 784), x_hat)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_image_input_gives_image_shaped_reconstruction(variant):
    model = create_model(variant, 8).eval()
    x = torch.rand(3, 1, 28, 28)
    x_hat, z = model(x)
    assert x_hat.shape == (3, 1, 28, 28) and z.shape == (3, 8)
    assert torch.allclose(model(x.reshape(3, 784))[0], x_hat.reshape(3, 784))


@pytest.mark.parametrize("cls", [VanillaAE, DenoisingAE, SparseAE])
def test_mlp_variants_have_the_seed_layer_sizes(cls):
    model = cls(latent_dim=7)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    expected = [tuple(7 if n == "d" else n for n in shape) for shape in MLP_SHAPES]
    assert [tuple(m.weight.shape) for m in linears] == expected
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4


def test_conv_variant_has_the_seed_layers():
    model = ConvAE(latent_dim=16)
    c1, c2 = model.enc_conv[0], model.enc_conv[2]
    t1, t2 = model.dec_conv[0], model.dec_conv[2]
    assert (c1.in_channels, c1.out_channels, c1.kernel_size, c1.stride, c1.padding) == (1, 16, (3, 3), (2, 2), (1, 1))
    assert (c2.in_channels, c2.out_channels, c2.stride) == (16, 32, (2, 2))
    assert (t1.in_channels, t1.out_channels, t1.output_padding) == (32, 16, (1, 1))
    assert (t2.in_channels, t2.out_channels, t2.output_padding) == (16, 1, (1, 1))
    assert model.enc_fc.weight.shape == (16, 32 * 7 * 7) and model.dec_fc.weight.shape == (32 * 7 * 7, 16)
    assert isinstance(model.dec_conv[-1], nn.Sigmoid)


def test_denoising_adds_clamped_noise_in_training_mode_only():
    torch.manual_seed(0)
    model = DenoisingAE(latent_dim=8, noise_factor=0.5)
    x = torch.rand(16, 784)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    assert torch.equal(model(x)[1], model.encode(x))
    model.train()
    assert not torch.equal(model(x)[1], model(x)[1])
    noisy = model.add_noise(x)
    assert not torch.equal(noisy, x) and noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_sparse_penalty_is_weighted_mean_absolute_latent():
    model = SparseAE(latent_dim=4, sparsity_weight=0.5)
    z = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    assert model.penalty(z).item() == pytest.approx(0.5 * 6.0 / 4)


def test_unknown_variant_names_the_known_ones_and_the_closest():
    with pytest.raises(ValueError, match=r"unknown variant 'vanila' \(did you mean 'vanilla'\?; known: conv, denoising, sparse, vanilla\)"):
        create_model("vanila")
