"""aemodels: the seed article's four autoencoders and one pure, fast training function.

    from aemodels import TrainConfig, train
    result = train(TrainConfig(variant="denoising", latent_dim=16, epochs=5, train_subset=5000))
    result.history[-1]["val_loss"], result.model

No Ray, no Optuna, and no files written unless asked (`TrainState.save`). Importing the package
imports nothing else: each name below loads its module on first use, so `aemodels.files` and
`aemodels.registry` load without torch.
"""
import importlib

_EXPORTS = {
    "ConfigError": "config", "TrainConfig": "config",
    "DataError": "data", "Dataset": "data", "ensure_dataset": "data", "load_dataset": "data",
    "VARIANTS": "models", "ConvAE": "models", "DenoisingAE": "models", "SparseAE": "models", "VanillaAE": "models",
    "create_model": "models",
    "REGISTRY": "registry", "Knob": "registry", "Variant": "registry", "get_variant": "registry",
    "register_variant": "registry",
    "FAMILY": "pack", "Pack": "pack", "TrainState": "pack",
    "TrainResult": "train", "resolve_device": "train", "train": "train",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aemodels' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    # Bind all of the module's names at once: importing aemodels/train.py sets `aemodels.train` to the
    # module, and the function of that name must win.
    globals().update({key: getattr(module, key) for key, source in _EXPORTS.items() if source == _EXPORTS[name]})
    return globals()[name]
