"""BoneNet command line: `python run_pipeline.py SUBCOMMAND --help` (also installed as `bonenet`).

This file only parses arguments and calls library functions; heavy imports (TensorFlow) happen
inside the subcommands that need them, so `--help` stays fast.
"""

import argparse
import json
import os
import sys
from pathlib import Path


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


def _cmd_make_synthetic(args):
    from bonenet.synthetic import make_synthetic

    root = make_synthetic(args.out, studies_per_part=args.studies_per_part, seed=args.seed)
    print(f"wrote {root}")


def _cmd_data_summary(args):
    from bonenet.mura import format_summary, read_mura, summarize

    summary = summarize(read_mura(args.data_root))
    print(format_summary(summary))
    if args.json:
        _write_json(args.json, summary)


def _cmd_preprocess(args):
    from bonenet.figures import preprocess_panel, save_figure
    from bonenet.imageio import load_gray

    try:
        fig = preprocess_panel(load_gray(args.image), args.recipe, args.image_size, title=str(args.image))
    except ValueError as exc:
        raise CommandError(exc) from exc
    print(f"wrote {save_figure(fig, args.out)}")


def _train_config(args):
    from bonenet.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, weights=args.weights,
        trainable_layers=args.trainable_layers, learning_rate=args.learning_rate, seed=args.seed,
        strategy=args.strategy, recipe=args.recipe, augment=not args.no_augment, max_rotation=args.max_rotation,
        patience=args.patience, cache_dir=args.cache_dir, mode=args.mode, views=args.views,
    )


def _cmd_train(args):
    from bonenet.mura import read_mura
    from bonenet.train import train_all, train_model

    config = _train_config(args)
    from bonenet.models import resolve_weights

    resolve_weights(config.weights)  # fail within seconds, before reading the data
    index = read_mura(args.data_root)
    if not index.skipped.empty:
        print(f"bonenet: {len(index.skipped)} file(s) skipped; run data-summary to list them", file=sys.stderr)
    if args.command == "train-all":
        entries, failures = train_all(index, args.models_dir, config, resume=args.resume)
        print(f"trained {', '.join(entries) or 'nothing'} into {args.models_dir}")
        if failures:
            raise CommandError(f"could not train {', '.join(failures)} (see messages above)")
        return
    target = "router" if args.command == "train-router" else args.part
    entry, _ = train_model(target, index, args.models_dir, config, resume=args.resume)
    print(f"saved {Path(args.models_dir) / entry['file']}; hold-out " +
          ", ".join(f"{k} {v:.4f}" for k, v in entry["holdout"].items()))


def _add_training_flags(p):
    p.add_argument("--data-root", required=True, help="the MURA-v1.1 folder or its parent")
    p.add_argument("--models-dir", required=True, help="run folder to write models and manifest.json into")
    p.add_argument("--epochs", type=int, default=10, help="most epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--weights", default="imagenet", help="imagenet, none, or a backbone .weights.h5 file (default imagenet)")
    p.add_argument("--trainable-layers", type=int, default=20, help="last base layers to fine-tune (default 20)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, shuffling and augmentation (default 0)")
    p.add_argument("--strategy", default="auto", choices=["auto", "default", "mirrored", "multiworker"],
                   help="tf.distribute strategy (default auto: mirrored when >1 GPU)")
    p.add_argument("--recipe", default="equalize", help="preprocessing recipe name or JSON file (default equalize)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--max-rotation", type=float, default=15.0, help="augmentation rotation bound, <= 30 (default 15)")
    p.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs (default 4)")
    p.add_argument("--mode", default="cached", choices=["cached", "full"],
                   help="cached: train heads on trunk outputs computed once (default); "
                        "full: fit the whole model on live-augmented images")
    p.add_argument("--views", type=int, default=2,
                   help="cached mode: augmented views drawn once per train image (default 2; 0 = none)")
    p.add_argument("--cache-dir", help="cache folder (default: <models-dir>/cache for trunk outputs; "
                                       "memory for images in full mode)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last completed epoch")
    p.set_defaults(func=_cmd_train)


def _cmd_evaluate(args):
    from bonenet.evaluate import evaluate_run

    metrics = evaluate_run(args.data_root, args.models_dir, args.out, split=args.split, n_boot=args.bootstrap,
                           seed=args.seed)
    overall = metrics["study"].get("overall", {})
    print(f"router study accuracy {metrics['router']['study_accuracy']:.4f}; overall study kappa "
          f"{overall.get('kappa', float('nan')):.4f} on {overall.get('n', 0)} studies "
          f"({len(metrics['source']['parts_scored'])} part(s) scored)")
    print(f"wrote {args.out}/metrics.json, study_predictions.csv, image_predictions.csv and plots")


def _cmd_report(args):
    from bonenet.report import run_reports

    for path in run_reports(args.eval_dir, args.out):
        print(f"wrote {path}")


def _cmd_predict(args):
    from bonenet.inference import BoneNet, predict_paths

    results = predict_paths(BoneNet.load(args.models_dir), args.paths, cam_dir=args.cam_dir)
    for r in results:
        if "error" in r:
            print(f"{r['path']}: ERROR {r['error']}")
        else:
            p = "n/a (no model)" if r["p_abnormal"] is None else f"{r['p_abnormal']:.3f}"
            verdict = "abnormal" if r["abnormal"] else "normal" if r["abnormal"] is not None else "unscored"
            what = f"study {r['study']}" if "study" in r else r["path"]
            print(f"{what}: {r['part']} ({r['part_confidence']:.2f}) p(abnormal)={p} -> {verdict}")
    if args.json:
        _write_json(args.json, results)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"bonenet predict: {failed} input(s) could not be read", file=sys.stderr)
        return 1
    return None


def _cmd_demo(args):
    from bonenet.demo import run_demo

    run_demo(args.out, studies_per_part=args.studies_per_part, image_size=args.image_size, quick=args.quick)


def _write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def build_parser():
    """Returns the argparse parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="bonenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("make-synthetic", help="write a synthetic MURA-v1.1-shaped dataset")
    p.add_argument("--out", required=True, help="folder to create MURA-v1.1/ in")
    p.add_argument("--studies-per-part", type=int, default=40, help="train studies per part (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("data-summary", help="per part and split counts, and skipped files")
    p.add_argument("--data-root", required=True, help="the MURA-v1.1 folder or its parent")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.set_defaults(func=_cmd_data_summary)

    p = sub.add_parser("preprocess", help="a labelled figure of one image through each filter and the recipe")
    p.add_argument("image", help="a PNG radiograph")
    p.add_argument("--out", required=True, help="panel PNG to write")
    p.add_argument("--recipe", default="equalize", help="recipe name (none, equalize, sharpen, edges, full) or JSON file")
    p.add_argument("--image-size", type=int, default=224, help="model input side (default 224)")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train-router", help="train the EfficientNetB0 body-part router")
    _add_training_flags(p)
    p = sub.add_parser("train-part", help="train one part's abnormality model (the per-bone training)")
    p.add_argument("--part", required=True, help="elbow, finger, forearm, hand, humerus, shoulder or wrist")
    _add_training_flags(p)
    p = sub.add_parser("train-all", help="train the router, then the seven part models")
    _add_training_flags(p)

    p = sub.add_parser("evaluate", help="score a run per image and per study, per part, against the baselines")
    p.add_argument("--data-root", required=True, help="the MURA-v1.1 folder or its parent")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--out", required=True, help="folder for metrics.json, prediction CSVs and plots")
    p.add_argument("--split", default="valid", choices=["valid", "train"], help="split to score (default valid)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for kappa CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="run the report notebooks head-less: one HTML per part plus an overview")
    p.add_argument("--eval-dir", required=True, help="an evaluate --out folder")
    p.add_argument("--out", required=True, help="folder for the HTML reports")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("predict", help="part, p(abnormal) and decision for images, study folders or directories")
    p.add_argument("paths", nargs="+", help="PNG files, study folders or folders of studies")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--cam-dir", help="write a Grad-CAM overlay PNG per image here")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="the whole chain on built-in synthetic data, offline, on a CPU")
    p.add_argument("--out", default="demo_output", help="folder for everything the demo writes (default demo_output)")
    p.add_argument("--studies-per-part", type=int, default=60, help="synthetic train studies per part (default 60)")
    p.add_argument("--image-size", type=int, default=96, help="input side for the demo models (default 96)")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run (tiny data, few epochs)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (CommandError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input and known failures (ValueError covers MuraError, ImageReadError, ManifestError)
        # become one line; BONENET_DEBUG=1 shows the traceback.
        if os.environ.get("BONENET_DEBUG"):
            raise
        print(f"bonenet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
