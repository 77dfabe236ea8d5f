"""aemodels: the seed article's four autoencoders and one pure, fast training function.

    from aemodels import TrainConfig, train
    result = train(TrainConfig(variant="denoising", latent_dim=16, epochs=5, train_subset=5000))
    result.history[-1]["val_loss"], result.model

No Ray, no Optuna, and no files written unless asked (`TrainState.save`).
"""
from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, ensure_dataset, load_dataset
from .models import VARIANTS, ConvAE, DenoisingAE, SparseAE, VanillaAE, create_model
from .registry import REGISTRY, Knob, Variant, get_variant, import_variant_modules, register_variant
from .pack import FAMILY, Pack, TrainState
from .train import TrainResult, resolve_device, train

import_variant_modules()  # last: the modules it names register through the package, now complete

__all__ = [
    "ConfigError", "TrainConfig", "DataError", "Dataset", "ensure_dataset", "load_dataset", "VARIANTS", "ConvAE",
    "DenoisingAE", "SparseAE", "VanillaAE", "create_model", "REGISTRY", "Knob", "Variant", "get_variant",
    "register_variant", "FAMILY", "Pack", "TrainState", "TrainResult", "resolve_device", "train",
]
