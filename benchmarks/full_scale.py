"""Times the whole hierarchy at MURA's scale on this machine: `train-all` at the defaults, then `evaluate`.

    python benchmarks/full_scale.py --out WORK                 # MURA-sized synthetic data, made once
    python benchmarks/full_scale.py --out WORK --scale 0.25    # a quarter of MURA's counts
    python benchmarks/full_scale.py --out WORK --data-root MURA-v1.1

Without `--data-root` it draws a synthetic dataset with MURA's own per-part study, label and image counts
(`make-synthetic --mura-scale`; 36,808 train and 3,197 valid PNGs of 320 to 512 px at scale 1). It runs
`train-all` and `evaluate` as a user would (separate processes, the command line's defaults unless told
otherwise) and splits the time into stages from what they record: reading and preparing images (the time
the trunk waited for its input), the trunk's forward passes, each head's epochs, the rest of `train-all`
(indexing, building, hold-out scoring, saves), and `evaluate`. The stages add up to the total. It also
records each command's peak resident memory and the feature cache's size on disk.

Run it in the background (`nohup ... &`): it says what it does, one line per step. Killed, it resumes
where it stopped: the dataset is reused, `train-all --resume` continues the feature cache from its last
checkpoint, keeps finished models and continues the one it was training, and the seconds of every attempt
are added. Writes `WORK/full_scale.json` (or `--json`),
and prints a table and a one-line total.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bonenet.runtime import cpu_info  # noqa: E402  (no TensorFlow import)


def say(text):
    """One line of what the benchmark is doing, with the time of day."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", flush=True)


def run_command(args, log):
    """Runs `bonenet *args` in its own process, its output into `log` and on the console.

    Returns:
        (wall seconds, CPU seconds (user + system), the process's peak resident memory in MB, exit status). The
        CPU seconds show how much of the wall time other work on the machine took.
    """
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), *map(str, args)], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def dataset(args, state):
    """The data root: `--data-root`, or MURA-sized synthetic data made once under WORK."""
    if args.data_root:
        return Path(args.data_root)
    from bonenet.configs import SyntheticConfig
    from bonenet.data.synthetic import make_synthetic

    root = args.out / "data" / "MURA-v1.1"
    made = root / "synthetic.json"
    if made.is_file() and json.loads(made.read_text()).get("mura_scale") == args.scale:
        say(f"dataset: reusing {root}")
        return root
    say(f"dataset: drawing MURA's counts × {args.scale:g} into {root} (made once; not part of the timing)")
    start = time.perf_counter()
    make_synthetic(args.out / "data", SyntheticConfig(mura_scale=args.scale), overwrite=True, progress=False)
    state["dataset_seconds"] = round(time.perf_counter() - start, 1)
    return root


def train_flags(args):
    return ["--image-size", args.image_size, "--epochs", args.epochs, "--views", args.views, "--weights", args.weights,
            "--batch-size", args.batch_size]


def stages(run_dir, state):
    """Seconds per stage, from the run's manifest and its feature cache; they add up to `total`."""
    from bonenet.run.manifest import read_manifest

    manifest = read_manifest(run_dir)
    caches = sorted((run_dir / "cache").glob("features-*/meta.json"))
    cache = json.loads(caches[-1].read_text()).get("seconds", {}) if caches else {}
    heads = {key: entry.seconds.get("fit", 0.0) for key, entry in manifest.models.items()}
    train_all = sum(state["train_walls"])
    decode, trunk = cache.get("waiting_for_input", 0.0), cache.get("trunk", 0.0)
    out = {"decode_and_prepare": decode, "trunk_forward": trunk, "heads": heads,
           "train_other": train_all - decode - trunk - sum(heads.values()), "evaluate": state["evaluate_wall"],
           "train_all": train_all, "total": train_all + state["evaluate_wall"]}
    return {k: ({h: round(s, 1) for h, s in v.items()} if isinstance(v, dict) else round(v, 1)) for k, v in out.items()}


def disk_bytes(folder):
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def table(result):
    """The stages as a plain-text table."""
    s = result["seconds"]
    rows = [("read and prepare images (trunk waiting)", s["decode_and_prepare"]),
            ("trunk forward passes", s["trunk_forward"]),
            *((f"{key} head: epochs", v) for key, v in s["heads"].items()),
            ("train-all: the rest (index, build, hold-out, saves)", s["train_other"]),
            ("evaluate", s["evaluate"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {seconds:>9,.1f} s  {seconds / max(s['total'], 1e-9):>6.1%}" for name, seconds in rows]
    return "\n".join([*lines, f"{'total':<{width}}  {s['total']:>9,.1f} s"])


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (data, run, evaluation, logs)")
    parser.add_argument("--scale", type=float, default=1.0, help="share of MURA's counts to draw (default 1)")
    parser.add_argument("--data-root", help="time on this dataset (MURA-v1.1 or a datalist) instead")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weights", default="none",
                        help="backbone weights (default none: speed does not depend on the weights' values)")
    parser.add_argument("--json", type=Path, help="where to write the result (default OUT/full_scale.json)")
    return parser.parse_args(argv)


def _train(args, root, run_dir, state, state_path):
    """Runs (or resumes) train-all, recording its wall time, CPU time and peak memory in `state`."""
    if state["train_walls"] and state["train_walls"][-1] is None:
        # The last attempt was killed: it ran until its log was last written.
        state["train_walls"][-1] = round((args.out / "train.log").stat().st_mtime - state["train_started"], 1)
    if state.get("trained"):
        return
    resume = ["--resume"] if (run_dir / "manifest.json").is_file() or (run_dir / "checkpoints").is_dir() else []
    say(f"train-all{' --resume' if resume else ''} into {run_dir} (log: {args.out / 'train.log'})")
    state["train_walls"].append(None)
    state["train_started"] = time.time()
    state_path.write_text(json.dumps(state))
    wall, cpu_s, peak, code = run_command(["train-all", "--data-root", root, "--models-dir", run_dir,
                                           *train_flags(args), *resume], args.out / "train.log")
    state["train_walls"][-1] = round(wall, 1)
    state["train_cpu"] = round(state.get("train_cpu", 0) + cpu_s, 1)
    state["train_peak_mb"] = max(state.get("train_peak_mb", 0), round(peak))
    state["trained"] = code == 0
    state_path.write_text(json.dumps(state))
    if code:
        raise SystemExit(f"train-all failed (exit {code}); see {args.out / 'train.log'}")


def _evaluate(args, root, run_dir, eval_dir, state, state_path):
    """Runs evaluate once, recording its wall time, CPU time and peak memory in `state`."""
    if "evaluate_wall" in state:
        return
    say(f"evaluate into {eval_dir} (log: {args.out / 'evaluate.log'})")
    wall, cpu_s, peak, code = run_command(["evaluate", "--data-root", root, "--models-dir", run_dir, "--out", eval_dir],
                                          args.out / "evaluate.log")
    if code:
        raise SystemExit(f"evaluate failed (exit {code}); see {args.out / 'evaluate.log'}")
    state.update(evaluate_wall=round(wall, 1), evaluate_cpu=round(cpu_s, 1), evaluate_peak_mb=round(peak))
    state_path.write_text(json.dumps(state))


def main(argv=None):
    """Runs (or resumes) the benchmark; returns the result dict."""
    args = _arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"train_walls": []}
    root = dataset(args, state)
    run_dir, eval_dir = args.out / "run", args.out / "eval"
    _train(args, root, run_dir, state, state_path)
    _evaluate(args, root, run_dir, eval_dir, state, state_path)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    from bonenet.data.mura import read_mura

    counts = read_mura(root).images.groupby("split").size().to_dict() if not str(root).endswith(".csv") else {}
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": cpu_info(),
        "setup": {"data_root": str(root), "scale": None if args.data_root else args.scale, "images": counts,
                  **{k: getattr(args, k) for k in ("image_size", "epochs", "views", "batch_size", "weights")},
                  "mode": "cached"},
        "seconds": stages(run_dir, state),
        "attempts": len(state["train_walls"]),
        "dataset_seconds": state.get("dataset_seconds"),
        "cpu_seconds": {"train_all": state.get("train_cpu"), "evaluate": state.get("evaluate_cpu")},
        "peak_memory_mb": {"train_all": state["train_peak_mb"], "evaluate": state["evaluate_peak_mb"]},
        "cache_bytes": disk_bytes(run_dir / "cache"),
        "study_kappa_overall": metrics["study"]["overall"]["kappa"],
    }
    (args.json or args.out / "full_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    s = result["seconds"]
    print(f"total {s['total'] / 60:.1f} min: train-all {s['train_all'] / 60:.1f} min and evaluate "
          f"{s['evaluate'] / 60:.1f} min on {sum(counts.values()):,} images, {result['machine']['model']}")
    return result


if __name__ == "__main__":
    main()
