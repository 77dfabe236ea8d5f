"""A variant defined outside aemodels, as a user would add one: its module class and one registry entry.

Importing this module registers it; a sweep's Ray workers import it through AEMODELS_VARIANT_MODULES.
"""
import torch
from torch import nn

from aemodels import register_variant


class TinyAE(nn.Module):
    """784 -> 32 -> latent_dim -> 32 -> 784: an architecture no other variant shares, so a pack of its own."""

    def __init__(self, latent_dim: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor):
        z = self.encoder(x.reshape(-1, 784))
        return self.decoder(z).view(x.shape), z


register_variant("tiny", TinyAE, family="tiny", color="tab:purple")
