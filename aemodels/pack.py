"""K autoencoders of one architecture family trained together as one batched model.

Every parameter is stacked along a leading member dimension, and every member runs its variant's own
module (`torch.func.functional_call` over its share of the stacks): all members in one call (`vmap`:
batched matmuls, grouped convolutions), or, on a CPU for convolutions or a lone member, one after
another with the very kernels a model alone runs. Members may differ in variant (the variants of one
registry family), latent_dim (zero-padded to the pack's widest, which gets exactly zero gradient and
stays zero), lr, their variant's knobs (the noise and penalty weights the registry names), seed and
epoch: each draws its own batches and noise from generators keyed by (seed, epoch), and has its own Adam
state and step count. A member therefore computes what it would compute alone; `aemodels.train` is a
pack of one. Members join and leave between epochs.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Hashable, Optional

import torch

from .config import TrainConfig
from .data import Dataset
from .files import write_atomic
from .models import create_model
from .registry import FAMILY, REGISTRY

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the seed's training uses
ADAM_EPS = 1e-8
EVAL_ROWS = 8192  # member-images per evaluation chunk: bounds activation memory for any pack size


def derived_seed(seed: int, *keys) -> int:
    """A 63-bit seed for one random stream of a run (e.g. the batch order of epoch 3)."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *keys, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(seed, *keys))


def epoch_order(config: TrainConfig, epoch: int, total: int) -> torch.Tensor:
    """Indices into the training set for one epoch: the seeded subset, in the epoch's seeded order."""
    return _epoch_order(config.seed, config.train_subset or total, epoch, total).clone()


@functools.lru_cache(maxsize=64)  # a sweep's members mostly share a seed: one permutation serves them all
def _epoch_order(seed: int, size: int, epoch: int, total: int) -> torch.Tensor:
    subset = torch.randperm(total, generator=generator(seed, "subset"))[:size] if size < total else None
    order = torch.randperm(size, generator=generator(seed, "order", epoch))
    return order if subset is None else subset[order]


@dataclass
class TrainState:
    """Everything needed to continue a run after an epoch: save it, load it, pass it to `train(resume=)`.

    `model` is the variant's own state_dict, so the weights load into `create_model(...)` directly;
    the random streams are keyed by (seed, epoch), so `epoch` is all the RNG state there is.
    """

    config: TrainConfig
    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    adam_step: int
    history: list[dict] = field(default_factory=list)
    status: str = "running"

    @classmethod
    def initial(cls, config: TrainConfig) -> "TrainState":
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            model = create_model(config.variant, config.latent_dim)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        zeros = lambda: {k: torch.zeros_like(v) for k, v in weights.items()}  # noqa: E731
        return cls(config, 0, weights, zeros(), zeros(), 0)

    def to_module(self) -> torch.nn.Module:
        model = _meta_module(self.config)
        model.load_state_dict({k: v.clone() for k, v in self.model.items()}, assign=True)
        return model.eval()

    def to_dict(self) -> dict:
        return {"format": 1, "config": self.config.to_dict(), "epoch": self.epoch, "model": self.model,
                "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "adam_step": self.adam_step,
                "history": self.history, "status": self.status}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        values = dict(values)
        if values.pop("format", None) != 1:
            raise ValueError("not an aemodels training state (format 1)")
        values["config"] = TrainConfig.from_dict(values["config"])
        return cls(**values)

    def save(self, path, durable: bool = True) -> None:
        """Write atomically: a crash leaves the previous file or the new one, never half of one.

        durable=False skips the fsync, for a scratch copy that is about to be copied elsewhere.
        """
        write_atomic(path, lambda tmp: torch.save(self.to_dict(), tmp), durable=durable)

    @classmethod
    def load(cls, path) -> "TrainState":
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def _knob(config: TrainConfig, role: str) -> float:
    """The value of the knob the config's variant gives `role` ("noise" or "penalty"), 0 when it has none."""
    name = getattr(REGISTRY[config.variant], role)
    return getattr(config, name) if name is not None else 0.0


def _meta_module(config: TrainConfig) -> torch.nn.Module:
    """The config's module with its knobs, on the meta device: no random init, its weights come from elsewhere."""
    kwargs = {k.name: getattr(config, k.name) for k in REGISTRY[config.variant].knobs}
    with torch.device("meta"):
        return create_model(config.variant, config.latent_dim, **kwargs)


# ---- the members' forward -----------------------------------------------------------------------

def _family_module(family: str) -> torch.nn.Module:
    """A module of the family, on the meta device: what its variants share (layers, state names)."""
    variant = next(v for v in REGISTRY.values() if v.family == family)
    with torch.device("meta"):
        return variant.module(1, **{k.name: k.default for k in variant.knobs})


_CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                 torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def _convolves(module: torch.nn.Module) -> bool:
    return any(isinstance(layer, _CONVOLUTIONS) for layer in module.modules())


def _slot_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def _batched(module: torch.nn.Module):
    """One module's forward over every member at once, PyTorch's model-ensembling recipe: `vmap` of
    `functional_call` over the stacked parameters. Linear layers become batched matmuls and convolutions
    grouped ones (vmap's batching rules), so a pack of K costs a few large kernels per layer."""
    def member(params, x):
        return torch.func.functional_call(module, params, (x,))

    return torch.func.vmap(member)


# Pack(forward_path=...): how the members' forward runs. "batched" is one vmapped call over the stacks;
# "per_member" calls each member's module on its own share, the very kernels a model alone runs. "auto"
# is batched off the CPU, where one launch per layer for all members is what makes packing pay. On a CPU
# it is per_member for a lone member (a trial trained alone: its module's own kernels are the fastest
# there, and a retrain repeats them exactly) and for a family with convolutions (a grouped convolution
# sums in another order than a plain one, Adam turns those last-bit differences into a visible drift
# from the member's solo run, and it is no faster); several members of any other family run batched
# matmuls, which keep each within rounding of its solo run and use the cores better than small ones.
FORWARD_PATHS = ("auto", "batched", "per_member")


@contextlib.contextmanager
def _matmul_precision(precision: str):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclass
class _Member:
    key: Hashable
    config: TrainConfig
    epoch: int
    adam_step: int
    history: list
    status: str
    slot_shapes: dict
    module: torch.nn.Module  # the member's own module with its knobs, on the meta device, in eval mode


class Pack:
    """The members of one family, batch size and training-set size, on one device, trained in lockstep."""

    def __init__(self, dataset: Dataset, family: str, batch_size: int, train_size: int,
                 cuda_graphs: bool = True, matmul_precision: str = "highest", forward_path: str = "auto"):
        if forward_path not in FORWARD_PATHS:
            raise ValueError(f"unknown forward_path {forward_path!r} (known: {', '.join(FORWARD_PATHS)})")
        self.dataset, self.family, self.batch_size, self.train_size = dataset, family, batch_size, train_size
        self.device = dataset.device
        if forward_path == "auto" and self.device.type != "cpu":
            forward_path = "batched"
        self.forward_path = forward_path  # "auto" here: decided by the members, in _runs_batched
        family_module = _family_module(family)
        self.convolves = _convolves(family_module)
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.matmul_precision = matmul_precision
        self.members: list[_Member] = []
        self.names = list(family_module.state_dict())  # the family's parameters and buffers, as state_dicts name them
        self.params: dict[str, torch.Tensor] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self._graph = None

    @staticmethod
    def key_of(config: TrainConfig) -> tuple:
        """Members with equal keys can share a pack."""
        return (FAMILY[config.variant], config.batch_size, config.train_subset, config.dataset)

    @classmethod
    def for_config(cls, config: TrainConfig, dataset: Dataset, forward_path: str = "auto") -> "Pack":
        return cls(dataset, FAMILY[config.variant], config.batch_size,
                   config.train_subset or len(dataset.train_images), config.cuda_graphs, config.matmul_precision,
                   forward_path)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def keys(self) -> list:
        return [m.key for m in self.members]

    # ---- membership ----------------------------------------------------------------------------

    def add(self, key: Hashable, state: TrainState) -> None:
        self.update(self.keys, {key: state})

    def remove(self, key: Hashable) -> TrainState:
        state = self.snapshot(key)
        self.update([k for k in self.keys if k != key])
        return state

    def retain(self, keys) -> None:
        """Drop every member not in `keys` (without snapshotting them)."""
        keep = set(keys)
        if keep != set(self.keys):
            self.update([k for k in self.keys if k in keep])

    def update(self, keep, add: Optional[dict] = None) -> None:
        """Keep the members in `keep`, drop the others, and add `add` (key -> TrainState): one restack."""
        add = add or {}
        keep = set(keep)
        for key, state in add.items():
            config = state.config
            if FAMILY[config.variant] != self.family or config.batch_size != self.batch_size or \
                    (config.train_subset or len(self.dataset.train_images)) != self.train_size:
                raise ValueError(f"member {key!r} does not fit this pack ({self.family}, batch {self.batch_size}, "
                                 f"{self.train_size} images)")
            if key in keep:
                raise ValueError(f"member {key!r} is already in the pack")
        kept = [m for m in self.members if m.key in keep]
        modules = {key: _meta_module(s.config).eval() for key, s in add.items()}
        new = [_Member(key, s.config, s.epoch, s.adam_step, list(s.history), s.status, _slot_shapes(modules[key]),
                       modules[key])
               for key, s in add.items()]
        incoming = {key: {"params": s.model, "exp_avg": s.exp_avg, "exp_avg_sq": s.exp_avg_sq}
                    for key, s in add.items()}
        self._restack(kept, new, incoming)

    def snapshot(self, key: Hashable) -> TrainState:
        """The member's state now, as CPU tensors in the variant's own state_dict layout."""
        k = self.keys.index(key)
        member = self.members[k]
        take = lambda stack: {n: self._crop(stack[n][k], member.slot_shapes[n]).cpu().clone()
                              for n in self.names}  # noqa: E731
        return TrainState(member.config, member.epoch, take(self.params), take(self.exp_avg), take(self.exp_avg_sq),
                          member.adam_step, [dict(h) for h in member.history], member.status)

    @staticmethod
    def _crop(slot: torch.Tensor, shape) -> torch.Tensor:
        return slot[tuple(slice(0, n) for n in shape)]

    def _restack(self, kept: list, new: list, incoming: dict) -> None:
        """Rebuild the stacked tensors: kept members first, then new ones, zero-padded to the widest."""
        members = kept + new
        rows = torch.tensor([self.keys.index(m.key) for m in kept], dtype=torch.long, device=self.device)
        stacks = {"params": self.params, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}
        out = {what: {} for what in stacks}
        with torch.no_grad():
            for name in self.names:
                ndim = len(members[0].slot_shapes[name]) if members else 0
                shape = [max(m.slot_shapes[name][d] for m in members) for d in range(ndim)]
                for what, stack in stacks.items():
                    if kept and list(stack[name].shape[1:]) == shape:  # same padding: one gather
                        base = stack[name].index_select(0, rows)
                    else:
                        base = torch.zeros((len(kept), *shape), device=self.device)
                        for i, m in enumerate(kept):
                            self._crop(base[i], m.slot_shapes[name]).copy_(
                                self._crop(stack[name][self.keys.index(m.key)], m.slot_shapes[name]))
                    added = torch.zeros((len(new), *shape), device=self.device)
                    for i, m in enumerate(new):
                        self._crop(added[i], m.slot_shapes[name]).copy_(incoming[m.key][what][name])
                    out[what][name] = torch.cat([base, added]).requires_grad_(what == "params")
        self.params, self.exp_avg, self.exp_avg_sq = out["params"], out["exp_avg"], out["exp_avg_sq"]
        self.members = members
        self._graph = None
        self._build_member_tensors()

    def _build_member_tensors(self) -> None:
        dev, ms = self.device, self.members
        as_tensor = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=dev)  # noqa: E731
        self.lr = as_tensor([m.config.lr for m in ms], torch.float64)
        self.adam_steps = as_tensor([m.adam_step for m in ms], torch.float64)
        self.noise_scale = as_tensor([_knob(m.config, "noise") for m in ms])
        self.has_noise = any(_knob(m.config, "noise") for m in ms)
        # The members whose variant adds its module's penalty(z) to the objective, and their rows.
        self.penalized = [(i, m) for i, m in enumerate(ms) if REGISTRY[m.config.variant].penalty is not None]
        self.penalized_rows = torch.tensor([i for i, _ in self.penalized], dtype=torch.long, device=dev)
        # The widest member's module has the stacks' padded shapes; a family's variants share one forward.
        widest = max(ms, key=lambda m: m.config.latent_dim, default=None)
        self.batched = _batched(widest.module) if widest and self._runs_batched() else None
        self.order = torch.zeros((len(ms), self.train_size), dtype=torch.long, device=dev)
        self.noise = torch.zeros((len(ms), self.batch_size, 784), device=dev) if self.has_noise else None
        self.noise_row = torch.zeros(len(ms), dtype=torch.long, device=dev)
        self.batch_no = torch.zeros((), dtype=torch.long, device=dev)
        self.loss_sum = torch.zeros(len(ms), dtype=torch.float64, device=dev)
        self.columns = torch.arange(self.batch_size, device=dev)

    def _runs_batched(self) -> bool:
        if self.forward_path == "auto":  # on a CPU (see FORWARD_PATHS)
            return len(self.members) > 1 and not self.convolves
        return self.forward_path == "batched"

    # ---- one step ------------------------------------------------------------------------------

    def _step(self, size: int) -> None:
        """Forward, backward and Adam for batch number `self.batch_no` of every member (capturable)."""
        cols = self.batch_no * self.batch_size + self.columns[:size]
        x = self.dataset.train_images[self.order[:, cols]].float().div_(255)  # (K, size, 784)
        x_in = x
        if self.has_noise:
            # DenoisingAE.add_noise's arithmetic, but not its call: it draws from the global RNG, and a
            # member's noise comes from its own (seed, epoch) stream, drawn before the captured step.
            noise = self.noise[self.noise_row, :size]
            x_in = torch.clamp(x + self.noise_scale.view(-1, 1, 1) * noise, 0.0, 1.0)
        with torch.enable_grad():
            x_hat, z = self._forward(x_in)
            objective = (x_hat - x).pow(2).mean(dim=(1, 2))
            if self.penalized:
                penalties = [m.module.penalty(z[i][:, :m.config.latent_dim]) for i, m in self.penalized]
                objective = objective.index_add(0, self.penalized_rows, torch.stack(penalties))
            grads = torch.autograd.grad(objective.sum(), [self.params[n] for n in self.names])
        with torch.no_grad():
            self.loss_sum += objective.detach().double()
            self._adam(grads)
            self.batch_no += 1

    def _forward(self, x: torch.Tensor, params: Optional[dict] = None):
        """Every member's module in eval mode (the pack adds the noise) on its x[k]: x_hat (K, B, 784) and
        z, whose row k holds member k's latent in its first latent_dim columns (the rest is padding)."""
        params = self.params if params is None else params
        if self.batched is not None:
            return self.batched(params, x)
        x_hats, zs = [], []
        for i, member in enumerate(self.members):
            own = {n: self._crop(params[n][i], shape) for n, shape in member.slot_shapes.items()}
            x_hat, z = torch.func.functional_call(member.module, own, (x[i],))
            x_hats.append(x_hat)
            zs.append(z)
        return torch.stack(x_hats), zs

    def _adam(self, grads) -> None:
        """torch.optim.Adam's update, with a learning rate and a step count per member."""
        beta1, beta2 = ADAM_BETAS
        self.adam_steps += 1
        step_size = (self.lr / (1 - beta1 ** self.adam_steps)).float()
        bias_correction2_sqrt = (1 - beta2 ** self.adam_steps).sqrt().float()
        for name, grad in zip(self.names, grads):
            param, exp_avg, exp_avg_sq = self.params[name], self.exp_avg[name], self.exp_avg_sq[name]
            view = (-1,) + (1,) * (param.dim() - 1)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(view)).add_(ADAM_EPS)
            param.sub_(exp_avg.mul(step_size.view(view)).div_(denom))

    def _mutable(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.exp_avg.values(), *self.exp_avg_sq.values(),
                self.adam_steps, self.loss_sum, self.batch_no]

    def _capture(self):
        """The full-batch step as one CUDA graph; warm-up steps run on a side stream and are undone."""
        saved = [t.detach().clone() for t in self._mutable()]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step(self.batch_size)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        with torch.no_grad():
            for tensor, value in zip(self._mutable(), saved):
                tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(self.batch_size)
        return graph

    def _full_step(self) -> None:
        if self.use_graphs and self._graph is None:
            try:
                self._graph = self._capture()
            except Exception as exc:  # an unsupported driver or op: train eagerly, same arithmetic
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training without graphs")
                self.use_graphs = False
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step(self.batch_size)

    # ---- one epoch -----------------------------------------------------------------------------

    def _prepare_epoch(self) -> None:
        total = len(self.dataset.train_images)
        orders = torch.stack([_epoch_order(m.config.seed, m.config.train_subset or total, m.epoch, total)
                              for m in self.members])
        self.order.copy_(orders)
        self.batch_no.zero_()
        self.loss_sum.zero_()
        self._noise_streams = {}
        if self.has_noise:
            rows = []
            for m in self.members:  # members with the same seed and epoch share one noise stream
                key = (m.config.seed, m.epoch)
                if _knob(m.config, "noise") and key not in self._noise_streams:
                    self._noise_streams[key] = (len(self._noise_streams),
                                                generator(m.config.seed, "noise", m.epoch, device=self.device))
                rows.append(self._noise_streams.get(key, (0, None))[0])
            self.noise_row.copy_(torch.tensor(rows))

    def _draw_noise(self, size: int) -> None:
        for row, gen in self._noise_streams.values():
            torch.randn((size, 784), generator=gen, device=self.device, out=self.noise[row, :size])

    def run_epoch(self) -> dict[Hashable, dict]:
        """Train every member for one epoch of its own, then measure val_loss; return metrics per member."""
        if not self.members:
            return {}
        with _matmul_precision(self.matmul_precision):
            start = time.perf_counter()
            self._prepare_epoch()
            full, tail = divmod(self.train_size, self.batch_size)
            for _ in range(full):
                if self.has_noise:
                    self._draw_noise(self.batch_size)
                self._full_step()
            if tail:
                if self.has_noise:
                    self._draw_noise(tail)
                self._step(tail)
            train_loss = (self.loss_sum / (full + (tail > 0))).tolist()  # waits for the device
            train_s = time.perf_counter() - start
            val_loss = self.evaluate().tolist()
            epoch_s = time.perf_counter() - start
        metrics = {}
        for m, t_loss, v_loss in zip(self.members, train_loss, val_loss):
            m.epoch += 1
            m.adam_step += full + (tail > 0)
            finite = math.isfinite(t_loss) and math.isfinite(v_loss)
            m.status = "running" if finite else "diverged"
            if finite and m.epoch >= m.config.epochs:
                m.status = "completed"
            row = {"epoch": m.epoch, "train_loss": t_loss, "val_loss": v_loss, "epoch_s": epoch_s,
                   "train_s": train_s, "images_per_s": self.train_size / train_s, "pack_size": len(self.members),
                   "status": m.status}
            m.history.append(row)
            metrics[m.key] = dict(row)
        return metrics

    @torch.no_grad()
    def evaluate(self, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reconstruction MSE of every member on clean images (default: the whole test set)."""
        images = self.dataset.test_images if images is None else images
        k = len(self.members)
        total = torch.zeros(k, dtype=torch.float64, device=self.device)
        for chunk in images.split(max(1, EVAL_ROWS // k)):
            x = chunk.float().div_(255).expand(k, -1, -1)
            x_hat, _ = self._forward(x)
            total += (x_hat - x).pow(2).sum(dim=(1, 2)).double()
        return total / images.numel()
