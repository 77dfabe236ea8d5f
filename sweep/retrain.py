"""`sweep retrain`: train the best trial's config again with aemodels.train and keep the model.

Writes results/<name>/retrain/: model.pt (the variant's state_dict), state.pt (the full training state,
for aemodels.TrainState.load), config.yaml and metrics.json, each replaced atomically.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from aemodels import ConfigError, TrainResult, resolve_device, train

from .results import ResultsError, load_results, no_best_trial, write_file


def retrain(name_or_dir: str, epochs: Optional[int] = None, quiet: bool = False,
            threads: Optional[int] = None) -> TrainResult:
    """On a CPU, train with the torch threads the trial had (or `threads`): with another count the
    kernels split their sums differently, and Adam can amplify that to a visibly different val_loss
    (README has an example)."""
    import torch

    found = load_results(name_or_dir)
    if found.best_config is None:
        raise no_best_trial(found, name_or_dir)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    config = found.best_config if epochs is None else found.best_config.replace(epochs=epochs)
    row = found.best_row()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if resolve_device(config.device).type != "cpu":
        threads = None
    elif threads is None and not str(row.get("device")).startswith("cuda"):  # a GPU trial: nothing to match
        threads = trial_threads(found.spec, row)
    say(f"retraining trial {found.best_trial} of sweep {found.spec.name} for {config.epochs} epochs "
        f"({config.variant}, latent_dim={config.latent_dim}, lr={config.lr:.4g})"
        + (f" on {threads} CPU thread{'s' if threads > 1 else ''}" if threads else ""))
    out = found.home / "retrain"
    _check_writable(out)  # before the training, which can take long, not after it
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = train(config, report=lambda m: say(f"  epoch {m['epoch']:3d}  train_loss {m['train_loss']:.5f}  "
                                                      f"val_loss {m['val_loss']:.5f}  ({m['epoch_s']:.2f} s)"))
    finally:
        torch.set_num_threads(before)
    shared = trial_pack_size(found.epochs, found.best_trial)
    metrics = {"sweep": found.spec.name, "trial_id": found.best_trial, "status": result.status,
               "val_loss": result.val_loss, "trial_val_loss": float(row["final_val_loss"]),
               "trial_epochs": int(row["epochs"]), "threads": threads, "trial_pack_size": shared,
               "history": result.history}
    write_file(out / "model.pt", lambda path: torch.save(result.model.state_dict(), path))
    write_file(out / "state.pt", lambda path: result.state.save(path))
    write_file(out / "config.yaml", lambda path: Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))
    write_file(out / "metrics.json", lambda path: Path(path).write_text(json.dumps(metrics, indent=2)))
    say(f"val_loss {result.val_loss:.6f} (the sweep's trial: {metrics['trial_val_loss']:.6f} after "
        f"{metrics['trial_epochs']} epochs); saved to {out}/")
    if shared > 1:
        say(f"note: the trial trained in a pack of up to {shared} trials, whose kernels sum in another order "
            "than one model's alone, and Adam can amplify that past the last digits: expect a close val_loss, "
            "not the same")
    return result


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ResultsError(f"cannot write to {out} ({exc.strerror or exc}); fix its permissions, or copy the "
                           "sweep's folder somewhere writable and retrain the copy") from None


def trial_pack_size(epochs, trial_id: str) -> int:
    """The most trials a trial shared its pack with, itself included (1: it trained alone)."""
    sizes = epochs.loc[epochs["trial_id"] == trial_id, "pack_size"].dropna()
    return int(sizes.max()) if len(sizes) else 1


def trial_threads(spec, row) -> int:
    """The torch threads a sweep's trial trained with on a CPU, as runner.plan and packed.trainers set them."""
    from .plan import CPU_TRAINER_THREADS

    return CPU_TRAINER_THREADS if row.get("execution") == "packed" else spec.resources.threads_per_trial
