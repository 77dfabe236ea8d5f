"""train(): learning, determinism, purity, resume, stopping, divergence, and agreement with the seed's loop."""
import math

import pytest
import torch
import torch.nn.functional as F

import aemodels.data
from aemodels import DataError, TrainState, create_model, load_dataset, train
from aemodels.pack import epoch_order, generator

LOSSES = ("train_loss", "val_loss")


def losses(result):
    return [tuple(row[k] for k in LOSSES) for row in result.history]


@pytest.mark.parametrize("variant", ["vanilla", "denoising", "sparse", "conv"])
def test_a_few_epochs_lower_val_loss(small, variant):
    result = train(small(variant=variant, epochs=3, lr=3e-3, train_subset=2000))
    assert result.status == "completed" and len(result.history) == 3
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    row = result.history[0]
    assert set(row) >= {"epoch", "train_loss", "val_loss", "epoch_s", "images_per_s"} and row["epoch"] == 1


def test_same_config_gives_identical_numbers_and_leaves_global_rng_alone(small):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first, second = train(small(variant="denoising")), train(small(variant="denoising"))
    assert losses(first) == losses(second)
    assert torch.equal(torch.get_rng_state(), before)


def test_different_seed_gives_different_numbers(small):
    assert losses(train(small(seed=0))) != losses(train(small(seed=1)))


def _seed_loop(config):
    """The seed's loop, written plainly: its nn.Module, torch.optim.Adam and F.mse_loss, fed the same batches and noise."""
    data = load_dataset(config.dataset, config.data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.variant, config.latent_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rows = []
    for epoch in range(config.epochs):
        noise = generator(config.seed, "noise", epoch)
        total, batches = 0.0, 0
        for idx in epoch_order(config, epoch, len(data.train_images)).split(config.batch_size):
            x = data.train_images[idx].float() / 255
            x_in = x
            if config.variant == "denoising":
                x_in = torch.clamp(x + config.noise_factor * torch.randn((len(idx), 784), generator=noise), 0.0, 1.0)
            z = model.encode(x_in)
            loss = F.mse_loss(model.decode(z).reshape(x.shape), x)
            if config.variant == "sparse":
                loss = loss + config.sparsity_weight * torch.mean(torch.abs(z))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        model.eval()
        with torch.no_grad():
            x = data.test_images.float() / 255
            rows.append((total / batches, F.mse_loss(model(x)[0], x).item()))
        model.train()
    return rows


@pytest.mark.parametrize("variant,extra", [("vanilla", {}), ("denoising", {"noise_factor": 0.5}),
                                           ("sparse", {"sparsity_weight": 0.05}), ("conv", {})])
def test_train_computes_what_the_seed_loop_computes(small, variant, extra):
    config = small(variant=variant, latent_dim=6, lr=3e-3, **extra)
    for ours, theirs in zip(losses(train(config)), _seed_loop(config)):
        assert ours == pytest.approx(theirs, rel=1e-5)


def test_sparse_objective_includes_the_penalty(small):
    vanilla = losses(train(small(variant="vanilla")))
    unweighted = losses(train(small(variant="sparse", sparsity_weight=0.0)))
    assert sum(unweighted, ()) == pytest.approx(sum(vanilla, ()), rel=1e-6)
    heavy = losses(train(small(variant="sparse", sparsity_weight=1.0)))
    assert heavy[0][0] > vanilla[0][0] + 0.01  # train_loss carries the penalty ...
    assert heavy[0][1] < 1.0  # ... val_loss stays plain reconstruction MSE


def test_resume_from_a_saved_state_matches_an_uninterrupted_run(small, tmp_path):
    config = small(variant="denoising", epochs=4)
    uninterrupted = train(config)
    saved = []

    def save(state):
        path = tmp_path / f"epoch{state.epoch}.pt"
        state.save(path)
        saved.append(path)

    train(config, report=lambda m: m["epoch"] == 2, checkpoint=save)
    resumed = train(config, resume=TrainState.load(saved[-1]))
    assert losses(resumed) == losses(uninterrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1.pt", "epoch2.pt"]  # atomic writes leave no temp files
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_config(small):
    state = train(small(epochs=1)).state
    with pytest.raises(ValueError, match="cannot resume: the saved state has lr=0.001 but the config has lr=0.01"):
        train(small(epochs=2, lr=1e-2), resume=state)


def test_report_returning_true_stops_training(small):
    seen = []
    result = train(small(epochs=5), report=lambda m: seen.append(m["epoch"]) or m["epoch"] >= 2)
    assert result.status == "stopped" and seen == [1, 2] and len(result.history) == 2


def test_nan_loss_ends_training_as_diverged_without_raising(small):
    # lr=1e3 only saturates the sigmoid (the loss stays finite, the network collapses to a constant);
    # lr=1e6 overflows to NaN within the first epoch.
    seen = []
    result = train(small(epochs=5, lr=1e6), report=seen.append)
    assert result.status == "diverged" and len(result.history) == 1
    assert math.isnan(result.history[0]["train_loss"]) and seen[0]["status"] == "diverged"


def test_model_and_state_round_trip(small, tmp_path):
    result = train(small(variant="conv", epochs=1))
    result.state.save(tmp_path / "s.pt")
    model = TrainState.load(tmp_path / "s.pt").to_module()
    x = torch.rand(4, 784)
    assert torch.equal(model(x)[0], result.model(x)[0]) and not model.training


def test_second_train_reuses_the_loaded_data(small, monkeypatch):
    import aemodels.data

    reads = []
    read = aemodels.data._read
    monkeypatch.setattr(aemodels.data, "_LOADED", {})
    monkeypatch.setattr(aemodels.data, "_read", lambda *a: reads.append(a) or read(*a))
    train(small(epochs=1))
    train(small(epochs=1, lr=2e-3))
    assert len(reads) == 1
    assert load_dataset("mnist").train_images is load_dataset("mnist").train_images


def test_a_dataset_travels_as_arrays_and_each_receiver_gets_its_own_copy(data_dir):
    import pickle

    dataset = load_dataset("mnist", data_dir)
    buffers = []  # what Ray's object store keeps out of the pickle and maps into each worker, read-only
    data = pickle.dumps(dataset, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 4 and len(data) < 1000  # no image bytes in the pickle itself
    received = pickle.loads(data, buffers=[b.raw().toreadonly() for b in buffers])
    assert received.name == dataset.name
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(received.tensors, dataset.tensors))
    received.train_images[0, :10] = 255  # a receiver writing its copy changes nobody else's
    assert torch.equal(pickle.loads(data, buffers=[b.raw().toreadonly() for b in buffers]).train_images,
                       dataset.train_images)
    assert torch.equal(pickle.loads(pickle.dumps(dataset)).test_labels, dataset.test_labels)  # plain pickle too


def test_a_provided_dataset_is_used_without_reading_files(small, monkeypatch, tmp_path):
    import aemodels.data

    dataset = load_dataset("mnist")
    monkeypatch.setattr(aemodels.data, "_LOADED", {})
    aemodels.data.provide(dataset, str(tmp_path))  # an empty folder: nothing there to read
    assert load_dataset("mnist", str(tmp_path), download=False).train_images is dataset.train_images
    assert train(small(epochs=1, data_dir=str(tmp_path))).status == "completed"


def test_missing_data_with_no_download_names_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", str(tmp_path), download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "t10k-labels-idx1-ubyte" in message and "\n" not in message


def test_gzipped_copies_are_unpacked_in_place(tmp_path, data_dir):
    import gzip
    import shutil
    from pathlib import Path

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in Path(data_dir, "MNIST", "raw").iterdir():
        with open(f, "rb") as src, gzip.open(raw / f"{f.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert load_dataset("mnist", str(tmp_path)).train_images.shape == (60000, 784)


def test_bad_train_argument_is_a_type_error():
    with pytest.raises(TypeError, match="train\\(\\) needs a TrainConfig"):
        train({"variant": "vanilla"})


def test_idx_files_read_exactly_as_torchvision_reads_them(data_dir):
    from torchvision.datasets import MNIST

    ours = aemodels.data._read("mnist", data_dir)
    for train_split, images, labels in ((True, ours.train_images, ours.train_labels),
                                        (False, ours.test_images, ours.test_labels)):
        theirs = MNIST(data_dir, train=train_split, download=False)
        assert torch.equal(images, theirs.data.reshape(len(theirs.data), -1))
        assert torch.equal(labels, theirs.targets.long()) and images.dtype == torch.uint8
    assert ours.train_images.shape == (60000, 784) and ours.test_images.shape == (10000, 784)


def test_a_truncated_or_foreign_idx_file_is_a_one_line_error(tmp_path, data_dir):
    from pathlib import Path

    source = Path(data_dir, "MNIST", "raw", "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "cut").write_bytes(source[:-7])
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="truncated or corrupt; replace it") as err:
        aemodels.data.read_idx(tmp_path / "cut")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="is not an unsigned-byte IDX file"):
        aemodels.data.read_idx(tmp_path / "foreign")
