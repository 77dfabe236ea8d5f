"""The four autoencoders of the seed article, exactly as it writes them, behind one interface.

Every variant has `encode(x)`, `decode(z)` and `forward(x) -> (x_hat, z)`; x_hat has the shape of x.
Each is one entry of the variant registry (`aemodels.registry`, which registers these four by name, so
that reading which variants and knobs exist imports no torch). `create_model` builds one by name.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import VARIANTS, unknown_name

IMAGE_PIXELS = 28 * 28


class VanillaAE(nn.Module):
    """Symmetric fully-connected autoencoder: 784 -> 512 -> 256 -> latent_dim -> 256 -> 512 -> 784."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        # Encoder: 784 -> 512 -> 256 -> latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(784, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, latent_dim),
        )
        # Decoder: latent_dim -> 256 -> 512 -> 784
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 784),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(-1, IMAGE_PIXELS))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z).view(x.shape), z


class DenoisingAE(VanillaAE):
    """The vanilla architecture, trained on inputs corrupted by clamped Gaussian noise."""

    def __init__(self, latent_dim: int = 32, noise_factor: float = 0.3):
        super().__init__(latent_dim)
        self.noise_factor = noise_factor

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.noise_factor * torch.randn_like(x)
        noisy = x + noise
        return torch.clamp(noisy, 0.0, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            x_input = self.add_noise(x)
        else:
            x_input = x
        z = self.encode(x_input)
        return self.decode(z).view(x.shape), z


class SparseAE(VanillaAE):
    """The vanilla architecture with an L1 penalty on the bottleneck: loss = mse + sparsity_weight * mean|z|."""

    def __init__(self, latent_dim: int = 32, sparsity_weight: float = 1e-3):
        super().__init__(latent_dim)
        self.sparsity_weight = sparsity_weight

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return self.sparsity_weight * torch.mean(torch.abs(z))


class ConvAE(nn.Module):
    """Two stride-2 convolutions down to 32x7x7, a linear bottleneck, and two transposed convolutions back."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        # Encoder
        self.enc_conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),  # 28x28 -> 14x14
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 14x14 -> 7x7
            nn.ReLU(inplace=True),
        )
        self.enc_fc = nn.Linear(32 * 7 * 7, latent_dim)
        # Decoder
        self.dec_fc = nn.Linear(latent_dim, 32 * 7 * 7)
        self.dec_conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),  # 7x7 -> 14x14
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),  # 14x14 -> 28x28
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc_fc(self.enc_conv(x.reshape(-1, 1, 28, 28)).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_conv(self.dec_fc(z).view(-1, 32, 7, 7))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z).view(x.shape), z


def create_model(variant: str, latent_dim: int = 32, **kwargs) -> nn.Module:
    """Build a variant by name; extra keyword arguments go to its constructor (its knobs)."""
    if variant not in VARIANTS:
        raise ValueError(unknown_name("variant", variant, VARIANTS))
    return VARIANTS[variant](latent_dim, **kwargs)
