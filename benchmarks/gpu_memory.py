"""GPU memory per trial: the peak a model trained alone needs, and what one member of a pack adds.

    python benchmarks/gpu_memory.py --device auto        # writes benchmarks/out/gpu_memory.md

For each variant: one epoch of aemodels.train (CUDA graphs on, as a sweep trains), and one epoch of a
pack of K members, with torch.cuda's peak-allocation counter reset before each; the dataset resident
on the device is counted apart (every trial process holds its own copy, a packed trainer one for all).
On a CPU there is no such counter: the rows say so, and the run only checks that the code path works.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without `pip install -e .`
MIB = 1 << 20


def peak_mib(device, fn) -> float | None:
    """Peak bytes torch allocated on `device` while fn() ran, in MiB (None on a CPU)."""
    import torch

    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--variants", default="vanilla,conv")
    parser.add_argument("--k", type=int, default=64, help="members of the pack measured beside one model")
    parser.add_argument("--subset", type=int, help="training images; default all on a GPU, 512 on a CPU")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gpu_memory.md"))
    args = parser.parse_args(argv)
    import torch

    from aemodels import Pack, TrainConfig, TrainState, load_dataset, resolve_device, train

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    subset = args.subset if args.subset is not None else (None if gpu else 512)
    dataset_mib = peak_mib(device, lambda: load_dataset("mnist", device=str(device)))
    lines = [f"# GPU memory per trial ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"- device: {torch.cuda.get_device_name(device) if gpu else 'cpu (no memory counter: figures are -)'}; "
             f"torch {torch.__version__}; {subset or 60000} training images, batch 128, latent 32, one epoch",
             f"- the dataset resident on the device: {_fmt(dataset_mib)} MiB (each trial process holds one copy, "
             "a packed trainer one for all its members)",
             f"- command: `python benchmarks/gpu_memory.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
             "", f"| variant | one model alone, peak MiB | pack of {args.k}, peak MiB | per member of the pack, MiB |",
             "| --- | ---: | ---: | ---: |"]
    for variant in args.variants.split(","):
        configs = [TrainConfig(variant=variant, latent_dim=32, lr=1e-3 * (1 + i % 4), seed=i, epochs=1,
                               train_subset=subset, device=device.type) for i in range(args.k)]
        alone = peak_mib(device, lambda: train(configs[0]))

        def packed():
            pack = Pack.for_config(configs[0], load_dataset("mnist", device=str(device)))
            pack.update([], {i: TrainState.initial(c) for i, c in enumerate(configs)})
            pack.run_epoch()

        together = peak_mib(device, packed)
        per = None if together is None else together / args.k
        lines.append(f"| {variant} | {_fmt(alone)} | {_fmt(together)} | {_fmt(per)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
