"""The table of benchmarks/gpu_check.sh: one row per step (its status, time and headline figures), then
each step's own tables. Reads the steps' markdown and JSON files; imports neither torch nor Ray, so the
table is written even when every step failed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from aemodels.files import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
WHAT = {
    "train_speed": "seconds per epoch, the seed's loop vs aemodels.train (full MNIST, batch 128)",
    "pack_speed": "model-epochs per second, K models as one pack vs K separate runs",
    "gpu_memory": "peak GPU memory of one trial, and per member of a pack",
    "sweep_trial": "the reference sweep, one process per trial (execution: trial)",
    "sweep_packed": "the reference sweep, trials packed on one trainer per GPU (execution: packed)",
}
REFERENCE = {  # ../shared/bench/RESULTS.md, one H100: what each figure is compared with
    "train_speed": "H100: seed loop 6.79 s (vanilla) / 10.85 s (conv); resident + CUDA graph 0.21 s",
    "pack_speed": "H100: K vanilla models as one batched model 16.4 / 53.9 / 58.2 at K = 16 / 64 / 256 (fp32)",
    "gpu_memory": "-",
    "sweep_trial": "H100 docs-style sweep: 55-73 trial-epochs/min; issue 4's target: 400",
    "sweep_packed": "issue 4's target: 3,000 trial-epochs/min on one GPU",
}


def table_rows(text: str, first_cell: str | None = None) -> list[list[str]]:
    """Body rows of the first markdown table in `text` (after its header and rule)."""
    rows, seen_rule = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            if seen_rule:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            seen_rule = True
        elif seen_rule and (first_cell is None or cells[0] == first_cell):
            rows.append(cells)
    return rows


def figures(step: str, folder: Path) -> str:
    """The headline figures of a step that ran, or why they are missing."""
    md, js = folder / f"{step}.md", folder / f"{step}.json"
    try:
        if step == "train_speed":
            return "; ".join(f"{r[0]}: seed {r[1]} s, aesweep {r[2]} s ({r[3]})"
                             + (f", without CUDA graphs {r[4]} s" if len(r) > 4 else "") for r in table_rows(md.read_text()))
        if step == "pack_speed":
            rows = table_rows(md.read_text())
            return "; ".join(f"{r[0]} K={r[1]}: {r[2]} vs {r[3].split(' ')[0]} ({r[4]})" for r in rows)
        if step == "gpu_memory":
            return "; ".join(f"{r[0]}: alone {r[1]} MiB, per pack member {r[3]} MiB" for r in table_rows(md.read_text()))
        if step.startswith("sweep_"):
            mode = json.loads(js.read_text())["modes"][0]
            text = (f"{mode['trials']} trials, {mode['trial_epochs']} trial-epochs in {mode['wall_s']:.1f} s: "
                    f"{mode['trial_epochs_per_min']:.1f} trial-epochs/min, busy {mode['busy']:.2f}, "
                    f"best val_loss {mode['best_val_loss']:.5f}")
            if "gpu_util_pct" in mode:
                text += (f"; GPU {mode['gpu_util_pct']:.0f}% busy (nvidia-smi, mean), peak {mode['gpu_mem_peak_mib']:.0f} MiB"
                         f" = {mode['gpu_mem_per_trial_mib']:.0f} MiB per concurrent trial ({mode['concurrent']})")
            else:
                text += "; GPU: not sampled (no nvidia-smi or no GPU)"
            return text
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return f"no figures ({type(exc).__name__}: {exc})"
    return "-"


def header(smoke: bool, wall: int, command: str) -> list[str]:
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    gpu = run("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader") or "none"
    commit = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [f"# GPU check ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)" + (
                " — CPU smoke run: tiny sizes, no GPU figures" if smoke else ""), "",
            f"- machine: {cpu}, {os.cpu_count()} cores; GPU: {gpu}",
            f"- commit {commit}; whole run {wall} s; command: `{command.strip()}`", ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status", required=True, help="TSV: step, status, wall s, budget s")
    parser.add_argument("--steps", required=True, help="folder of the steps' STEP.md / STEP.json")
    parser.add_argument("--smoke", default="0")
    parser.add_argument("--wall", type=int, default=0)
    parser.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    folder = Path(args.steps)
    lines = header(args.smoke == "1", args.wall, args.command)
    lines += ["| step | what | status | wall s (budget) | figures | reference |", "| --- | --- | --- | ---: | --- | --- |"]
    details = []
    for line in Path(args.status).read_text().splitlines():
        step, status, wall, budget = line.split("\t")
        ran = (folder / f"{step}.md").is_file()
        found = figures(step, folder) if status == "ok" or ran else "-"
        lines.append(f"| {step} | {WHAT.get(step, '')} | {status} | {wall} ({budget}) | {found} | {REFERENCE.get(step, '-')} |")
        if ran:
            body = re.sub(r"^#", "###", (folder / f"{step}.md").read_text().strip(), flags=re.MULTILINE)
            details += ["", f"## {step}", "", body]
    text = "\n".join(lines + details) + "\n"
    write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
