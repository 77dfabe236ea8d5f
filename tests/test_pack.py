"""Packed training: K members trained as one batched model compute what each computes alone."""
import pytest
import torch

from aemodels import REGISTRY, Pack, TrainState, load_dataset, train
from aemodels.data import Dataset
from aemodels.pack import FORWARD_PATHS


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a sweep trains every trial and every CPU trainer: with more, the kernels split
    their sums by thread, and how depends on the shapes and the CPU (at two threads, an AVX-512 Xeon's
    high-lr conv member drifted 1.9e-4 from its solo run in 4 epochs; at one, 4e-8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def val_losses(history):
    return [row["val_loss"] for row in history]


def run_pack(configs, epochs, joins=None, leaves=None):
    """Train configs in one pack; joins/leaves map an epoch index to member keys joining/leaving before it."""
    joins, leaves = joins or {}, leaves or {}
    data = load_dataset(configs[0].dataset, configs[0].data_dir)
    pack = Pack.for_config(configs[0], data)
    histories = {k: [] for k in range(len(configs))}
    for k in range(len(configs)):
        if not any(k in keys for keys in joins.values()):
            pack.add(k, TrainState.initial(configs[k]))
    for epoch in range(epochs):
        for k in joins.get(epoch, []):
            pack.add(k, TrainState.initial(configs[k]))
        for k in leaves.get(epoch, []):
            pack.remove(k)
        for key, row in pack.run_epoch().items():
            histories[key].append(row["val_loss"])
    return pack, histories


@pytest.fixture
def mixed(small):
    return [small(variant="vanilla", latent_dim=2, lr=1e-3, epochs=3),
            small(variant="denoising", latent_dim=16, lr=3e-3, noise_factor=0.5, epochs=3),
            small(variant="sparse", latent_dim=7, lr=2e-3, sparsity_weight=0.01, seed=5, epochs=3),
            small(variant="vanilla", latent_dim=64, lr=5e-4, seed=3, epochs=3)]


def test_packed_members_of_mixed_variants_and_latent_dims_match_training_alone(mixed):
    alone = [val_losses(train(c).history) for c in mixed]
    _, packed = run_pack(mixed, epochs=3)
    for k in range(len(mixed)):
        assert packed[k] == pytest.approx(alone[k], rel=1e-5)


def test_members_joining_and_leaving_between_epochs_leave_the_others_untouched(mixed):
    alone = [val_losses(train(c).history) for c in mixed]
    # member 3 joins one epoch late; member 0 is stopped (as ASHA would) after its first epoch
    _, packed = run_pack(mixed, epochs=3, joins={1: [3]}, leaves={1: [0]})
    assert len(packed[0]) == 1 and packed[0] == pytest.approx(alone[0][:1], rel=1e-5)
    for k in (1, 2):
        assert packed[k] == pytest.approx(alone[k], rel=1e-5)
    assert packed[3] == pytest.approx(alone[3][:2], rel=1e-5)


@pytest.mark.parametrize("threads, rel", [(1, 1e-6), (2, 1e-3)])
def test_conv_members_packed_compute_what_they_compute_alone(small, threads, rel):
    # lr 5.5e-3 over 4 epochs: grouped convolutions' rounding, amplified by Adam, drifted 1.2% from the
    # solo run here; the CPU's per-member convolutions must not drift at all at one thread, and at two
    # stay within the 1e-3 a packed trial promises.
    torch.set_num_threads(threads)
    configs = [small(variant="conv", latent_dim=28, lr=5.5e-3, train_subset=2000, epochs=4),
               small(variant="conv", latent_dim=3, train_subset=2000, epochs=4),
               small(variant="conv", latent_dim=12, lr=5e-3, seed=2, train_subset=2000, epochs=4)]
    alone = [val_losses(train(c).history) for c in configs]
    _, packed = run_pack(configs, epochs=4)
    for k in range(3):
        assert packed[k] == pytest.approx(alone[k], rel=rel)


def test_a_packed_member_checkpointed_and_resumed_elsewhere_continues_its_history(mixed, tmp_path):
    config = mixed[1]
    alone = train(config)
    pack, _ = run_pack(mixed[:2], epochs=1)
    pack.remove(1).save(tmp_path / "member.pt")  # leaves after epoch 1, as a checkpoint on disk
    other = Pack.for_config(config, load_dataset(config.dataset, config.data_dir))
    other.add("resumed", TrainState.load(tmp_path / "member.pt"))
    other.add("neighbour", TrainState.initial(mixed[3]))
    for _ in range(2):
        other.run_epoch()
    assert val_losses(other.snapshot("resumed").history) == pytest.approx(val_losses(alone.history), rel=1e-5)


def test_padding_of_narrow_latents_stays_exactly_zero(mixed):
    pack, _ = run_pack([mixed[0], mixed[3]], epochs=1)  # latent 2 padded to 64
    enc, dec = pack.params["encoder.4.weight"], pack.params["decoder.0.weight"]
    assert enc.shape == (2, 64, 256) and dec.shape == (2, 256, 64)
    assert torch.count_nonzero(enc[0, 2:, :]) == 0 and torch.count_nonzero(dec[0, :, 2:]) == 0
    assert torch.count_nonzero(pack.params["encoder.4.bias"][0, 2:]) == 0
    assert torch.count_nonzero(enc[1, 2:, :]) > 0
    assert pack.snapshot(0).model["encoder.4.weight"].shape == (2, 256)


@pytest.mark.parametrize("path", ["batched", "per_member"])
@pytest.mark.parametrize("variant", list(REGISTRY))
def test_packed_forward_equals_each_members_module_forward(small, variant, path):
    """Both paths: all members in one vmapped call (a GPU's default; it runs on a CPU too) and one by one."""
    configs = [small(variant=variant, latent_dim=d, seed=d) for d in (3, 10)]
    states = [TrainState.initial(c) for c in configs]
    pack = Pack.for_config(configs[0], load_dataset(configs[0].dataset, configs[0].data_dir), forward_path=path)
    for k, state in enumerate(states):
        pack.add(k, state)
    x = torch.rand(2, 5, 784)
    with torch.no_grad():
        x_hat, z = pack._forward(x)
    for k, state in enumerate(states):
        module_x_hat, module_z = state.to_module()(x[k])
        assert torch.allclose(x_hat[k], module_x_hat, atol=1e-6)
        assert torch.allclose(z[k][:, :configs[k].latent_dim], module_z, atol=1e-6)


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_training_runs_the_variants_own_module_forward_and_loss_term(small, variant, monkeypatch):
    """No second copy of an architecture: the pack calls the registered module's forward, and its
    penalty(z) where the registry names one, on the member's own latent."""
    module = REGISTRY[variant].module
    calls = []
    forward = module.forward
    monkeypatch.setattr(module, "forward", lambda self, x: calls.append("forward") or forward(self, x))
    if REGISTRY[variant].penalty:
        penalty = module.penalty
        monkeypatch.setattr(module, "penalty", lambda self, z: calls.append(z.shape) or penalty(self, z))
    train(small(variant=variant, latent_dim=5, epochs=1, train_subset=200, batch_size=100))
    assert "forward" in calls
    assert (torch.Size([100, 5]) in calls) == (REGISTRY[variant].penalty is not None)


def test_batched_conv_members_the_gpu_path_match_per_member_ones_on_cpu(small):
    """The batched path (vmap turns the members' convolutions into grouped ones), which only GPUs take by
    default, forced on a CPU against the per-member path: the same gradients at the same weights, then the
    same losses after ten Adam steps.

    Tolerances: both paths compute the same sums in another order. The largest is the last transposed
    convolution's bias gradient, B x 784 = 50,176 fp32 terms per member: a rounding random walk of
    sqrt(n) x 1.2e-7 ~ 3e-5 relative (measured 3e-5), so gradients agree to 1e-3 of their largest entry,
    far from any real mix-up of members or channels (an error of order one). Adam then divides each
    gradient by its own running scale, which turns a last-bit difference in a near-zero gradient into a
    difference of up to lr in a weight: after 10 steps the weights agree to 1e-2 in norm (measured 1.4e-3
    for the lr-5.5e-3 member after 16 steps, 1e-7 for the others), and the losses to the 1e-3 a packed
    trial promises (measured 1e-4 / 1e-6).
    """
    configs = [small(variant="conv", latent_dim=28, lr=5.5e-3, train_subset=640),
               small(variant="conv", latent_dim=3, lr=1e-3, seed=1, train_subset=640),
               small(variant="conv", latent_dim=12, lr=3e-3, seed=2, train_subset=640)]
    full = load_dataset(configs[0].dataset, configs[0].data_dir)
    data = Dataset(full.name, full.train_images, full.train_labels, full.test_images[:1000], full.test_labels[:1000])
    packs = {}  # (val_loss on 1,000 test images: on all 10,000 the evaluation took most of this test's time)
    for path in ("per_member", "batched"):
        packs[path] = Pack.for_config(configs[0], data, forward_path=path)
        for k, config in enumerate(configs):
            packs[path].add(k, TrainState.initial(config))
    assert packs["batched"].batched is not None and packs["per_member"].batched is None

    params = {n: t.detach().clone().requires_grad_() for n, t in packs["per_member"].params.items()}
    x = data.train_images[:64].float().div(255).expand(3, -1, -1)
    losses, grads = {}, {}
    for path, pack in packs.items():
        x_hat, _ = pack._forward(x, params)
        losses[path] = (x_hat - x).pow(2).mean(dim=(1, 2))
        grads[path] = torch.autograd.grad(losses[path].sum(), list(params.values()))
    assert torch.allclose(losses["batched"], losses["per_member"], rtol=1e-6, atol=0)
    for name, batched, per_member in zip(params, grads["batched"], grads["per_member"]):
        assert (batched - per_member).abs().max() <= 1e-3 * per_member.abs().max(), name

    rows = {path: [pack.run_epoch() for _ in range(2)] for path, pack in packs.items()}  # 2 x 5 Adam steps
    for epoch in range(2):
        for k in range(3):
            for metric in ("train_loss", "val_loss"):
                assert rows["batched"][epoch][k][metric] == pytest.approx(rows["per_member"][epoch][k][metric],
                                                                          rel=1e-3), (epoch, k, metric)
    for k in range(3):
        batched, per_member = packs["batched"].snapshot(k), packs["per_member"].snapshot(k)
        assert batched.adam_step == per_member.adam_step == 10
        for name, weight in per_member.model.items():
            assert (batched.model[name] - weight).norm() <= 1e-2 * weight.norm(), (k, name)


@pytest.mark.parametrize("variant, batched", [("vanilla", True), ("sparse", True), ("conv", False)])
def test_auto_on_a_cpu_batches_several_members_without_convolutions_and_runs_one_alone(small, variant, batched):
    pack = Pack.for_config(small(variant=variant), load_dataset("mnist"))
    pack.add(0, TrainState.initial(small(variant=variant)))
    assert pack.batched is None  # a trial trained alone runs its module's own kernels
    pack.add(1, TrainState.initial(small(variant=variant, seed=1)))
    assert (pack.batched is not None) == batched
    pack.remove(0)
    assert pack.batched is None


def test_an_unknown_forward_path_is_refused_with_the_known_ones(small):
    assert FORWARD_PATHS == ("auto", "batched", "per_member")
    with pytest.raises(ValueError, match="unknown forward_path 'batchd' \\(known: auto, batched, per_member\\)"):
        Pack.for_config(small(variant="conv"), load_dataset("mnist"), forward_path="batchd")


def test_a_member_that_does_not_fit_is_refused(small):
    pack = Pack.for_config(small(), load_dataset("mnist"))
    with pytest.raises(ValueError, match="does not fit this pack"):
        pack.add("conv", TrainState.initial(small(variant="conv")))
    with pytest.raises(ValueError, match="does not fit this pack"):
        pack.add("wide batch", TrainState.initial(small(batch_size=256)))


def test_membership_changes_keep_every_members_state(mixed):
    data = load_dataset(mixed[0].dataset, mixed[0].data_dir)
    pack = Pack.for_config(mixed[0], data)
    states = {k: TrainState.initial(c) for k, c in enumerate(mixed)}
    pack.update([], {0: states[0], 3: states[3]})  # the widest latent arrives: padding grows
    pack.update([0, 3], {1: states[1], 2: states[2]})
    pack.update([1, 2])  # the widest leaves: padding shrinks
    for k in (1, 2):
        snap = pack.snapshot(k)
        for name, tensor in states[k].model.items():
            assert torch.equal(snap.model[name], tensor), name


def test_a_failed_cuda_graph_capture_falls_back_to_eager_steps_with_one_warning(mixed, monkeypatch):
    """The GPU path's fallback, exercised on a CPU: capture raises, training goes on eagerly, same numbers."""
    _, expected = run_pack(mixed[:2], epochs=2)
    data = load_dataset(mixed[0].dataset, mixed[0].data_dir)
    pack = Pack.for_config(mixed[0], data)
    for k in range(2):
        pack.add(k, TrainState.initial(mixed[k]))
    pack.use_graphs = True  # as on a GPU
    calls = []

    def capture():
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(pack, "_capture", capture)
    got = {0: [], 1: []}
    with pytest.warns(UserWarning, match="CUDA graph capture failed .*training without graphs"):
        for _ in range(2):
            for key, row in pack.run_epoch().items():
                got[key].append(row["val_loss"])
    assert calls == [1] and not pack.use_graphs
    assert got == expected
