"""A SmolLM2 run killed mid-way, its checkpoints gone, resumed from its journal alone.

1. N sequential BetaEdit edits on SmolLM2 through the runner, uninterrupted (`whole`).
2. The same run in another out_dir, killed with SIGKILL once its journal holds K edits.
3. Its journal and results.json copied into a new out_dir (what a fresh clone of a repository
   where they were committed holds: no checkpoint), then `resume=true`: the journal is replayed
   and the run continues to N.
Prints one JSON line: the final ||W_t - W_0|| per layer of both runs and their relative
difference (goal <= 1e-5), whether the weights are bit-identical (sha256), the metrics of the
final point of both, the replayed steps and the seconds the replay took against computing them.

    python benchmarks/check_journal_resume.py [--edits 20] [--kill-after 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(out_dir: Path, args, extra=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "betaedit_plugin.run", "method=betaedit", "model=smollm2-135m", "data=counterfact",
           f"num_edits={args.edits}", f"eval_every={args.eval_every}", "eval.mmlu_n=0", "eval.fluency_prompts=0",
           "checkpoint_every=4", "journal_chunk=5", "progress=false", f"out_dir={out_dir}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--kill-after", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--work", default=None, help="directory for the three out_dirs (default: a temporary one)")
    args = parser.parse_args()
    from betaedit_plugin.runner.journal import Journal, JournalError

    work = Path(args.work or tempfile.mkdtemp(prefix="journal-resume-"))
    whole, killed, fresh = work / "whole", work / "killed", work / "fresh"
    for d in (whole, killed, fresh):
        shutil.rmtree(d, ignore_errors=True)

    t0 = time.perf_counter()
    proc = _run(whole, args)
    if proc.wait() != 0:
        raise SystemExit(f"the uninterrupted run failed: {proc.stderr.read()[-2000:]}")
    whole_s = time.perf_counter() - t0

    proc = _run(killed, args)
    done = 0
    while proc.poll() is None:
        time.sleep(2)
        try:
            done = Journal.open(killed).last_step if Journal.exists(killed) else 0
        except JournalError:
            continue  # a chunk being written
        if done >= args.kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    fresh.mkdir(parents=True)
    shutil.copytree(killed / "journal", fresh / "journal")
    if (killed / "results.json").is_file():
        shutil.copy(killed / "results.json", fresh / "results.json")

    t0 = time.perf_counter()
    proc = _run(fresh, args, ["resume=true"])
    if proc.wait() != 0:
        raise SystemExit(f"the resumed run failed: {proc.stderr.read()[-2000:]}")
    resumed_s = time.perf_counter() - t0

    a = json.loads((whole / "results.json").read_text())
    b = json.loads((fresh / "results.json").read_text())
    fa, fb = Journal.open(whole).records[-1].fingerprint, Journal.open(fresh).records[-1].fingerprint
    rel = {l: abs(fa[l]["delta_norm"] - fb[l]["delta_norm"]) / fa[l]["delta_norm"] for l in fa}
    keys = ("efficacy", "generality", "specificity", "rewrite_acc", "locality_acc", "ppl", "rel_leakage", "perturbation")
    print(json.dumps({
        "check": "journal_resume_smollm2", "edits": args.edits, "killed_at_journaled_step": done,
        "replayed": b.get("replayed"), "delta_norm_rel_diff": rel, "max_rel_diff": max(rel.values()),
        "bit_identical": all(fa[l]["sha256"] == fb[l]["sha256"] for l in fa),
        "final_whole": {k: a["evals"][-1].get(k) for k in keys}, "final_resumed": {k: b["evals"][-1].get(k) for k in keys},
        "metrics_equal": all(a["evals"][-1].get(k) == b["evals"][-1].get(k) for k in keys),
        "replay_s": b["timing"].get("replay_s"), "whole_run_s": whole_s, "resumed_run_s": resumed_s,
        "edit_mean_s": a["timing"].get("edit_mean_s"),
    }))


if __name__ == "__main__":
    main()
