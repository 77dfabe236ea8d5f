"""TrainConfig refuses every bad field at construction, with one line naming the field and the fix."""
import pytest

from aemodels import ConfigError, TrainConfig

BAD = [
    (dict(variant="vanila"), "did you mean 'vanilla'"),
    (dict(variant=3), "unknown variant 3"),
    (dict(latent_dim=0), "latent_dim must be >= 1"),
    (dict(latent_dim=2.5), "latent_dim must be an integer"),
    (dict(latent_dim="8"), "latent_dim must be an integer"),
    (dict(latent_dim=True), "latent_dim must be an integer"),
    (dict(lr=0), "lr must be > 0.0"),
    (dict(lr=-1e-3), "lr must be > 0.0"),
    (dict(lr=float("nan")), "lr must be finite"),
    (dict(lr=float("inf")), "lr must be finite"),
    (dict(lr="fast"), "lr must be a number"),
    (dict(noise_factor=0.3), "noise_factor is only used by the denoising variant"),
    (dict(variant="denoising", noise_factor=-0.1), "noise_factor must be >= 0.0"),
    (dict(variant="denoising", noise_factor="lots"), "noise_factor must be a number"),
    (dict(sparsity_weight=1e-3), "sparsity_weight is only used by the sparse variant"),
    (dict(variant="sparse", sparsity_weight=-1), "sparsity_weight must be >= 0.0"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(batch_size=12.0), "batch_size must be an integer"),
    (dict(epochs=-1), "epochs must be >= 0"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(train_subset=0), "train_subset must be >= 1"),
    (dict(train_subset=70_000), "train_subset must be <= 60000"),
    (dict(train_subset=100), "train_subset=100 is smaller than batch_size=128"),
    (dict(dataset="cifar10"), "unknown dataset 'cifar10'"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(matmul_precision="medium"), "unknown matmul precision 'medium'"),
    (dict(cuda_graphs="yes"), "cuda_graphs must be true or false"),
    (dict(data_dir=5), "data_dir must be a path string"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[next(iter(f)) + "=" + repr(next(iter(f.values()))) for f, _ in BAD])
def test_bad_field_is_rejected_with_one_line(fields, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**fields)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_variant_knobs_default_to_the_seed_values_and_stay_empty_elsewhere():
    assert TrainConfig(variant="denoising").noise_factor == 0.3
    assert TrainConfig(variant="sparse").sparsity_weight == 1e-3
    vanilla = TrainConfig()
    assert vanilla.noise_factor is None and vanilla.sparsity_weight is None
    assert TrainConfig(variant="sparse").uses == ("latent_dim", "lr", "sparsity_weight")


def test_dict_round_trip_and_unknown_keys_suggest_the_closest():
    config = TrainConfig(variant="denoising", latent_dim=16, lr=3e-4, noise_factor=0.5, train_subset=5000)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown TrainConfig field 'latnet_dim' \\(did you mean 'latent_dim'"):
        TrainConfig.from_dict({"latnet_dim": 4})


def test_config_is_frozen():
    with pytest.raises(Exception):
        TrainConfig().lr = 1.0
