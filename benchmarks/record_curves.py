"""Record the learning curves that simulated training replays (sweep/simulate.py): real CPU trainings.

    python benchmarks/record_curves.py            # writes sweep/data/curves.json (a few minutes on 2 cores)
    python benchmarks/record_curves.py --quick    # 1 config per variant, 2 epochs: a smoke run

Each of the four variants is trained over a spread of latent_dim x lr (and noise_factor / sparsity_weight
for the variants that use them), on a seeded MNIST subset, for a few epochs, one thread. The file keeps
every run's config and its per-epoch val_loss / train_loss / epoch_s; the simulator fits its curves to them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "sweep" / "data" / "curves.json"
LATENT = (2, 8, 32)
LRS = (1e-4, 1e-3, 1e-2)
EXTRA = {"denoising": ("noise_factor", (0.1, 0.7)), "sparse": ("sparsity_weight", (1e-5, 1e-2))}


def configs(quick: bool):
    """variant x latent_dim x lr, and for the conditional variants both ends of their own range."""
    for variant in ("vanilla", "denoising", "sparse", "conv"):
        for latent in LATENT[:1] if quick else LATENT:
            for lr in LRS[1:2] if quick else LRS:
                name, values = EXTRA.get(variant, (None, (None,)))
                for value in values[:1] if quick else values:
                    yield {"variant": variant, "latent_dim": latent, "lr": lr, **({name: value} if name else {})}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--subset", type=int, default=2048, help="training images (a seeded subset of MNIST)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import torch

    from aemodels import TrainConfig, train

    torch.set_num_threads(1)
    epochs = 2 if args.quick else args.epochs
    runs, started = [], time.time()
    for params in configs(args.quick):
        config = TrainConfig(**params, epochs=epochs, train_subset=args.subset, batch_size=128, seed=0, device="cpu")
        history = train(config).history
        runs.append({"config": params, "val_loss": [r["val_loss"] for r in history],
                     "train_loss": [r["train_loss"] for r in history], "epoch_s": [r["epoch_s"] for r in history]})
        print(f"{params} -> {runs[-1]['val_loss'][-1]:.5f} ({sum(runs[-1]['epoch_s']):.1f} s)", flush=True)
    meta = {"recorded": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "epochs": epochs, "train_subset": args.subset, "batch_size": 128, "threads": 1,
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "wall_s": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=0))
    print(f"{len(runs)} runs in {meta['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
