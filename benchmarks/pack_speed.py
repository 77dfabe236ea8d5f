"""Packed training speed: K autoencoders as one batched model against the same K trained one by one.

    python benchmarks/pack_speed.py --device auto      # writes benchmarks/out/pack_speed.md

Model-epochs per second (training only, val_loss excluded) of aemodels.Pack for several K, beside
K separate single-model runs of aemodels.train measured in the same call, for the vanilla and the
conv variant. Members differ in lr and latent_dim, as in a sweep. Compare with
../shared/bench/RESULTS.md ("K models as one batched model": 58 model-epochs/s at K=256 in fp32 on
an H100, 86 with TF32).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without `pip install -e .`
LATENTS = (2, 8, 16, 32, 64)


def configs(variant: str, k: int, device: str, subset, precision: str):
    from aemodels import TrainConfig

    return [TrainConfig(variant=variant, latent_dim=LATENTS[i % len(LATENTS)], lr=1e-4 * 10 ** (2 * i / max(1, k - 1)),
                        epochs=2, train_subset=subset, device=device, matmul_precision=precision)
            for i in range(k)]


def packed_rate(members, dataset) -> float:
    """Model-epochs per second of one pack holding every member (best of 2 epochs, training only)."""
    from aemodels import Pack, TrainState

    pack = Pack.for_config(members[0], dataset)
    pack.update([], {i: TrainState.initial(c) for i, c in enumerate(members)})
    seconds = min(next(iter(pack.run_epoch().values()))["train_s"] for _ in range(2))
    return len(members) / seconds


def separate_rate(members) -> float:
    """Model-epochs per second of the same members trained one after another with aemodels.train."""
    from aemodels import train

    seconds = sum(min(h["train_s"] for h in train(c).history) for c in members)
    return len(members) / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--ks", help="pack sizes; default 1,16,64,256 on a GPU, 1,2,4,8 on a CPU")
    parser.add_argument("--variants", default="vanilla,conv")
    parser.add_argument("--subset", type=int, help="training images; default all on a GPU, 3000 on a CPU")
    parser.add_argument("--separate-max", type=int, default=16,
                        help="time K separate runs only up to this K (they are slow), then extrapolate from it")
    parser.add_argument("--precision", default="highest", choices=("highest", "high"), help="high: TF32 on CUDA")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "pack_speed.md"))
    args = parser.parse_args(argv)
    import torch

    from aemodels import load_dataset, resolve_device

    device = str(resolve_device(args.device))
    gpu = device.startswith("cuda")
    ks = [int(k) for k in (args.ks or ("1,16,64,256" if gpu else "1,2,4,8")).split(",")]
    subset = args.subset if args.subset is not None else (None if gpu else 3000)
    dataset = load_dataset("mnist", device=device)
    lines = [f"# Packed training speed ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"GPU: {torch.cuda.get_device_name() if gpu else 'none'}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; matmul precision {args.precision}",
             f"- {subset or 60000} training images, batch 128; model-epochs per second, training only",
             f"- command: `python benchmarks/pack_speed.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             "| variant | K | packed model-epochs/s | separate model-epochs/s | packed / separate |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for variant in args.variants.split(","):
        packed_rate(configs(variant, 1, device, subset, args.precision), dataset)  # warm-up: kernels, caches
        single = None
        for k in ks:
            members = configs(variant, k, device, subset, args.precision)
            packed = packed_rate(members, dataset)
            if k <= args.separate_max:
                separate = separate_rate(members)
                single = separate
                note = ""
            else:  # K separate runs take K times one run's time: the rate does not change with K
                separate, note = single, " (rate of K=%d)" % max(x for x in ks if x <= args.separate_max)
            lines.append(f"| {variant} | {k} | {packed:.2f} | {separate:.2f}{note} | {packed / separate:.2f}x |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
