"""How fast the frozen trunk fills the feature cache, variant against variant, in one run.

    python benchmarks/trunk_speed.py [--image-size 224] [--images 160] [--rounds 2] [--out trunk_speed.json]

Filling the cache (`bonenet.training.features.compute_features`: read, prepare, two augmented views, three trunk
passes per image) is the largest stage of `train-all` on a CPU. Each variant runs in its own process,
because TensorFlow fixes its thread pools at start-up; the variants take turns, `--rounds` times, and each
keeps its fastest round, so a machine that slows down during the run slows every variant alike.

Variants (the trunk's batch is images per call; each call holds one view of them):
- previous: what `train-all` did before, the training batch size (32) per call, TensorFlow's thread pools.
- views_in_one_call: 32 images, their three views in one call of 96.
- batch_16, batch_8, batch_4: fewer images per call (`compute_features` now takes
  `bonenet.models.efficientnet.trunk_batch_size`, reported as `default_batch`).
- threads_2_1 / threads_1_1: the default batch with 2 (1) intra-op threads for oneDNN and 1 inter-op
  thread, leaving the rest of the machine to the input pipeline.

For each it reports images/s (an image = its three views) end to end through `compute_features` (the
difference between filling a cache of all the images and one of 8, which cancels tracing and start-up), and
of the trunk calls alone over prepared views held in memory, and both as ratios to `previous`. It also
reports how far each variant's cached features are from the previous code's (`max_abs_difference`; one
float16 step at the largest value, `largest_value` × 2⁻¹⁰, is the most float32 rounding can move them).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "previous": {"batch": 32},
    "views_in_one_call": {"batch": 32, "one_call": True},
    "batch_16": {"batch": 16},
    "batch_8": {"batch": 8},
    "batch_4": {"batch": 4},
    "threads_2_1": {"batch": None, "threads": (2, 1)},
    "threads_1_1": {"batch": None, "threads": (1, 1)},
}
VIEWS = 2
SMALL = 8  # at most; images in the fill that measures the fixed cost of `compute_features`


def measure(variant, data, size, images, work):
    """In this process: one variant's images/s end to end and of the trunk calls alone, and its features."""
    spec = VARIANTS[variant]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if "threads" in spec:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"][0])
        tf.config.threading.set_inter_op_parallelism_threads(spec["threads"][1])
    import keras
    import numpy as np

    from bonenet.data.mura import read_mura
    from bonenet.data.pipeline import Preparation
    from bonenet.models.efficientnet import build_part_model, split_model, trunk_batch_size
    from bonenet.preprocessing.augment import AugmentConfig
    from bonenet.preprocessing.recipes import DEFAULT_RECIPE, get_recipe
    from bonenet.training.features import _views_dataset, compute_features

    keras.utils.set_random_seed(0)
    trunk, _ = split_model(build_part_model("XR_WRIST", image_size=size, weights=None)[0])
    paths = read_mura(data).images["path"].tolist()[:images]
    recipe, augment = get_recipe(DEFAULT_RECIPE), AugmentConfig()
    batch = spec["batch"] or trunk_batch_size(size)
    encode = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True, autograph=False)
    prep = Preparation(recipe, size, VIEWS, augment)
    views = np.concatenate([x.numpy() for x, _ in _views_dataset(paths, prep, 32)])
    views = views.astype(np.float32)

    def trunk_calls():
        for start in range(0, len(views), batch):
            chunk = views[start:start + batch]
            if spec.get("one_call"):
                np.asarray(encode(tf.constant(chunk.reshape(-1, *chunk.shape[2:]))))
            else:
                for v in range(1 + VIEWS):
                    np.asarray(encode(tf.constant(chunk[:, v])))

    first = views[:batch]
    encode(tf.constant(first.reshape(-1, *first.shape[2:]) if spec.get("one_call") else first[:, 0]))  # traces
    began = time.perf_counter()
    trunk_calls()
    trunk_rate = len(paths) / (time.perf_counter() - began)

    def fill(n):
        began = time.perf_counter()
        cache = compute_features(trunk, paths[:n], prep, tempfile.mkdtemp(dir=work), batch_size=batch, verbose=0)
        return time.perf_counter() - began, cache

    # Each call traces the trunk and starts its pipeline again: a small fill costs the same fixed
    # seconds, so the difference is the rate at which images stream through.
    small = min(SMALL, len(paths) // 2)
    small_seconds, _ = fill(small)
    seconds, cache = fill(len(paths))
    end_to_end = (len(paths) - small) / (seconds - small_seconds)
    np.save(Path(work) / f"{variant}.npy", np.asarray(cache.array, np.float32))
    return {"batch": batch, "default_batch": trunk_batch_size(size), "images_per_s": end_to_end,
            "trunk_images_per_s": trunk_rate, "waiting_for_input_s": cache.seconds["waiting_for_input"]}


def _synthetic(work, images):
    """A synthetic dataset of at least `images` images under `work` (made once per benchmark run)."""
    from bonenet.configs import SyntheticConfig
    from bonenet.data.synthetic import make_synthetic

    return make_synthetic(work / "data", SyntheticConfig(max(2, images // 14 + 1), seed=0), progress=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--images", type=int, default=160, help="images (each with two augmented views; default 160)")
    p.add_argument("--rounds", type=int, default=2, help="turns each variant takes (default 2)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.data, args.image_size, args.images, args.work)))
        return None
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown or "previous" not in variants:
        p.error(f"--variants must include previous and name only {', '.join(VARIANTS)}; got {args.variants}")

    import numpy as np

    from bonenet.runtime import cpu_info

    work = Path(tempfile.mkdtemp(prefix="bonenet-trunk-speed-"))
    data = _synthetic(work, args.images)
    best = {}
    for round_ in range(args.rounds):
        for variant in variants:
            proc = subprocess.run([sys.executable, __file__, "--child", variant, "--data", str(data), "--work",
                                   str(work), "--image-size", str(args.image_size), "--images", str(args.images)],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1} {variant}: {got['images_per_s']:.1f} images/s end to end, "
                  f"{got['trunk_images_per_s']:.1f} trunk only (batch {got['batch']})", file=sys.stderr)
            if variant not in best or got["images_per_s"] > best[variant]["images_per_s"]:
                best[variant] = got
    reference = np.load(work / "previous.npy")
    base = best["previous"]
    result = {
        "machine": cpu_info(),
        "setup": {"image_size": args.image_size, "default_batch": base["default_batch"],
                  "images": len(reference) // (1 + VIEWS), "views": VIEWS, "largest_value": float(np.abs(reference).max()),
                  "rounds": args.rounds, "weights": "random (speed does not depend on weight values)"},
        "variants": {v: {"batch": r["batch"], "images_per_s": round(r["images_per_s"], 2),
                         "trunk_images_per_s": round(r["trunk_images_per_s"], 2),
                         "waiting_for_input_s": r["waiting_for_input_s"],
                         "ratio": round(r["images_per_s"] / base["images_per_s"], 3),
                         "trunk_ratio": round(r["trunk_images_per_s"] / base["trunk_images_per_s"], 3),
                         "max_abs_difference": float(np.abs(np.load(work / f"{v}.npy") - reference).max())}
                     for v, r in best.items()},
    }
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
