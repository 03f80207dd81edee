"""Side-by-side speed and storage figures for BoneNet's shared trunk and caches.

Every ratio compares two variants measured in this one run, on the same machine, the same images
and the same model, so machine noise affects both sides alike. Absolute images/s are printed too.

    python benchmarks/run.py [--image-size 224] [--images 96] [--out benchmark.json]

What is compared:
- train_speedup: steady-state training throughput (median step time, after a first epoch that
  traces) of a part model's trainable layers (last 20, BatchNorm frozen), as a head on cached
  trunk outputs versus `model.fit` of the full model; the full model reads prepared images from
  memory, the head reads features from the disk cache, neither augments. The one-off trunk pass
  that fills the cache is reported separately, with the speed-up over 10 epochs including it.
- inference_speedup: the two-stage pipeline (router, then a part model) as trunk once + two heads
  versus two separate full models. inference_speedup_vs_one_model_twice compares with twice the
  time of one full model timed alone, which leaves out what alternating two models costs.
- input_speedup: an epoch of the tf.data input pipeline read from its cache versus decoding and
  preparing every PNG again.
- input_vs_model: uncached input images/s divided by full-model training images/s; above 1 the
  model never waits for input.
- cache: bytes per image and view of the cached trunk output (float16), the estimate for MURA's
  train split with the default two augmented views, and the largest difference float16 storage
  makes to the head's p(abnormal) against float32 trunk outputs.
- storage_ratio: bytes of eight full EfficientNetB0 models (router + seven parts) saved as Keras 3
  `model.save()` saves a trained model (weights plus the optimizer state, which it always
  includes; 27.8 MB each, close to the paper's 25.9 MB) versus BoneNet's run folder (trunk +
  eight heads + manifest). storage_ratio_weights_only saves the full models without optimizer
  state, as BoneNet saves its own files: the saving from sharing the trunk alone.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bonenet.configs import SyntheticConfig, TrainConfig
from bonenet.data.mura import read_mura
from bonenet.data.pipeline import Feed, Preparation, make_dataset
from bonenet.data.synthetic import make_synthetic
from bonenet.models.efficientnet import build_part_model, build_router, compile_model, set_xla, split_model, trunk_cut
from bonenet.parts import PARTS
from bonenet.preprocessing.recipes import get_recipe
from bonenet.run.manifest import model_filename, record_model
from bonenet.run.store import save_model_atomic
from bonenet.training.features import compute_features
from bonenet.training.job import shared_settings

PAPER_MB = 207.2  # Patel et al.: eight EfficientNetB0 models
MURA_TRAIN_IMAGES = 36_808


class StepTimer(keras.callbacks.Callback):
    """Times between consecutive training steps, first epoch and each epoch's first step left out.

    The first epoch traces the graph and the first step of an epoch starts the input iterator;
    what remains is the steady-state step time that a long training run is made of.
    """

    def on_train_begin(self, logs=None):
        self.intervals, self.epoch = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.last = epoch, None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.epoch > 0 and self.last is not None:
            self.intervals.append(now - self.last)
        self.last = now


def fit_rate(model, ds, batch_size, epochs):
    """Steady-state training images/s: batch size over the median step time."""
    timer = StepTimer()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
    return batch_size / float(np.median(timer.intervals))


def epoch_rate(ds, n):
    """Images/s of one pass over a dataset."""
    start = time.perf_counter()
    for _ in ds:
        pass
    return n / (time.perf_counter() - start)


def predict_rate(fn, n, repeats=2):
    """Images/s of `fn()` (which handles `n` images), best of `repeats` after one warm-up."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def folder_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def storage(size, work):
    """Bytes of eight full models (with and without optimizer state) and of a BoneNet run folder."""
    full_default, full_weights, run = work / "full_default", work / "full_weights", work / "run"
    trunk_saved = False
    for key in ["router", *PARTS]:
        model, _ = build_router(image_size=size) if key == "router" else build_part_model(key, image_size=size)
        compile_model(model, jit_compile=False)
        # The optimizer state a trained model carries: Adam's two moments per trainable weight.
        model.optimizer.build(model.trainable_variables)
        name = model_filename(key).replace("heads/", "")
        full_default.mkdir(parents=True, exist_ok=True)
        model.save(full_default / name)  # Keras 3 always writes a compiled model's optimizer state
        save_model_atomic(model, full_weights / name)  # architecture and weights only, as BoneNet saves
        trunk, head = split_model(model)
        if not trunk_saved:
            save_model_atomic(trunk, run / "trunk.keras")
            trunk_saved = True
        save_model_atomic(head, run / model_filename(key))
        labels = list(PARTS) if key == "router" else ["normal", "abnormal"]
        entry = {"file": model_filename(key), "input": "trunk", "labels": labels,
                 "members": [{"file": model_filename(key)}], "recipe": get_recipe("equalize").to_dict(),
                 "calibration": {"temperature": None, "reason": "an untrained benchmark run"}}
        shared = shared_settings(TrainConfig(image_size=size, weights="none"), {"kind": "none"}, None)
        record_model(run, key, shared, entry, trunk={"file": "trunk.keras", "output": trunk_cut(model)[1]})
    return folder_bytes(full_default), folder_bytes(full_weights), folder_bytes(run)


def _arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--images", type=int, default=128, help="images per measurement (default 128)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--head-epochs", type=int, default=6, help="epochs timed for cached heads (default 6)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def measure_training(paths, labels, size, bs, work, head_epochs):
    """Input pipeline (decode + recipe every time vs the cached epoch), and training the same trainable
    layers as a full model on images vs a head on cached trunk outputs."""
    n = len(paths)
    prep = Preparation(get_recipe("equalize"), size)
    uncached = make_dataset(paths, labels, 2, prep, Feed(bs, cache=None))
    cached = make_dataset(paths, labels, 2, prep, Feed(bs))
    input_uncached = epoch_rate(uncached, n)
    epoch_rate(cached, n)  # fills the cache
    input_cached = epoch_rate(cached, n)
    model, _ = build_part_model("XR_WRIST", image_size=size)
    trunk, head = split_model(model)
    compile_model(model, jit_compile=False)
    train_full = fit_rate(model, cached, bs, epochs=3)
    set_xla(trunk)  # as train_model sets it
    trunk.predict_on_batch(np.zeros((bs, size, size, 3), np.float32))  # trace once, as any run does
    start = time.perf_counter()
    features = compute_features(trunk, paths, prep, work / "cache", batch_size=bs, verbose=0)
    extract = n / (time.perf_counter() - start)
    compile_model(head, jit_compile=False)
    usable = features.usable(range(n))
    train_heads = fit_rate(head, features.dataset(usable, labels[usable], 2, bs, training=True), bs,
                           epochs=head_epochs)
    # What float16 storage of the trunk's output costs at the head's output.
    images = np.concatenate([xb.numpy() for xb, _ in cached])
    exact = head.predict(trunk.predict(images, batch_size=bs, verbose=0), batch_size=bs, verbose=0)
    stored = head.predict(features.gather(usable), batch_size=bs, verbose=0)
    return {"input_uncached": input_uncached, "input_cached": input_cached, "train_full": train_full,
            "extract": extract, "train_heads": train_heads, "features": features, "images": images,
            "float16_error": float(np.abs(exact - stored).max())}


def measure_inference(x, size, bs):
    """Two-stage inference (trunk once + router head + part head) against two separate full models, and the
    pieces alone. Fresh, uncompiled models on both sides, as `BoneNet.load` has them."""
    n = len(x)
    router, _ = build_router(image_size=size)
    part, _ = build_part_model("XR_WRIST", image_size=size)
    router_trunk, router_head = split_model(router)
    _, part_head = split_model(part)
    set_xla(router, part, router_trunk, router_head, part_head)

    def separate():
        router.predict(x, batch_size=bs, verbose=0)
        part.predict(x, batch_size=bs, verbose=0)

    def shared():
        f = router_trunk.predict(x, batch_size=bs, verbose=0)
        router_head.predict(f, batch_size=bs, verbose=0)
        part_head.predict(f, batch_size=bs, verbose=0)

    return {"separate": predict_rate(separate, n, repeats=3), "shared": predict_rate(shared, n, repeats=3),
            "full_alone": predict_rate(lambda: router.predict(x, batch_size=bs, verbose=0), n),
            "trunk_alone": predict_rate(lambda: router_trunk.predict(x, batch_size=bs, verbose=0), n)}


def _result(size, n, bs, t, i, storage_bytes):
    """The benchmark's JSON from the training (`t`) and inference (`i`) measurements and the run's bytes."""
    full_default, full_weights, run_bytes = storage_bytes
    features = t["features"]
    return {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "gpus": len(tf.config.list_physical_devices("GPU")), "tensorflow": tf.__version__,
                    "keras": keras.__version__},
        "setup": {"image_size": size, "images": n, "batch_size": bs, "model": "EfficientNetB0, last 20 layers "
                  "trainable, BatchNorm frozen", "data": "bonenet synthetic radiographs", "weights": "random "
                  "(speed does not depend on weight values)"},
        "train_speedup": round(t["train_heads"] / t["train_full"], 2),
        "train_speedup_10_epochs_incl_extraction": round(10 / t["train_full"] / (1 / t["extract"] + 10 / t["train_heads"]), 2),
        "inference_speedup": round(i["shared"] / i["separate"], 2),
        # Against two passes of one full model timed alone: free of the cost of alternating two models.
        "inference_speedup_vs_one_model_twice": round(i["shared"] / (i["full_alone"] / 2), 2),
        "input_speedup": round(t["input_cached"] / t["input_uncached"], 2),
        "input_vs_model": round(t["input_uncached"] / t["train_full"], 2),
        "storage_ratio": round(full_default / run_bytes, 2),
        "storage_ratio_weights_only": round(full_weights / run_bytes, 2),
        "storage_ratio_vs_paper_207_2_mb": round(PAPER_MB * 1e6 / run_bytes, 2),
        "cache": {
            "bytes_per_image_and_view": features.nbytes_per_row,
            "dtype": str(features.array.dtype),
            # MURA train: 36,808 images, each cached unaugmented plus 2 augmented views (the default).
            "full_mura_train_2_views_gb": round(MURA_TRAIN_IMAGES * 3 * features.nbytes_per_row / 1e9, 2),
            "float16_max_abs_error_in_probability": t["float16_error"],
        },
        "images_per_s": {
            "train_full_model": round(t["train_full"], 1),
            "train_cached_heads": round(t["train_heads"], 1),
            "trunk_extraction_once": round(t["extract"], 1),
            "inference_two_full_models": round(i["separate"], 1),
            "inference_shared_trunk": round(i["shared"], 1),
            "inference_one_full_model": round(i["full_alone"], 1),
            "inference_trunk_only": round(i["trunk_alone"], 1),
            "input_uncached": round(t["input_uncached"], 1),
            "input_cached": round(t["input_cached"], 1),
        },
        "bytes": {"eight_full_models_default_save": full_default, "eight_full_models_weights_only": full_weights,
                  "bonenet_run": run_bytes, "paper_eight_models": int(PAPER_MB * 1e6)},
    }


def main(argv=None):
    args = _arguments(argv)
    size, bs = args.image_size, args.batch_size
    keras.utils.set_random_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bonenet-bench-"))
    config = SyntheticConfig(studies_per_part=max(2, args.images // 14), seed=0)
    root = make_synthetic(work / "data", config, progress=False)
    paths = read_mura(root).images["path"].tolist()[: args.images]
    n = len(paths)
    labels = np.arange(n) % 2
    print(f"{n} synthetic images at {size} px, batch {bs}, on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU(s), GPUs: {len(tf.config.list_physical_devices('GPU'))}", file=sys.stderr)
    training = measure_training(paths, labels, size, bs, work, args.head_epochs)
    inference = measure_inference(training["images"], size, bs)
    result = _result(size, n, bs, training, inference, storage(size, work))
    shutil.rmtree(work, ignore_errors=True)
    return emit(result, args.out)


def emit(result, out=None):
    """Prints a benchmark's result as JSON, and writes it to `out` too when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
