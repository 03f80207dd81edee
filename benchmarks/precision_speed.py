"""Mixed bfloat16 against float32 on this CPU: the speed of what training runs, in one run.

    python benchmarks/precision_speed.py [--image-size 224] [--images 64] [--rounds 2] [--out precision.json]

`--precision auto` trains in float32 on every CPU: on the CPUs measured (BENCHMARKS.md), mixed bfloat16 was no
faster even where the CPU computes it natively (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo), and
`--precision mixed_bfloat16` stays one flag away (every output is computed in float32 again, `bonenet.runtime`).
This measures whether that holds on yours. Each precision runs in its own process, as
`bonenet.runtime.start` fixes one per process; they take turns, `--rounds` times, and each keeps its fastest
round. Per precision it reports images/s of:

- trunk: the frozen EfficientNetB0 trunk in inference mode, as feature caching, at `trunk_batch_size`;
- head_steps: training steps of a part's head on cached trunk outputs (the default, cached mode), batch 32;
- full_steps: training steps of the whole model on images (`--mode full`), last 20 layers trainable, batch 16;

and the ratios bfloat16 / float32, with the largest difference between the two trunks' features relative to
their largest value (bfloat16 keeps about 3 significant digits).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRECISIONS = ("float32", "mixed_bfloat16")


def _rate(step, images, repeats):
    """Images/s of `step` (called `repeats` times on `images` images each), after one untimed call."""
    step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return images * repeats / (time.perf_counter() - began)


def measure(precision, size, images, work):
    """In this process: the three rates under `precision`, and the trunk's features on fixed inputs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bonenet import runtime

    runtime.start(precision)
    import keras
    import numpy as np
    import tensorflow as tf

    from bonenet.models.efficientnet import build_part_model, compile_model, split_model, trunk_batch_size

    keras.utils.set_random_seed(0)
    with runtime.precision_scope(precision):
        model, _ = build_part_model("XR_WRIST", image_size=size, weights=None)
        compile_model(model, jit_compile=False)
        trunk, head = split_model(model)
        compile_model(head, jit_compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (images, size, size, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(images) % 2, 2)
    batch = trunk_batch_size(size)
    encode = tf.function(lambda v: trunk(v, training=False), autograph=False)

    def trunk_pass():
        return np.concatenate([np.asarray(encode(tf.constant(x[i:i + batch])), np.float32)
                               for i in range(0, images, batch)])

    features = trunk_pass()
    np.save(Path(work) / f"{precision}.npy", features)
    rates = {"trunk": _rate(trunk_pass, images, 1)}
    rates["head_steps"] = _rate(lambda: [head.train_on_batch(features[i:i + 32], y[i:i + 32])
                                         for i in range(0, images, 32)], images, 5)
    rates["full_steps"] = _rate(lambda: [model.train_on_batch(x[i:i + 16], y[i:i + 16])
                                         for i in range(0, images, 16)], images, 1)
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--images", type=int, default=64, help="images per measurement (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="turns each precision takes (default 2)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.image_size, args.images, args.work)))
        return
    import numpy as np

    from bonenet.runtime import cpu_info

    work = tempfile.mkdtemp(prefix="bonenet-precision-")
    best = {}
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            proc = subprocess.run([sys.executable, __file__, "--child", precision, "--work", work, "--image-size",
                                   str(args.image_size), "--images", str(args.images)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(f"precision_speed: the {precision} run failed: {proc.stderr.strip().splitlines()[-1]}")
            rates = json.loads(proc.stdout.strip().splitlines()[-1])
            best[precision] = {k: max(v, best.get(precision, {}).get(k, 0)) for k, v in rates.items()}
    f32, bf16 = (np.load(Path(work) / f"{p}.npy") for p in PRECISIONS)
    result = {"cpu": cpu_info(), "image_size": args.image_size, "images": args.images, "rounds": args.rounds,
              "images_per_s": best,
              "ratio_bfloat16_to_float32": {k: best["mixed_bfloat16"][k] / best["float32"][k] for k in best["float32"]},
              "feature_difference_relative": float(np.abs(bf16 - f32).max() / np.abs(f32).max())}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
