"""Peak memory of `evaluate` on a large synthetic split: it streams, so memory does not grow with the split.

    python benchmarks/evaluate_memory.py [--valid-studies-per-part 185] [--image-size 224]

Builds an untrained run (router + seven parts: memory does not depend on weight values), makes a
synthetic valid split of at least 3,000 images, and evaluates it. The figure is the process's
peak resident memory during `evaluate_run` above its resident memory just before (Linux:
/proc/self/status VmHWM, reset through /proc/self/clear_refs). Holding the split's prepared
images as float32, as evaluate once did, would take N × S × S × 3 × 4 bytes (1.8 GB for 3,000
images at 224 px) before any model ran.
"""

import argparse
import tempfile
import time
from pathlib import Path

from run import emit  # benchmarks/run.py, beside this script

from bonenet import runtime
from bonenet.configs import EvaluateConfig


def _status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def build_untrained_run(run_dir, image_size):
    """A run folder with a random-weights trunk, router and seven part heads."""
    from bonenet.configs import TrainConfig
    from bonenet.digests import weights_digest
    from bonenet.models.efficientnet import build_part_model, build_router, split_model, trunk_cut
    from bonenet.parts import PARTS
    from bonenet.run.manifest import model_filename, record_model
    from bonenet.run.store import save_model_atomic
    from bonenet.training.job import shared_settings

    config = TrainConfig(image_size=image_size, weights="none")
    for number, key in enumerate(["router", *PARTS]):
        model, trainable = (build_router(image_size=image_size) if key == "router"
                            else build_part_model(key, image_size=image_size))
        trunk, head = split_model(model)
        trunk_entry = None
        if number == 0:
            save_model_atomic(trunk, run_dir / "trunk.keras")
            trunk_entry = {"file": "trunk.keras", "output": trunk_cut(model)[1], "sha256_weights": weights_digest(trunk)}
        save_model_atomic(head, run_dir / model_filename(key))
        shared = shared_settings(config, {"kind": "none", "description": "random initialisation"}, trainable)
        entry = {"file": model_filename(key), "input": "trunk", "threshold": 0.5,
                 "labels": list(PARTS) if key == "router" else ["normal", "abnormal"],
                 "members": [{"file": model_filename(key)}], "recipe": shared["recipe"],
                 "calibration": {"temperature": None, "reason": "an untrained benchmark run"}}
        record_model(run_dir, key, shared, entry, trunk=trunk_entry)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--valid-studies-per-part", type=int, default=185, help="valid studies per part (default 185)")
    p.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    runtime.start()
    from bonenet.configs import SyntheticConfig
    from bonenet.data.mura import read_mura
    from bonenet.data.synthetic import make_synthetic
    from bonenet.evaluation.evaluate import evaluate_run

    work = Path(tempfile.mkdtemp(prefix="bonenet-evalmem-"))
    config = SyntheticConfig(studies_per_part=2, valid_studies_per_part=args.valid_studies_per_part, seed=5)
    root = make_synthetic(work / "data", config, progress=False)
    images = int((read_mura(root).images["split"] == "valid").sum())
    build_untrained_run(work / "run", args.image_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    evaluate_run(root, work / "run", work / "eval", EvaluateConfig(bootstrap=200, plots=False))
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    result = {
        "valid_images": images, "image_size": args.image_size,
        "rss_before_mb": round(before / 1024), "peak_rss_mb": round(peak / 1024),
        "peak_above_baseline_mb": round((peak - before) / 1024),
        "float32_split_in_memory_would_be_mb": round(images * args.image_size**2 * 3 * 4 / 2**20),
        "evaluate_seconds": round(seconds),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
