"""BoneNet on real radiographs anyone can get: FracAtlas hand and shoulder (CC BY 4.0), trained and scored.

    python benchmarks/real_radiographs.py --out fracatlas_bench [--weights shipped|radiograph|imagenet|none|PATH]
        [--trainable-layers 20|all] [--image-size 96] [--epochs 10] [--learning-rate 1e-4]
    python benchmarks/real_radiographs.py --out transfer --compare shipped,radiograph,none \
        [--deep-image-size 128 --deep-epochs 6 --deep-learning-rate 3e-4]

With `--compare`, each backbone named runs twice, with the last 20 layers (cached, at `--image-size`) and with
`--trainable-layers all` (full mode, at `--deep-image-size`), each into `<out>/<backbone>-<mode>/`; a row
already finished there is read back, not run again, so a killed comparison resumes. It prints one table with
the backbone as a column and writes `<out>/transfer.json`.

BoneNet's own steps, in order: `fracatlas-datalist` (hand → XR_HAND, shoulder → XR_SHOULDER; abnormal =
fractured or hardware; each image its own study and patient, since FracAtlas publishes no patient
identifiers), `train-all` on the parts present (the router and the two parts), `evaluate` on the held-out
share, and Grad-CAM. The hold-out is the datalist's own: with no split column, a patient-grouped fifth of the
studies, stratified by part and label, drawn with the fixed seed 0 (`bonenet.datalist`), the same on every
run and machine.

It reports per part the study AUROC and kappa, each with its 95% cluster-bootstrap interval, the expected
calibration error before and after each part model's temperature (`bonenet.calibration`), the router's
study accuracy, and a **pointing game** for the heat maps: among the held-out fractured images that the
pipeline calls abnormal (at the thresholds `predict` uses), the share whose Grad-CAM maximum falls inside an
annotated fracture box, beside the share a uniformly random point would hit (the mean share of those
images' area that the boxes cover). It prints a table and writes `<out>/real_radiographs.json`.

The default backbone is the shipped synthetic-pretrained one (never ImageNet). With ImageNet weights and a
GPU, rerun it with `--weights imagenet --image-size 224` for the figure that matters.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"


def parse_args(argv=None):
    from bonenet.configs import MAX_TRAINABLE_LAYERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fracatlas", default=str(DEFAULT_FRACATLAS), help="FracAtlas folder (dataset.csv, images/)")
    p.add_argument("--out", required=True, help="work folder: datalist, run, evaluation, JSON")
    p.add_argument("--weights", default="shipped",
                   help="shipped (the synthetic-pretrained backbone, default), radiograph (the one pretrained on "
                        "open real radiographs), imagenet, none or a .weights.h5 file")
    p.add_argument("--trainable-layers", default="20",
                   type=lambda v: MAX_TRAINABLE_LAYERS if v == "all" else int(v), help="20 (default) or all")
    p.add_argument("--image-size", type=int, default=96, help="input side (default 96, the shipped backbone's)")
    p.add_argument("--epochs", type=int, default=10, help="most epochs per model (default 10)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--compare", help="comma-separated backbones (as --weights) to run side by side, last 20 and all")
    p.add_argument("--modes", default="20,all", help="with --compare: which of 20 and all to run (default both)")
    p.add_argument("--deep-image-size", type=int, default=128, help="with --compare: input side for all (default 128)")
    p.add_argument("--deep-epochs", type=int, default=6, help="with --compare: epochs for all (default 6)")
    p.add_argument("--deep-learning-rate", type=float, default=3e-4, help="with --compare: rate for all (default 3e-4)")
    return p.parse_args(argv)


def box_mask(boxes, shape):
    """The union of COCO boxes as a boolean mask of `shape`."""
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = True
    return mask


def pointing_game(net, paths, boxes):
    """Grad-CAM maxima inside fracture boxes, among fractured images the pipeline calls abnormal.

    Returns:
        {"fractured", "called_abnormal", "hits", "hit_share", "random_share"}.
    """
    from bonenet.reading import read_gray

    hits, random_shares, called = 0, [], 0
    for path in paths:
        gray = read_gray(path)
        features = net.encode(net.prepare(gray)[None])
        _, study = net.score(features)
        if not study["abnormal"]:
            continue
        called += 1
        cam, _ = net.cam(study["part"], features, gray)
        mask = box_mask(boxes[Path(path).name], gray.shape)
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        hits += bool(mask[y, x])
        random_shares.append(float(mask.mean()))
    return {"fractured": len(paths), "called_abnormal": called, "hits": hits,
            "hit_share": hits / called if called else None,
            "random_share": float(np.mean(random_shares)) if random_shares else None}


def run(args):
    """The benchmark's steps; returns the result dict."""
    from bonenet.configs import TrainConfig
    from bonenet.datalist import fracatlas_boxes, fracatlas_datalist, read_dataset
    from bonenet.evaluate import evaluate_run
    from bonenet.inference import BoneNet
    from bonenet.pretrain import shipped_backbone
    from bonenet.train import train_all

    out, root = Path(args.out), Path(args.fracatlas)
    weights = str(shipped_backbone()[0]) if args.weights == "shipped" else args.weights
    seconds, start = {}, time.time()
    datalist = out / "fracatlas.csv"
    fracatlas_datalist(root, datalist)
    index = read_dataset(datalist)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, weights=weights,
                         trainable_layers=args.trainable_layers, learning_rate=args.learning_rate, seed=args.seed)
    entries, failures = train_all(index, out / "run", config)
    if failures:
        raise SystemExit(f"could not train {', '.join(failures)}: {failures}")
    seconds["train_all"] = round(time.time() - start, 1)
    net = BoneNet.load(out / "run")
    metrics = evaluate_run(datalist, out / "run", out / "eval", n_boot=args.bootstrap, net=net, gallery=0)
    seconds["evaluate"] = round(time.time() - start - seconds["train_all"], 1)
    table = pd.read_csv(root / "dataset.csv").set_index("image_id")
    boxes = fracatlas_boxes(root)
    valid = index.images[index.images["split"] == "valid"]
    fractured = [p for p in valid["path"] if table.loc[Path(p).name, "fractured"] == 1 and Path(p).name in boxes]
    pointing = pointing_game(net, fractured, boxes)
    seconds["pointing_game"] = round(time.time() - start - seconds["train_all"] - seconds["evaluate"], 1)
    studies = index.studies
    return {
        "data": {"source": str(root), "licence": "CC BY 4.0",
                 "note": "each image its own study and patient (FracAtlas publishes no patient identifiers)",
                 "train_studies": int((studies["split"] == "train").sum()),
                 "valid_studies": int((studies["split"] == "valid").sum())},
        "config": {"weights": args.weights, "trainable_layers": "all" if config.deep else config.trainable_layers,
                   "mode": config.mode, "image_size": args.image_size, "epochs": args.epochs,
                   "learning_rate": args.learning_rate, "batch_size": args.batch_size, "seed": args.seed},
        "epochs_run": {key: entry["epochs_run"] for key, entry in entries.items()},
        "parts": {part: {"n": metrics["study"][part]["n"],
                         "abnormal": metrics["study"][part]["tp"] + metrics["study"][part]["fn"],
                         **{k: metrics["study"][part][k] for k in ("auroc", "auroc_ci95", "kappa", "kappa_ci95")},
                         **{k: metrics["calibration"][part][k] for k in ("ece_before", "ece_before_ci95", "ece_after",
                                                                         "ece_after_ci95")},
                         "temperature": metrics["calibration"][part]["temperature"]}
                  for part in metrics["source"]["parts_scored"]},
        "router_study_accuracy": metrics["router"]["study_accuracy"],
        "pointing_game": pointing,
        "seconds": seconds,
    }


def table(result):
    """The result as a few printed lines."""
    def interval(pair):
        return "—" if pair is None or pair[0] is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    def value(x):
        return "—" if x is None else f"{x:.3f}"

    lines = [f"{'part':<12} {'studies':>7} {'abnormal':>8} {'AUROC':>6} {'95% CI':>13} {'kappa':>6} {'95% CI':>13} "
             f"{'ECE before':>10} {'ECE after':>9} {'95% CI':>13}"]
    for part, m in result["parts"].items():
        lines.append(f"{part:<12} {m['n']:>7} {m['abnormal']:>8} {value(m['auroc']):>6} {interval(m['auroc_ci95']):>13} "
                     f"{value(m['kappa']):>6} {interval(m['kappa_ci95']):>13} {value(m['ece_before']):>10} "
                     f"{value(m['ece_after']):>9} {interval(m['ece_after_ci95']):>13}")
    lines.append(f"router study accuracy {result['router_study_accuracy']:.3f}")
    game = result["pointing_game"]
    if game["hit_share"] is None:
        lines.append(f"pointing game: none of the {game['fractured']} held-out fractured images was called abnormal")
    else:
        lines.append(f"pointing game: {game['hits']}/{game['called_abnormal']} = {game['hit_share']:.2f} of the fractured "
                     f"images called abnormal have their Grad-CAM maximum in a fracture box; a random point: "
                     f"{game['random_share']:.2f}")
    return "\n".join(lines)


def _one(args, reuse=False):
    """One row: runs the benchmark into `args.out`; with `reuse`, reads back the result a finished run left there
    (a row killed before it finished starts again from nothing)."""
    import shutil

    from bonenet.outputs import json_safe, write_text_whole

    done = Path(args.out, "real_radiographs.json")
    if reuse and done.is_file():
        return json.loads(done.read_text())
    for folder in ("run", "eval"):
        shutil.rmtree(Path(args.out, folder), ignore_errors=True)
    result = json_safe(run(args))
    write_text_whole(done, json.dumps(result, indent=2))  # last, and whole: a killed row is run again
    return result


def compare(args):
    """Every backbone of `--compare` in each mode of `--modes`, side by side: {row name: result}."""
    from bonenet.configs import MAX_TRAINABLE_LAYERS

    rows = {}
    for weights in args.compare.split(","):
        for mode in args.modes.split(","):
            deep = mode == "all"
            row = argparse.Namespace(**{**vars(args), "weights": weights, "out": str(Path(args.out) / f"{weights}-{mode}"),
                                        "trainable_layers": MAX_TRAINABLE_LAYERS if deep else int(mode),
                                        "image_size": args.deep_image_size if deep else args.image_size,
                                        "epochs": args.deep_epochs if deep else args.epochs,
                                        "learning_rate": args.deep_learning_rate if deep else args.learning_rate})
            print(f"{weights}, trainable layers {mode}: {row.out}", file=sys.stderr, flush=True)
            rows[f"{weights}-{mode}"] = _one(row, reuse=True)
    return rows


def comparison_table(rows, part="XR_HAND"):
    """One Markdown row per backbone and mode: the part's AUROC and kappa with their CIs, router accuracy, time."""
    def ci(pair):
        return "—" if pair is None or pair[0] is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    def f(x):
        return "—" if x is None else f"{x:.3f}"

    lines = [f"| backbone | trainable layers, px, epochs | {part} AUROC [95% CI] | kappa [95% CI] | router study acc. "
             "| seconds |", "|---|---|---|---|---|---|"]
    for result in rows.values():
        c, m = result["config"], result["parts"].get(part, {})
        lines.append(f"| {c['weights']} | {c['trainable_layers']}, {c['image_size']}, {c['epochs']} | {f(m.get('auroc'))} "
                     f"{ci(m.get('auroc_ci95'))} | {f(m.get('kappa'))} {ci(m.get('kappa_ci95'))} | "
                     f"{f(result['router_study_accuracy'])} | {sum(result['seconds'].values()):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark, prints its table and writes `<out>/real_radiographs.json` (`<out>/transfer.json`
    with `--compare`)."""
    args = parse_args(argv)
    from bonenet import runtime

    runtime.start()  # before anything imports TensorFlow: its start-up lines held back, devices set up once
    if args.compare:
        rows = compare(args)
        Path(args.out, "transfer.json").write_text(json.dumps(rows, indent=2))
        print(comparison_table(rows))
        return rows
    result = _one(args)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
