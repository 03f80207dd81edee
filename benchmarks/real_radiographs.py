"""BoneNet on real radiographs anyone can get: FracAtlas hand and shoulder (CC BY 4.0), trained and scored.

    python benchmarks/real_radiographs.py --out fracatlas_bench [--weights shipped|radiograph|imagenet|none|PATH]
        [--trainable-layers 20|all] [--image-size 96] [--epochs 10] [--learning-rate 1e-4]
    python benchmarks/real_radiographs.py --out transfer --compare shipped,radiograph,none \
        [--deep-image-size 128 --deep-epochs 6 --deep-learning-rate 3e-4]

With `--compare`, each backbone named runs twice, with the last 20 layers (cached, at `--image-size`) and with
`--trainable-layers all` (full mode, at `--deep-image-size`), each into `<out>/<backbone>-<mode>/`; a row
already finished there with the same settings is read back, not run again, so a killed comparison resumes (one
finished with other settings is refused, never overwritten). It prints one table with the backbone as a column
and writes `<out>/transfer.json`, which keeps the rows of earlier calls into the same `--out`.

BoneNet's own steps, in order: `fracatlas-datalist` (hand → XR_HAND, shoulder → XR_SHOULDER; abnormal =
fractured or hardware; each image its own study and patient, since FracAtlas publishes no patient
identifiers), `train-all` on the parts present (the router and the two parts), `evaluate` on the held-out
share, and Grad-CAM. The hold-out is the datalist's own: with no split column, a patient-grouped fifth of the
studies, stratified by part and label, drawn with the fixed seed 0 (`bonenet.data.datalist`), the same on every
run and machine.

It reports per part the study AUROC and kappa, each with its 95% cluster-bootstrap interval, the expected
calibration error before and after each part model's temperature (`bonenet.scoring.calibration`), the router's
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
    p.add_argument("--ensemble", type=int, default=1, help="members per model (default 1)")
    p.add_argument("--tta", default="none", choices=("none", "flip"), help="test-time augmentation at evaluate")
    p.add_argument("--cache-dir", help="trunk-feature cache shared by the rows (default: each run's own)")
    p.add_argument("--compare", help="comma-separated backbones (as --weights) to run side by side, last 20 and all")
    p.add_argument("--variants", help="with --weights: comma-separated image sizes at which to compare, in cached "
                                      "mode, one model and a --members ensemble, each without and with TTA")
    p.add_argument("--members", type=int, default=5, help="with --variants: the ensemble's members (default 5)")
    p.add_argument("--heat-maps-only", action="store_true",
                   help="score only the heat maps (the pointing game) of every run already under --out, with this "
                        "code's heat map, into <row>/pointing_game.json")
    p.add_argument("--modes", default="20,all",
                   help="with --compare: which of 20, all and adapt to run (default 20,all); adapt: the trunk "
                        "adapted on every fit image first (--adapt-epochs), then the last 20, at --deep-image-size")
    p.add_argument("--adapt-epochs", type=int, default=0, help="trunk adaptation epochs before training (default 0; "
                                                               "8 in --compare's adapt mode when 0)")
    p.add_argument("--adapt-learning-rate", type=float, default=3e-4, help="trunk adaptation peak rate")
    p.add_argument("--adapt-early-size", type=int, default=0,
                   help="trunk adaptation's progressive resizing: its early epochs at this side (default 0: off)")
    p.add_argument("--deep-image-size", type=int, default=128, help="with --compare: input side for all (default 128)")
    p.add_argument("--deep-epochs", type=int, default=6, help="with --compare: epochs for all (default 6)")
    p.add_argument("--deep-learning-rate", type=float, default=3e-4, help="with --compare: rate for all (default 3e-4)")
    return p.parse_args(argv)


def pointing_game(net, paths, boxes, part, n_boot):
    """The pointing game of `part`'s heat maps (`bonenet.scoring.localisation`) over held-out fractured images with
    boxes, whatever the pipeline decided for them, and how many of them it called abnormal."""
    from bonenet.data.read import read_gray
    from bonenet.inference.heatmap import part_cam
    from bonenet.scoring.localisation import image_pointing
    from bonenet.scoring.localisation import pointing_game as game_of

    rows, called = [], 0
    for path in paths:
        gray = read_gray(path)
        _, study = net.score(net.encode(net.prepare(gray)[None]))
        called += bool(study["abnormal"])
        cam, _ = part_cam(net, part, gray)
        rows.append(image_pointing(cam, boxes[Path(path).name]))
    return {**game_of(rows, n_boot), "called_abnormal": called}


def heat_maps(net, index, root, run_dir, n_boot):
    """Each part's pointing game on the held-out fractured images with boxes, recorded in the run's manifest
    (so its captions say what was measured): {part: game}."""
    from bonenet.data.fractures import fracatlas_boxes
    from bonenet.run.manifest import record_section
    from bonenet.scoring.localisation import pointing_record

    table = pd.read_csv(Path(root) / "dataset.csv").set_index("image_id")
    boxes = fracatlas_boxes(root)
    valid = index.images[index.images["split"] == "valid"]
    games = {}
    for part in net.parts:
        mine = valid[valid["part"] == part]["path"]
        fractured = [p for p in mine if table.loc[Path(p).name, "fractured"] == 1 and Path(p).name in boxes]
        if fractured:
            games[part] = pointing_game(net, fractured, boxes, part, n_boot)
            record_section(run_dir, "localisation", part, pointing_record(games[part], "FracAtlas hold-out"))
    return games


def train_config(args):
    """The row's `TrainConfig`: `--weights shipped` is the shipped synthetic backbone's file."""
    from bonenet.configs import TrainConfig
    from bonenet.models.backbones import shipped_backbone

    weights = str(shipped_backbone()[0]) if args.weights == "shipped" else args.weights
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, weights=weights,
                       trainable_layers=args.trainable_layers, learning_rate=args.learning_rate, seed=args.seed,
                       ensemble=args.ensemble, cache_dir=args.cache_dir, adapt_epochs=args.adapt_epochs,
                       adapt_learning_rate=args.adapt_learning_rate, adapt_early_size=args.adapt_early_size)


def run(args):
    """The benchmark's steps; returns the result dict."""
    from bonenet.configs import EvaluateConfig
    from bonenet.data.datalist import fracatlas_datalist, read_dataset
    from bonenet.evaluation.evaluate import evaluate_run
    from bonenet.inference.predictor import BoneNet
    from bonenet.training.train import train_all

    out, root = Path(args.out), Path(args.fracatlas)
    seconds, start = {}, time.time()
    # Variant rows share one datalist, so that their images' paths, and with them the trunk-feature cache's key,
    # are the same.
    datalist = Path(getattr(args, "datalist", None) or out / "fracatlas.csv")
    fracatlas_datalist(root, datalist)
    index = read_dataset(datalist)
    config = train_config(args)
    if getattr(args, "trained", False):  # a variant that rescores a run trained for another row
        from bonenet.run.manifest import read_manifest

        entries = read_manifest(out / "run").models
    else:
        entries, failures = train_all(index, out / "run", config)
        if failures:
            raise SystemExit(f"could not train {', '.join(failures)}: {failures}")
    seconds["train_all"] = round(time.time() - start, 1)
    net = BoneNet.load(out / "run", tta=args.tta)
    metrics = evaluate_run(datalist, out / "run", out / _eval_folder(args),
                           EvaluateConfig(bootstrap=args.bootstrap, gallery=0, tta=args.tta), net=net)
    seconds["evaluate"] = round(time.time() - start - seconds["train_all"], 1)
    pointing = heat_maps(net, index, root, out / "run", args.bootstrap)
    seconds["pointing_game"] = round(time.time() - start - seconds["train_all"] - seconds["evaluate"], 1)
    studies = index.studies
    return {
        "data": {"source": str(root), "licence": "CC BY 4.0",
                 "note": "each image its own study and patient (FracAtlas publishes no patient identifiers)",
                 "train_studies": int((studies["split"] == "train").sum()),
                 "valid_studies": int((studies["split"] == "valid").sum())},
        "config": row_config(args),
        "members_holdout_auc": {key: [m["holdout"].get("auc") for m in entry.members]
                                for key, entry in entries.items() if key != "router"},
        "epochs_run": {key: entry.epochs_run for key, entry in entries.items()},
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


def _ci(pair):
    """A 95% interval as every output prints it (`bonenet.scoring.metrics.interval_text`)."""
    from bonenet.scoring.metrics import interval_text

    return interval_text(pair)


def _f(x):
    """A figure as every output prints it (`bonenet.scoring.metrics.figure_text`)."""
    from bonenet.scoring.metrics import figure_text

    return figure_text(x)


def table(result):
    """The result as a few printed lines."""
    lines = [f"{'part':<12} {'studies':>7} {'abnormal':>8} {'AUROC':>6} {'95% CI':>13} {'kappa':>6} {'95% CI':>13} "
             f"{'ECE before':>10} {'ECE after':>9} {'95% CI':>13}"]
    for part, m in result["parts"].items():
        lines.append(f"{part:<12} {m['n']:>7} {m['abnormal']:>8} {_f(m['auroc']):>6} {_ci(m['auroc_ci95']):>13} "
                     f"{_f(m['kappa']):>6} {_ci(m['kappa_ci95']):>13} {_f(m['ece_before']):>10} "
                     f"{_f(m['ece_after']):>9} {_ci(m['ece_after_ci95']):>13}")
    lines.append(f"router study accuracy {result['router_study_accuracy']:.3f}")
    for part, game in result["pointing_game"].items():
        lines.append(f"pointing game {part}: {pointing_text(game)}")
    return "\n".join(lines)


def pointing_text(game):
    """A pointing game in one line: hits, random point, centre, energy, each with its interval."""
    return (f"{game['hit']:.3f} {_ci(game['hit_ci95'])} of {game['images']} fractured images (random point "
            f"{game['random']:.3f}, centre {game['centre']:.3f} {_ci(game['centre_ci95'])}; energy in boxes "
            f"{game['energy']:.3f} {_ci(game['energy_ci95'])})")


def _eval_folder(args):
    return "eval" if args.tta == "none" else f"eval-{args.tta}"


def row_config(args):
    """What a row was asked to be, as its result records it."""
    config = train_config(args)
    return {"weights": args.weights, "trainable_layers": "all" if config.deep else config.trainable_layers,
            "mode": config.mode, "image_size": args.image_size, "epochs": args.epochs,
            "learning_rate": args.learning_rate, "batch_size": args.batch_size, "seed": args.seed,
            "ensemble": args.ensemble, "tta": args.tta, "adapt_epochs": args.adapt_epochs,
            "adapt_learning_rate": args.adapt_learning_rate, "adapt_early_size": args.adapt_early_size}


def _unlike(recorded, asked):
    """The settings in which a finished row differs from what this call asks (a backbone by its row name)."""
    def named(config):
        return {**config, "weights": row_name(str(config.get("weights")))}

    was, now = named(recorded), named(asked)
    return [f"{key} {recorded[key]} (asked: {asked[key]})" for key in asked if key in recorded and was[key] != now[key]]


def _one(args, reuse=False):
    """One row: runs the benchmark into `args.out`; with `reuse`, reads back the result a finished run left there,
    if it was run with these settings (a row killed before it finished starts again from nothing; a rescoring row,
    `trained`, keeps the run). A finished row with other settings is refused, never overwritten."""
    import shutil

    from bonenet.files import json_safe, write_text_whole

    trained = getattr(args, "trained", False)
    done = Path(args.out, f"real_radiographs{'' if args.tta == 'none' else '-' + args.tta}.json")
    if reuse and done.is_file():
        result = json.loads(done.read_text())
        unlike = _unlike(result.get("config", {}), row_config(args))
        if unlike:
            raise SystemExit(f"{done}: this row was run with {', '.join(unlike)}; give another --out, or delete "
                             f"{args.out} to run it again")
        return result
    for folder in ([] if trained else ["run"]) + [_eval_folder(args)]:
        shutil.rmtree(Path(args.out, folder), ignore_errors=True)
    result = json_safe(run(args))
    write_text_whole(done, json.dumps(result, indent=2))  # last, and whole: a killed row is run again
    return result


def compare(args):
    """Every backbone of `--compare` in each mode of `--modes`, side by side: {row name: result}."""
    from bonenet.configs import MAX_TRAINABLE_LAYERS

    rows = {}
    for weights in args.compare.split(","):
        name = row_name(weights)
        for mode in args.modes.split(","):
            deep, adapt = mode == "all", mode == "adapt"
            row = argparse.Namespace(**{**vars(args), "weights": weights, "out": str(Path(args.out) / f"{name}-{mode}"),
                                        "trainable_layers": MAX_TRAINABLE_LAYERS if deep else 20 if adapt else int(mode),
                                        "image_size": args.deep_image_size if deep or adapt else args.image_size,
                                        "epochs": args.deep_epochs if deep else args.epochs,
                                        "learning_rate": args.deep_learning_rate if deep else args.learning_rate,
                                        "adapt_epochs": (args.adapt_epochs or 8) if adapt else 0})
            print(f"{weights}, trainable layers {mode}: {row.out}", file=sys.stderr, flush=True)
            rows[f"{name}-{mode}"] = _one(row, reuse=True)
    return rows


def row_name(weights):
    """A backbone's row name and folder under `--out`: its name (shipped, radiograph, none), or a weights file's
    stem, so that a file given by its path never puts the row beside the file."""
    return Path(weights).name.removesuffix(".weights.h5") if weights.endswith(".h5") else weights


def variants(args):
    """At each size of `--variants`, in cached mode: one model and a `--members` ensemble, each scored without
    and with TTA (the TTA row rescores the same run): {row name: result}. The rows at one size share one
    trunk-feature cache, so the ensemble costs its heads' epochs only."""
    rows = {}
    for size in map(int, args.variants.split(",")):
        for members in (1, args.members):
            out = Path(args.out) / f"{size}px-k{members}"
            for tta in ("none", "flip"):
                row = argparse.Namespace(**{**vars(args), "out": str(out), "image_size": size, "ensemble": members,
                                            "tta": tta, "trained": tta != "none",
                                            "cache_dir": str(Path(args.out) / f"cache-{size}"),
                                            "datalist": str(Path(args.out) / "fracatlas.csv")})
                print(f"{size} px, {members} member(s), TTA {tta}: {out}", file=sys.stderr, flush=True)
                rows[f"{size}px-k{members}-{tta}"] = _one(row, reuse=True)
    return rows


def heat_maps_only(args):
    """The pointing game of every row's run under `--out` (`<row>/run/`), with this code's heat map, recorded in
    each run and written to `<row>/pointing_game.json`: {row: {part: game}}."""
    from bonenet.data.datalist import read_dataset
    from bonenet.inference.predictor import BoneNet

    rows = {}
    for manifest in sorted(Path(args.out).glob("*/run/manifest.json")):
        row = manifest.parent.parent
        datalist = row / "fracatlas.csv"
        index = read_dataset(datalist if datalist.is_file() else row.parent / "fracatlas.csv")
        rows[row.name] = heat_maps(BoneNet.load(row / "run"), index, args.fracatlas, row / "run", args.bootstrap)
        (row / "pointing_game.json").write_text(json.dumps(rows[row.name], indent=2))
        print(f"{row.name}: " + "; ".join(f"{part} {pointing_text(g)}" for part, g in rows[row.name].items()),
              flush=True)
    return rows


def variants_table(rows, part="XR_HAND"):
    """One Markdown row per variant: size, members, TTA, the part's AUROC and kappa, the other part's AUROC,
    router accuracy, the pointing game against a random point, and time."""
    lines = [f"| px | members | TTA | {part} AUROC [95% CI] | kappa [95% CI] | XR_SHOULDER AUROC [95% CI] | router "
             "study acc. | pointing game [95% CI] (random point) | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for result in rows.values():
        c, m = result["config"], result["parts"].get(part, {})
        other = result["parts"].get("XR_SHOULDER", {})
        game = result["pointing_game"].get(part, {})
        lines.append(f"| {c['image_size']} | {c['ensemble']} | {c['tta']} | {_f(m.get('auroc'))} {_ci(m.get('auroc_ci95'))} "
                     f"| {_f(m.get('kappa'))} {_ci(m.get('kappa_ci95'))} | {_f(other.get('auroc'))} "
                     f"{_ci(other.get('auroc_ci95'))} | {_f(result['router_study_accuracy'])} | {_f(game.get('hit'))} "
                     f"{_ci(game.get('hit_ci95'))} ({_f(game.get('random'))}) | {sum(result['seconds'].values()):.0f} |")
    return "\n".join(lines)


def comparison_table(rows, part="XR_HAND"):
    """One Markdown row per backbone and mode: the part's AUROC and kappa with their CIs, router accuracy, time."""
    lines = [f"| backbone | trainable layers, px, epochs | {part} AUROC [95% CI] | kappa [95% CI] | router study acc. "
             "| seconds |", "|---|---|---|---|---|---|"]
    for result in rows.values():
        c, m = result["config"], result["parts"].get(part, {})
        early = f" from {c['adapt_early_size']} px" if c.get("adapt_early_size") else ""
        layers = (f"adapt {c['adapt_epochs']}{early} + {c['trainable_layers']}" if c.get("adapt_epochs")
                  else c["trainable_layers"])
        lines.append(f"| {c['weights']} | {layers}, {c['image_size']}, {c['epochs']} | {_f(m.get('auroc'))} "
                     f"{_ci(m.get('auroc_ci95'))} | {_f(m.get('kappa'))} {_ci(m.get('kappa_ci95'))} | "
                     f"{_f(result['router_study_accuracy'])} | {sum(result['seconds'].values()):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark, prints its table and writes `<out>/real_radiographs.json` (`<out>/transfer.json`
    with `--compare`)."""
    args = parse_args(argv)
    from bonenet import runtime
    from bonenet.console import one_line

    runtime.start()  # before anything imports TensorFlow: its start-up lines held back, devices set up once
    try:
        return _main(args)
    except (ValueError, OSError) as exc:  # a backbone, folder or setting that cannot be used: one line, as the CLI
        raise SystemExit(f"real_radiographs: {one_line(exc)}") from None


def _main(args):
    if args.heat_maps_only:
        return heat_maps_only(args)
    from bonenet.files import write_text_whole

    if args.variants:
        rows = variants(args)
        write_text_whole(Path(args.out, "variants.json"), json.dumps(rows, indent=2))
        print(variants_table(rows))
        return rows
    if args.compare:
        rows = compare(args)
        # Rows of earlier calls with other backbones or modes stay in the summary; this call's replace theirs.
        summary = Path(args.out, "transfer.json")
        every = {**(json.loads(summary.read_text()) if summary.is_file() else {}), **rows}
        write_text_whole(summary, json.dumps(every, indent=2))
        print(comparison_table(every))
        return rows
    result = _one(args)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
