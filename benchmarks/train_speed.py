"""Training speed: seconds per epoch of aemodels.train against the seed article's loop, per variant.

Both loops train each variant (latent 32, batch 128, Adam lr 1e-3) in this one process, on the same
device and the same number of images, and each keeps its best of --epochs epochs, training only:
aesweep's history[i]["train_s"], and the seed loop's pass over its torchvision DataLoader (dataset
construction and evaluation are not counted). On CUDA the clocks are read after a synchronize, and
aesweep runs a second time with cuda_graphs=False.

    python benchmarks/train_speed.py                   # cuda when present: all 60,000 images; on a CPU 12,000
    python benchmarks/train_speed.py --device cpu --variants vanilla,conv --epochs 3 --threads 1

Prints the markdown table and writes it to benchmarks/out/train_speed.md (--out to change).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `python benchmarks/train_speed.py` finds aemodels without `pip install -e .`

from aemodels import TrainConfig, VARIANTS, create_model, ensure_dataset, resolve_device, train  # noqa: E402
from aemodels.config import ConfigError, TRAIN_IMAGES  # noqa: E402
from aemodels.files import write_text_atomic  # noqa: E402
from aemodels.models import unknown_name  # noqa: E402

BATCH_SIZE = 128
LATENT_DIM = 32
LR = 1e-3
SPARSITY_WEIGHT = 1e-3  # the seed's lambda
CPU_SUBSET = 12_000  # keeps the default CPU run to a few minutes on 2 cores
GRAPH_FAILED = "CUDA graph capture failed"  # the start of aemodels' warning when it falls back to eager steps


def clock(device: torch.device) -> float:
    """perf_counter once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- the two loops ---------------------------------------------------------------------------------

def seed_loop(variant: str, device: torch.device, data_root: str, subset: int, epochs: int) -> tuple[float, float]:
    """The seed's loop as a user writes it; returns (best seconds per epoch, last epoch's mean loss)."""
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    train_set = datasets.MNIST(data_root, train=True, download=False, transform=transforms.ToTensor())
    if subset < len(train_set):
        train_set = torch.utils.data.Subset(train_set, torch.randperm(len(train_set))[:subset].tolist())
    loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    model = create_model(variant, LATENT_DIM).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.MSELoss()
    model.train()  # DenoisingAE corrupts its input (noise 0.3, clamped) inside forward while training
    seconds = []
    for _ in range(epochs):
        start = clock(device)
        running_loss = 0.0
        for images, _ in loader:
            flat = images.view(images.size(0), -1).to(device)
            recon, z = model(flat)
            loss = criterion(recon, flat)
            if variant == "sparse":
                loss = loss + SPARSITY_WEIGHT * torch.mean(torch.abs(z))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        seconds.append(clock(device) - start)
    return min(seconds), running_loss / len(loader)


def aesweep_loop(variant: str, device: torch.device, subset: int, epochs: int,
                 cuda_graphs: bool = True) -> tuple[float, float, str]:
    """aemodels.train; returns (best train_s of its epochs, last epoch's train_loss, CUDA-graph status)."""
    config = TrainConfig(variant=variant, latent_dim=LATENT_DIM, lr=LR, batch_size=BATCH_SIZE, epochs=epochs,
                         train_subset=subset if subset < TRAIN_IMAGES else None, device=device.type,
                         cuda_graphs=cuda_graphs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    for w in caught:  # not ours to swallow: show them as they would have been shown
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return (min(row["train_s"] for row in result.history), result.history[-1]["train_loss"],
            _graph_status(device, cuda_graphs, [str(w.message) for w in caught]))


def _graph_status(device: torch.device, cuda_graphs: bool, messages: list[str]) -> str:
    if device.type != "cuda":
        return "not used on CPU"
    if not cuda_graphs:
        return "off"
    failed = [m for m in messages if m.startswith(GRAPH_FAILED)]
    return failed[0] if failed else "captured"


# ---- measuring -------------------------------------------------------------------------------------

def measure(variant: str, args) -> dict:
    """One table row: the seed loop, then aesweep (and aesweep without CUDA graphs on cuda)."""
    seed_s, seed_loss = seed_loop(variant, args.device, args.data_root, args.subset, args.epochs)
    ours_s, ours_loss, graphs = aesweep_loop(variant, args.device, args.subset, args.epochs)
    row = {"variant": variant, "seed_s": seed_s, "ours_s": ours_s, "graphs": graphs,
           "seed_loss": seed_loss, "ours_loss": ours_loss}
    if args.device.type == "cuda":
        row["eager_s"] = aesweep_loop(variant, args.device, args.subset, args.epochs, cuda_graphs=False)[0]
    print(f"{variant}: seed loop {seed_s:.3f} s, aesweep {ours_s:.3f} s"
          + (f", aesweep without graphs {row['eager_s']:.3f} s" if "eager_s" in row else ""), flush=True)
    return row


def machine() -> str:
    """CPU model and cores, and the GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return f"{cpu}, {os.cpu_count()} cores; GPU: {gpu}"


# ---- the table -------------------------------------------------------------------------------------

def render(rows: list[dict], args, command: str) -> str:
    cuda = args.device.type == "cuda"
    subset = args.subset
    lines = [f"# Training speed: seconds per epoch, batch {BATCH_SIZE} ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"- machine: {machine()}; 1-minute load average before / after measuring: "
             f"{args.load_before:.2f} / {args.load_after:.2f} (this run's own threads count in it; more than "
             "they explain means other work shared the cores)",
             f"- torch {torch.__version__}; device: {args.device.type}; torch threads: {args.threads}",
             f"- {subset:,} training images per epoch; best of {args.epochs} epochs, training only "
             f"(aesweep: `history[i]['train_s']`; seed loop: one pass over its DataLoader)",
             f"- CUDA graphs (aesweep default, cuda_graphs=True): {_graphs_summary(rows)}",
             f"- command: `{command}`", ""]
    lines += _table(rows, cuda, scale=1.0)
    if subset < TRAIN_IMAGES:
        lines += ["", f"Extrapolated to a {TRAIN_IMAGES:,}-image epoch (measured s/epoch x {TRAIN_IMAGES:,} / "
                      f"{subset:,}; not measured), for comparison with full-epoch figures such as "
                      "../shared/bench/RESULTS.md:", ""]
        lines += _table(rows, cuda, scale=TRAIN_IMAGES / subset)
    lines += ["", "speed-up: seed loop seconds / aesweep seconds. Mean train loss of the last epoch, seed loop / "
              "aesweep (a check that both loops do the same work; their data orders and initial weights differ): "
              + "; ".join(f"{r['variant']} {r['seed_loss']:.4f} / {r['ours_loss']:.4f}" for r in rows), ""]
    return "\n".join(lines)


def _table(rows: list[dict], cuda: bool, scale: float) -> list[str]:
    """The measured table (scale 1), or the extrapolated one (seconds x scale, no speed-up: it is the same)."""
    measured = scale == 1.0
    unit = "s/epoch" if measured else "s/60k-epoch (extrapolated)"
    columns = ["variant", f"seed loop {unit}", f"aesweep {unit}"] + (["speed-up"] if measured else [])
    columns += [f"aesweep, cuda_graphs=False, {unit}"] if cuda else []
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for r in rows:
        cells = [r["variant"], f"{r['seed_s'] * scale:.3f}", f"{r['ours_s'] * scale:.3f}"]
        cells += [f"{r['seed_s'] / r['ours_s']:.1f}x"] if measured else []
        cells += [f"{r['eager_s'] * scale:.3f}"] if cuda else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _graphs_summary(rows: list[dict]) -> str:
    statuses = {r["graphs"] for r in rows}
    if len(statuses) == 1:
        return statuses.pop()
    return "; ".join(f"{r['variant']}: {r['graphs']}" for r in rows)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


# ---- command line ----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    parser.add_argument("--subset", type=int,
                        help=f"training images per epoch; default: all {TRAIN_IMAGES:,} on cuda, {CPU_SUBSET:,} on cpu")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement; the best one is reported")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads; default all cores")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "train_speed.md"))
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.subset is None:
        args.subset = TRAIN_IMAGES if args.device.type == "cuda" else CPU_SUBSET
    if not BATCH_SIZE <= args.subset <= TRAIN_IMAGES:
        parser.error(f"--subset must be between {BATCH_SIZE} (one batch) and {TRAIN_IMAGES}, got {args.subset}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        if v not in VARIANTS:
            parser.error(unknown_name("variant", v, VARIANTS))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.data_root = str(ensure_dataset("mnist"))
    command = shlex.join(["python", "benchmarks/train_speed.py", *argv])
    args.load_before = os.getloadavg()[0]  # other work on the machine slows both loops; say how busy it was
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = [measure(variant, args) for variant in args.variants]
    finally:
        torch.set_num_threads(threads_before)
    args.load_after = os.getloadavg()[0]
    text = render(rows, args, command)
    print(text)
    write_atomically(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
