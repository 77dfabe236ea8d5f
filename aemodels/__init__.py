"""aemodels: the seed article's four autoencoders and one pure, fast training function.

    from aemodels import TrainConfig, train
    result = train(TrainConfig(variant="denoising", latent_dim=16, epochs=5, train_subset=5000))
    result.history[-1]["val_loss"], result.model

No Ray, no Optuna, and no files written unless asked (`TrainState.save`).
"""
from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, ensure_dataset, load_dataset
from .models import VARIANTS, ConvAE, DenoisingAE, SparseAE, VanillaAE, create_model
from .pack import FAMILY, Pack, TrainState
from .train import TrainResult, resolve_device, train

__all__ = [
    "ConfigError", "TrainConfig", "DataError", "Dataset", "ensure_dataset", "load_dataset", "VARIANTS", "ConvAE",
    "DenoisingAE", "SparseAE", "VanillaAE", "create_model", "FAMILY", "Pack", "TrainState", "TrainResult",
    "resolve_device", "train",
]
