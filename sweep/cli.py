"""The `sweep` command: argument parsing only; each subcommand is a thin call into runner / results / status.

Bad input of any kind ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aemodels.status import RANKED

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line, as every other error of the command is."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; `{self.prog} --help` explains\n")


def _count(text: str) -> int:
    """A count given on the command line: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text[:60]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sweep", description="Hyperparameter sweeps of autoencoders: Ray Tune + Optuna TPE + ASHA.",
        epilog="Results land in results/<name>/; `sweep COMMAND --help` explains each command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    # `run` and `check` read a sweep file the same way, so that `check` validates exactly what `run` would run.
    sweep_file = _Parser(add_help=False)
    sweep_file.add_argument("config", help="the sweep YAML, e.g. configs/quick.yaml")
    sweep_file.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a key of the file, dotted for sections: --set train.epochs=2 "
                                 "--set num_samples=4")
    sweep_file.add_argument("--name", help="the sweep's name (its folder under results/); default: the file's `name`")

    run = commands.add_parser("run", parents=[sweep_file], help="run a sweep from a YAML file",
                              description="Run a sweep defined by a YAML file (see configs/). Starts a local Ray "
                                          "on 127.0.0.1 unless --address (or RAY_ADDRESS) names a cluster.")
    run.add_argument("--address", help="join the Ray cluster at this address instead of starting one")
    run.add_argument("--overwrite", action="store_true", help="replace an existing sweep of the same name")
    run.add_argument("--warm-start", metavar="SWEEP", help="start the study with the finished trials of this "
                                                           "sweep (name or folder) that fit the space, as the "
                                                           "file's `warm_start:` does")
    run.add_argument("--dry-run", action="store_true", help="do what `sweep check` does and stop: start no trial, "
                                                             "write nothing")

    check = commands.add_parser("check", parents=[sweep_file],
                                help="show what a sweep would do, without running it",
                                description="Validate a sweep file as `sweep run` does, then print the resolved "
                                            "spec, the resource plan on the cluster it would use and ASHA's expected "
                                            "trial-epochs. Starts no trial and writes nothing; without --address (or "
                                            "RAY_ADDRESS) it counts this machine's CPUs and GPUs and starts no Ray.")
    check.add_argument("--address", help="plan on the Ray cluster at this address (joined as a driver only)")

    resume = commands.add_parser("resume", help="finish an interrupted sweep",
                                 description="Continue a sweep whose driver stopped: finished trials are kept, "
                                             "unfinished ones continue from their last checkpoints.")
    resume.add_argument("sweep", help="the sweep's name or folder")
    resume.add_argument("--address", help="join the Ray cluster at this address")

    extend = commands.add_parser("extend", help="give an ended sweep more trials in the same study",
                                 description="Run more trials of a sweep that is not running, in the same Optuna "
                                             "study, so TPE goes on from every trial it has: one more Tune "
                                             "experiment in the sweep's folder. Only num_samples (the new total) "
                                             "and max_concurrent_trials may be set.")
    extend.add_argument("sweep", help="the sweep's name or folder")
    extend.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="num_samples=N, the new total (required), and optionally max_concurrent_trials=M")
    extend.add_argument("--address", help="join the Ray cluster at this address")

    status = commands.add_parser("status", help="how a sweep stands, while it runs or after",
                                 description="Trials running / done by how they ended, epochs, the best val_loss so "
                                             "far, elapsed and remaining time, and whether the driver is running, "
                                             "stopping, stopped or finished; from the status.json its driver keeps "
                                             "current (the tables, for a sweep without one).")
    status.add_argument("sweep", help="the sweep's name, folder or object-store URI")
    status.add_argument("--json", action="store_true", help="print it as one JSON object")

    stop = commands.add_parser("stop", help="stop a running sweep cleanly, as Ctrl-C does",
                               description="Send the sweep's driver (on this machine) SIGTERM: its trials are "
                                           "checkpointed and its tables written; `sweep resume` continues it.")
    stop.add_argument("sweep", help="the sweep's name, folder or object-store URI")
    stop.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                      help="wait for the driver to end and say how it ended (default: --wait)")
    stop.add_argument("--timeout", type=_count, default=300, metavar="SECONDS",
                      help="with --wait, give up waiting after this long (default 300)")

    ls = commands.add_parser("ls", help="list the sweeps under results/",
                             description="List the sweeps in the results folder with their size and best val_loss; "
                                         "a running sweep's live count of trials done.")
    ls.add_argument("--results", default="results", help="the folder that holds the sweeps (default: results)")

    analyze = commands.add_parser("analyze", help="rebuild the tables and show the top trials",
                                  description="Rebuild trials/epochs tables from Ray's folder, print the top trials "
                                              "and the best trial of each variant.")
    analyze.add_argument("sweep", help="the sweep's name or folder")
    analyze.add_argument("--top", type=_count, default=10, help="how many trials to show (default 10)")

    best = commands.add_parser("best", help="print the best trial's complete TrainConfig",
                               description="Print the best trial's complete aemodels TrainConfig, ready to pass "
                                           "back to aemodels.train or to save as a file.")
    best.add_argument("sweep", help="the sweep's name or folder")
    best.add_argument("--format", choices=("yaml", "json"), default="yaml")
    best.add_argument("--searched", action="store_true", help="the search's own best trial, even after `sweep "
                                                              "confirm` has picked another configuration")

    confirm = commands.add_parser("confirm", help="train the top configurations again with several seeds",
                                  description="Train the top K configurations of a finished sweep with S seeds each "
                                              "(the sweep's own seed first), through the sweep's Ray execution, and "
                                              "write confirm.parquet / confirm.csv: per configuration the mean, "
                                              "standard deviation and 95% interval of the final val_loss beside the "
                                              "search's own. best_config.yaml then names the best mean. Run it again "
                                              "after an interruption: finished runs are kept.")
    confirm.add_argument("sweep", help="the sweep's name or folder")
    confirm.add_argument("--top", type=_count, metavar="K",
                         help="configurations to confirm (default 5, or every completed trial if fewer)")
    confirm.add_argument("--seeds", type=_count, default=5, metavar="S", help="seeds per configuration (default 5)")
    confirm.add_argument("--epochs", type=_count, metavar="E", help="epochs per run (default: the sweep's)")
    confirm.add_argument("--execution", choices=("auto", "trial", "packed"),
                         help="how the runs train (default: as the sweep's own plan: packed where it packs)")
    confirm.add_argument("--address", help="join the Ray cluster at this address")

    retrain = commands.add_parser("retrain", help="train the best config again and save the model",
                                  description="Train the best trial's config with aemodels.train and save the "
                                              "weights, config and metrics under results/<name>/retrain/.")
    retrain.add_argument("sweep", help="the sweep's name or folder")
    retrain.add_argument("--epochs", type=_count, help="train this many epochs instead of the sweep's")
    retrain.add_argument("--threads", type=_count, help="CPU threads (default: as many as the trial had, which "
                                                     "reproduces its val_loss exactly; more is faster)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from aemodels import ConfigError, DataError

    from .errors import Interrupted, ResultsError, SweepError
    from .spec import SpecError

    try:
        return COMMANDS[args.command](args) or 0
    except (SpecError, SweepError, ResultsError, ConfigError, DataError) as exc:
        print(f"sweep {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"sweep {args.command}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"sweep {args.command}: interrupted; `sweep resume NAME` continues a sweep", file=sys.stderr)
        return 130


def local_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a Ray this command starts itself listens on 127.0.0.1 only (runner.LOOPBACK_ENV
    says why; the variable must be set before the import, which is why it is set here)."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _stored_address(name_or_dir: str) -> str | None:
    """The address a sweep was run with (its sweep.yaml), read without importing Ray; None if unreadable."""
    import yaml

    for home in (Path(name_or_dir), Path("results") / name_or_dir):
        try:
            return ((yaml.safe_load((home / "sweep.yaml").read_text()) or {}).get("sweep") or {}).get("address")
        except (OSError, ValueError, yaml.YAMLError, AttributeError):  # ValueError: not UTF-8
            continue  # `sweep resume` itself then names what is wrong with the file
    return None


def _load(args):
    from . import spec

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    if getattr(args, "warm_start", None):
        overrides.append(f"warm_start={json.dumps(args.warm_start)}")  # quoted: a name like 2024 stays a string
    return spec.load(args.config, tuple(overrides))


def _check(args) -> int:
    from .check import check, describe

    report = check(_load(args), address=args.address, overwrite=getattr(args, "overwrite", False))
    print(describe(report), end="", flush=True)
    for warning in report.warnings:
        print(f"sweep {args.command}: warning: {warning}", file=sys.stderr)
    return 0


def _run(args) -> int:
    if args.dry_run:
        return _check(args)
    sweep = _load(args)
    local_ray_on_loopback(args.address or sweep.address)
    from . import runner

    found = runner.run(sweep, overwrite=args.overwrite, address=args.address, argv=["sweep", *sys.argv[1:]])
    _confirm_block(found, args.address)
    return 0


def _confirm_block(found, address) -> None:
    """The sweep file's `confirm:` block: `sweep confirm` as the last step of a sweep that has finished."""
    block = found.spec.confirm
    if block is not None:
        from .confirm import Request, confirm

        confirm(str(found.home), Request(block.top, block.seeds, block.epochs), address=address)


def _resume(args) -> int:
    local_ray_on_loopback(args.address or _stored_address(args.sweep))
    from . import runner

    found = runner.resume(args.sweep, address=args.address)
    _confirm_block(found, args.address)
    return 0


def _extend(args) -> int:
    local_ray_on_loopback(args.address or _stored_address(args.sweep))
    from . import runner

    runner.extend(args.sweep, tuple(args.overrides), address=args.address, argv=["sweep", *sys.argv[1:]])
    return 0


def _ls(args) -> int:
    from .results import SPEC_FILE, ResultsError, read_table

    root = Path(args.results)
    try:
        homes = sorted(p.parent for p in root.glob(f"*/{SPEC_FILE}")) if root.is_dir() else []
    except OSError as exc:
        raise ResultsError(f"{root}: cannot list it ({exc.strerror or exc}); check its permissions") from None
    if not homes:
        print(f"no sweeps in {root}/")
        return 0
    from .status import live_status

    print(f"{'name':24} {'trials':>6} {'best val_loss':>14}  folder")
    for home in homes:
        trials, best, note = "-", "-", ""
        live = live_status(home)
        if live is not None:
            trials = str(live["done"])
            best = f"{live['best']['val_loss']:.5f}" if live.get("best") else "-"
            note = f"  ({live['state']}: {trials}/{live['num_samples']} done, {live['counts']['running']} running)"
        elif os.path.lexists(home / "trials.parquet"):
            try:  # one damaged sweep is marked, and the others are still listed
                table = read_table(home / "trials.parquet", f"`sweep analyze {home}` rebuilds it")
            except ResultsError as exc:
                trials, best, note = "?", "unreadable", f"  ({exc})"
            else:
                trials = str(len(table))
                done = table[table["status"].isin(RANKED)]["final_val_loss"]
                best = f"{done.min():.5f}" if done.notna().any() else "-"
        print(f"{home.name:24} {trials:>6} {best:>14}  {home}{note}")
    return 0


def _status(args) -> int:
    from .status import format_status, read_status

    found = read_status(args.sweep)
    print(json.dumps(found, default=str) if args.json else format_status(found), end="\n" if args.json else "")
    return 0


def _stop(args) -> int:
    from .status import counted, stop

    ended, found = stop(args.sweep, wait=args.wait, timeout_s=args.timeout)
    pid = (found.get("driver") or {}).get("pid")
    if not args.wait:
        print(f"asked sweep {found['name']}'s driver (PID {pid}) to stop; `sweep status {args.sweep}` shows when "
              f"it has; `sweep resume {args.sweep}` then continues it")
        return 0
    if not ended:
        print(f"sweep stop: sweep {found['name']}'s driver (PID {pid}) is still stopping after {args.timeout} s; "
              f"`sweep status {args.sweep}` follows it", file=sys.stderr)
        return 1
    print(f"sweep {found['name']}: {found['state']}: {counted(found)}; "
          f"{found['done']}/{found['num_samples']} trials done, {found.get('epochs', 0)} epochs"
          + (f"; `sweep resume {args.sweep}` continues it" if found["state"] == "stopped" else ""))
    return 0


def _analyze(args) -> int:
    import pandas as pd

    from .results import load_results

    found = load_results(args.sweep, rebuild=True)
    trials = found.trials
    from .spec import SEARCHED

    shown = ["trial_id", *SEARCHED, "status", "epochs", "final_val_loss"]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().sort_index().items())
        print(f"sweep {found.spec.name}: {len(trials)} trials ({counts}), {len(found.epochs)} epoch rows")
        print(f"\ntop {args.top} trials by final val_loss (completed before stopped):")
        from .results import ranked_trials

        print(ranked_trials(trials)[shown].head(args.top).to_string(index=False))
        print("\nbest trial of each variant:")
        print(found.best_per_variant()[shown].to_string(index=False))
    print("\nPareto front (val_loss vs latent_dim), completed trials, as latent_dim: final_val_loss (trial_id):")
    front = found.pareto()
    for variant, rows in front.groupby("variant", sort=True):
        points = "  ".join(f"{r.latent_dim}: {r.final_val_loss:.4g} ({r.trial_id})" for r in rows.itertuples())
        print(f"  {variant:10} {points}")
    if front.empty:
        print("  none: no completed trial with a finite val_loss")
    from .telemetry import describe, summarise

    print("\n" + "\n".join(describe(summarise(trials, found.epochs, found.best_trial))))
    print(f"\ntables: {found.home}/trials.parquet, trials.csv, epochs.parquet, best_config.yaml")
    from .report import write_report

    print(f"report: {write_report(found)}")
    return 0


def _best(args) -> int:
    import yaml

    from .results import load_results, no_best_trial

    found = load_results(args.sweep)
    if found.best_config is None:
        raise no_best_trial(found, args.sweep)
    confirmed = None if args.searched else found.confirmed_config()
    values = (confirmed or found.best_config).to_dict()
    if confirmed is not None:  # on stderr: stdout stays the config alone
        from .results import confirmed_best

        best = confirmed_best(found.confirmed())
        print(f"sweep best: the confirmed best, trial {best['trial_id']}: mean val_loss {best['mean_val_loss']:.6g} "
              f"over {int(best['seeds'])} seeds, 95% CI [{best['ci_low']:.6g}, {best['ci_high']:.6g}]; the search's "
              f"own best is trial {found.best_trial} (--searched prints it)", file=sys.stderr)
    print(json.dumps(values, indent=2) if args.format == "json" else yaml.safe_dump(values, sort_keys=False), end="")
    if args.format == "json":
        print()
    return 0


def _confirm(args) -> int:
    local_ray_on_loopback(args.address or _stored_address(args.sweep))
    from .confirm import Request, confirm

    confirm(args.sweep, Request(args.top, args.seeds, args.epochs, args.execution), address=args.address)
    return 0


def _retrain(args) -> int:
    from .retrain import retrain

    retrain(args.sweep, epochs=args.epochs, threads=args.threads)
    return 0


COMMANDS = {"run": _run, "check": _check, "resume": _resume, "extend": _extend, "status": _status, "stop": _stop, "ls": _ls,
            "analyze": _analyze, "best": _best, "retrain": _retrain, "confirm": _confirm}

if __name__ == "__main__":
    sys.exit(main())
