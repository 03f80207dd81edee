"""BoneNet command line: `python run_pipeline.py SUBCOMMAND --help` (also installed as `bonenet`).

This file only parses arguments and calls library functions; heavy imports (TensorFlow) happen
inside the subcommands that need them, so `--help` stays fast.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from bonenet.parts import PARTS, short_name

PART_CHOICES = [short_name(p) for p in PARTS]


DESCRIPTION = """\
BoneNet finds abnormal musculoskeletal radiographs (Stanford's MURA): an EfficientNetB0 router
sends each image to one of seven per-part abnormality models (elbow ... wrist).

  1. data-summary --data-root MURA      check the dataset (or make-synthetic --out DIR)
  2. train-all --data-root MURA --models-dir RUN   train the router and the seven part models
  3. evaluate --data-root MURA --models-dir RUN --out EVAL   per-part study kappa, F1, AUROC
  4. report --eval-dir EVAL --out REPORTS   HTML reports, one per part plus an overview
  5. predict STUDY --models-dir RUN --cam-dir CAMS   (or serve --models-dir RUN) read a study

demo runs all five on synthetic data, offline, on a CPU. Not for clinical use."""


DATA_ROOT_HELP = ("the MURA-v1.1 folder or its parent, or a datalist CSV (path,patient,study,part,label[,split]; "
                  "see bonenet/datalist.py)")


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


def _cmd_make_synthetic(args):
    from bonenet.synthetic import make_synthetic

    root = make_synthetic(args.out, studies_per_part=args.studies_per_part, seed=args.seed,
                          valid_studies_per_part=args.valid_studies_per_part, overwrite=args.overwrite)
    print(f"wrote {root}")


def _cmd_fracatlas_datalist(args):
    from bonenet.datalist import fracatlas_datalist

    table = fracatlas_datalist(args.fracatlas, args.out)
    counts = table.groupby(["part", "label"]).size()
    print(f"wrote {args.out}: {len(table)} images, each its own study and patient (FracAtlas publishes no patient "
          "identifiers); " + ", ".join(f"{part} {'abnormal' if label else 'normal'} {n}"
                                      for (part, label), n in counts.items()))


def _cmd_data_summary(args):
    from bonenet.datalist import read_dataset
    from bonenet.mura import format_summary, summarize

    summary = summarize(read_dataset(args.data_root, verify=args.verify))
    print(format_summary(summary))
    if args.json:
        _write_json(args.json, summary)


def _cmd_preprocess(args):
    from bonenet.figures import image_title, preprocess_panel, save_figure
    from bonenet.imageio import load_gray

    try:
        fig = preprocess_panel(load_gray(args.image), args.recipe, args.image_size, title=image_title(args.image),
                               all_filters=args.all_filters)
    except ValueError as exc:
        raise CommandError(exc) from exc
    print(f"wrote {save_figure(fig, args.out)}")


def _cmd_train(args):
    from bonenet.configs import TrainConfig
    from bonenet.datalist import read_dataset
    from bonenet.models import resolve_weights
    from bonenet.train import is_chief, train_all, train_model

    config = TrainConfig(**_config_values(args, TrainConfig))
    _, origin = resolve_weights(config.weights)  # fail within seconds, before reading the data
    if origin["kind"] != "imagenet" and config.trainable_layers == TrainConfig.trainable_layers:
        backbone = origin.get("description") or origin["kind"]
        print(f"bonenet {args.command}: note: the backbone is not ImageNet-pretrained ({backbone}), and the last "
              f"{config.trainable_layers} layers alone learn little of real radiographs from it; deep fine-tuning "
              "(--trainable-layers all) is what learns real findings from such a backbone")
    if config.deep:
        print(f"bonenet {args.command}: --trainable-layers all: the whole network fine-tunes in full mode (no shared "
              "trunk, so no trunk-feature cache; prepared images are cached in memory, or in --cache-dir)")
    index = read_dataset(args.data_root)
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
    where = "saved" if is_chief(config.strategy) else "trained (the chief saves)"
    print(f"{where} {Path(args.models_dir) / entry['file']}; hold-out " +
          ", ".join(f"{k} {v:.4f}" for k, v in entry["holdout"].items()))


def _training_parent():
    """The flags every training subcommand shares, defined once; defaults come from `TrainConfig`."""
    from bonenet.configs import CHOICES, TRAIN_HELP, TRAIN_RANGES, TrainConfig

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--models-dir", required=True, help="run folder to write models and manifest.json into")
    _add_config_flags(p, TrainConfig, TRAIN_HELP, CHOICES, ranges=TRAIN_RANGES)
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last completed epoch")
    p.set_defaults(func=_cmd_train)
    return p


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

    for path in run_reports(args.eval_dir, args.out, parts=args.part):
        print(f"wrote {path}")


def _cmd_serve(args):
    from bonenet.serve import serve

    serve(args.models_dir, host=args.host, port=args.port, threshold=args.threshold, max_file_mb=args.max_file_mb,
          max_files=args.max_files)


def _cmd_predict(args):
    from bonenet.inference import BoneNet, mixed_parts_text, predict_paths

    net = BoneNet.load(args.models_dir, threshold=args.threshold)
    if net.backbone_warning():
        print(f"bonenet predict: warning: {net.backbone_warning()}", file=sys.stderr)
    if len(net.parts) < len(PARTS):
        print(f"bonenet predict: this run covers {', '.join(net.parts)} only; every image is routed to one of them",
              file=sys.stderr)
    results = predict_paths(net, args.paths, cam_dir=args.cam_dir, per_image=args.per_image)
    for r in results:
        if "error" in r:  # the error names the file itself; say the path once
            print(f"{r['path']}: ERROR {r['error'].removeprefix(r['path'] + ': ')}")
            continue
        if "skipped" in r:
            print(f"{r['path']}: skipped: {r['skipped']}")
            continue
        what = f"study {r['study']}" if "study" in r else r["path"]
        if r.get("mixed_parts"):
            print(f"{what}: warning: its images disagree about the part ({mixed_parts_text(r['mixed_parts'])}); "
                  "are they one study? --per-image scores each image alone")
        if r["p_abnormal"] is None:
            print(f"{what}: {r['part']} (router confidence {r['part_confidence']:.2f}), unscored: no model for it")
            continue
        verdict = "abnormal" if r["abnormal"] else "normal"
        print(f"{what}: {r['part']} (router confidence {r['part_confidence']:.2f}) p(abnormal)={r['p_abnormal']:.3f} "
              f"-> {verdict} at threshold {r['threshold']:.3f} ({r['threshold_source']})")
    if args.json:
        _write_json(args.json, results)
    if args.csv:
        from bonenet.inference import results_table
        from bonenet.outputs import file_written_whole

        with file_written_whole(args.csv) as tmp:
            results_table(results).to_csv(tmp, index=False)
        print(f"wrote {args.csv}")
    failed = sum("error" in r for r in results)
    if failed:
        print(f"bonenet predict: {failed} input(s) could not be read", file=sys.stderr)
        return 1
    return None


def _cmd_pretrain_backbone(args):
    from bonenet.pretrain import PretrainConfig, pretrain_backbone

    config = PretrainConfig(**_config_values(args, PretrainConfig))
    provenance = pretrain_backbone(args.out, config, data_dir=args.data_dir, resume=args.resume,
                                   command=shlex.join(["bonenet", *args.argv]))
    accuracy = provenance["holdout_accuracy"]
    print(f"wrote {args.out} ({provenance['steps']} steps, {provenance['seconds']} s); hold-out accuracy: joint "
          f"{accuracy['joint']:.3f}, part {accuracy['part']:.3f}, normal/abnormal {accuracy['abnormal']:.3f} "
          f"on {accuracy['images']} images; sha256 {provenance['sha256'][:12]}…")


def _cmd_demo(args):
    from bonenet.configs import DemoPlan
    from bonenet.demo import run_demo

    run_demo(args.out, quick=args.quick, **_config_values(args, DemoPlan))


def _add_config_flags(parser, config_class, helps, choices=None, plan_defaults=False, ranges=None):
    """Adds one `--flag` per dataclass field: defaults live in the dataclass alone.

    A True boolean becomes `--no-FIELD`. With `plan_defaults`, flags default to None so that only
    what the user typed overrides a plan (the demo's full or quick plan).
    """
    choices, ranges = choices or {}, ranges or {}
    for field in dataclasses.fields(config_class):
        flag, default = field.name.replace("_", "-"), field.default
        text = helps[field.name] if default is None else f"{helps[field.name]} (default {default})"
        if isinstance(default, bool):
            parser.add_argument(f"--{'no-' if default else ''}{flag}", dest=field.name, default=default,
                                action="store_false" if default else "store_true",
                                help=f"do not {helps[field.name]}" if default else helps[field.name])
            continue
        kind = _recipe if field.name == "recipe" else str if default is None else type(default)
        if field.name in ranges:
            kind = _in_range(kind, ranges[field.name])
            text += f"; {ranges[field.name]}"
        if field.name == "trainable_layers":
            kind = _all_or(kind, ranges[field.name].hi)
            text += ", or all"
        parser.add_argument(f"--{flag}", type=kind, default=None if plan_defaults else default,
                            choices=choices.get(field.name), help=text)


def _in_range(kind, accepted):
    """An argparse type: `kind` of `value`, refused while parsing when outside `accepted` (a `Range`)."""

    def parse(value):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a{'n integer' if kind is int else ' number'}") from None
        if number not in accepted:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {accepted}")
        return number

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _all_or(kind, everything):
    """An argparse type that reads "all" as `everything` and anything else as `kind` does."""

    def parse(value):
        if str(value).strip().lower() == "all":
            return everything
        try:
            return kind(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, or all") from None

    parse.__name__ = kind.__name__
    return parse


def _part(value):
    from bonenet.parts import parse_part

    try:
        return parse_part(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _recipe(value):
    """A recipe name or JSON file, checked while parsing so that a typo fails before TensorFlow loads."""
    from preprocessing.recipes import get_recipe

    try:
        get_recipe(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _config_values(args, config_class):
    """The dataclass fields that `args` holds (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if getattr(args, f.name, None) is not None}


def _write_json(path, payload):
    from bonenet.outputs import write_text_whole

    print(f"wrote {write_text_whole(path, json.dumps(payload, indent=2))}")


def build_parser():
    """Returns the argparse parser for every subcommand."""
    from bonenet import __version__
    from bonenet.configs import Range
    from preprocessing.filters import MIN_SIDE

    parser = argparse.ArgumentParser(prog="bonenet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bonenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("make-synthetic", help="write a synthetic MURA-v1.1-shaped dataset")
    p.add_argument("--out", required=True, help="folder to create MURA-v1.1/ in")
    p.add_argument("--studies-per-part", type=_in_range(int, Range(1)), default=40,
                   help="train studies per part (default 40)")
    p.add_argument("--valid-studies-per-part", type=_in_range(int, Range(1)),
                   help="valid studies per part (default a quarter of --studies-per-part, at least 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/MURA-v1.1")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("fracatlas-datalist", help="a datalist CSV of FracAtlas' hand and shoulder radiographs "
                                                  "(CC BY 4.0) for training and evaluating on real images")
    p.add_argument("--fracatlas", required=True, help="the FracAtlas folder (dataset.csv and images/)")
    p.add_argument("--out", required=True, help="datalist CSV to write (paths relative to its folder)")
    p.set_defaults(func=_cmd_fracatlas_datalist)

    p = sub.add_parser("data-summary", help="per part and split counts, and skipped files")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--verify", action="store_true",
                   help="decode every image fully (slow), not only its first and last bytes")
    p.set_defaults(func=_cmd_data_summary)

    p = sub.add_parser("preprocess", help="a labelled figure of one image through each filter and the recipe")
    p.add_argument("image", help="a PNG, JPEG or DICOM radiograph")
    p.add_argument("--out", required=True, help="panel PNG to write")
    p.add_argument("--recipe", default="equalize", type=_recipe,
                   help="recipe name (none, equalize, sharpen, edges, full) or JSON file")
    p.add_argument("--image-size", type=_in_range(int, Range(MIN_SIDE)), default=224,
                   help="model input side (default 224)")
    p.add_argument("--all-filters", action="store_true",
                   help="also show every filter (Sobel, Prewitt, Roberts, Canny, Laplacian, equalization, CLAHE)")
    p.set_defaults(func=_cmd_preprocess)

    training = _training_parent()
    sub.add_parser("train-router", parents=[training], help="train the EfficientNetB0 body-part router")
    p = sub.add_parser("train-part", parents=[training],
                       help="train one part's abnormality model (the per-bone training)")
    p.add_argument("--part", required=True, type=_part, metavar="PART",
                   help=f"one of {', '.join(PART_CHOICES)} (or XR_ELBOW …, any case)")
    sub.add_parser("train-all", parents=[training], help="train the router, then the seven part models")

    p = sub.add_parser("evaluate", help="score a run per image and per study, per part, against the baselines")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--out", required=True, help="folder for metrics.json, prediction CSVs and plots")
    p.add_argument("--split", default="valid", choices=["valid", "train"], help="split to score (default valid)")
    p.add_argument("--bootstrap", type=_in_range(int, Range(0)), default=1000, help="bootstrap resamples for kappa CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="run the report notebooks head-less: one HTML per part plus an overview")
    p.add_argument("--eval-dir", required=True, help="an evaluate --out folder")
    p.add_argument("--out", required=True, help="folder for the HTML reports")
    p.add_argument("--part", action="append", type=_part, metavar="PART",
                   help="render this part's page (repeatable); default every scored part. The overview is always made")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("predict", help="part, p(abnormal) and decision for images, study folders or directories")
    p.add_argument("paths", nargs="+", help="PNG, JPEG or DICOM files, study folders or folders of studies")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--cam-dir", help="write a Grad-CAM overlay PNG per image here")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--csv", help="write the results as CSV here, one row per image, study or error")
    p.add_argument("--threshold", default="tuned", choices=["tuned", "default"],
                   help="tuned: each part's threshold tuned on the training hold-out, where the run has one; "
                        "default: 0.5 (default tuned)")
    p.add_argument("--per-image", action="store_true",
                   help="score every image on its own; by default the images directly in one folder are one study")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("serve", help="a web page and an HTTP API (POST /api/predict, GET /api/health) for reading "
                                     "a study")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_in_range(int, Range(1, 65535)), default=8000, help="port (default 8000)")
    p.add_argument("--threshold", default="tuned", choices=["tuned", "default"],
                   help="tuned: each part's threshold tuned on the training hold-out; default: 0.5 (default tuned)")
    p.add_argument("--max-file-mb", type=_in_range(float, Range(0, open_lo=True)), default=20,
                   help="largest accepted file in MB (default 20)")
    p.add_argument("--max-files", type=_in_range(int, Range(1)), default=32, help="most files per request (default 32)")
    p.set_defaults(func=_cmd_serve)

    from bonenet.configs import PRETRAIN_HELP, PRETRAIN_RANGES, PretrainConfig

    p = sub.add_parser("pretrain-backbone", help="train EfficientNetB0 end to end on synthetic radiographs "
                                                 "(how the demo's shipped backbone was made; never ImageNet)")
    p.add_argument("--out", required=True, help="backbone .weights.h5 file to write; <name>.json beside it records "
                                                "its provenance")
    p.add_argument("--data-dir", help="where the synthetic pretraining data goes (default <name>-data beside --out)")
    _add_config_flags(p, PretrainConfig, PRETRAIN_HELP, ranges=PRETRAIN_RANGES)
    p.add_argument("--resume", action="store_true", help="continue a killed pretraining from its last epoch")
    p.set_defaults(func=_cmd_pretrain_backbone)

    from bonenet.configs import DEMO_HELP, DEMO_RANGES, DemoPlan

    p = sub.add_parser("demo", help="the whole chain on built-in synthetic data, offline, on a CPU, with the "
                                    "shipped synthetic-pretrained backbone")
    p.add_argument("--out", default="demo_output", help="folder for everything the demo writes (default demo_output)")
    p.add_argument("--quick", action="store_true", help="a smoke run of under 2 minutes (tiny data, one epoch)")
    _add_config_flags(p, DemoPlan, DEMO_HELP, plan_defaults=True, ranges=DEMO_RANGES)
    p.set_defaults(func=_cmd_demo)
    return parser


# The arguments each subcommand writes to: checked before any work, so that a read-only or full
# target fails in a second rather than after minutes of computing.
OUTPUTS = {"make-synthetic": ["out"], "fracatlas-datalist": ["out"], "data-summary": ["json"], "preprocess": ["out"], "train-router": ["models_dir"],
           "train-part": ["models_dir"], "train-all": ["models_dir"], "evaluate": ["out"], "report": ["out"],
           "predict": ["json", "csv", "cam_dir"], "pretrain-backbone": ["out"], "demo": ["out"]}

# Subcommands that run TensorFlow: it is started once, quietly, before any of them imports it.
TF_COMMANDS = {"train-router", "train-part", "train-all", "evaluate", "predict", "pretrain-backbone", "demo", "serve"}


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    if not os.environ.get("BONENET_DEBUG"):
        # Every warning still shows, as one line like the errors; BONENET_DEBUG=1 adds the source line.
        warnings.formatwarning = lambda message, *_, **__: f"bonenet {args.command}: warning: {_one_line(message)}\n"
    try:
        from bonenet.outputs import check_writable

        for name in OUTPUTS.get(args.command, []):
            if getattr(args, name, None):
                check_writable(getattr(args, name))
    except OSError as exc:
        print(f"bonenet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.command in TF_COMMANDS:
        from bonenet import runtime

        try:
            runtime.start(getattr(args, "precision", "auto"))
        except ValueError as exc:
            print(f"bonenet {args.command}: error: {exc}", file=sys.stderr)
            return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, as SIGTERM gives, and how to go on
        if os.environ.get("BONENET_DEBUG"):
            raise
        resume = (" (training keeps its last completed epoch: run the same command with --resume)"
                  if hasattr(args, "resume") else "")
        print(f"bonenet {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError, RuntimeError) as exc:
        # Bad input and known failures become one line (ValueError covers MuraError, ImageReadError,
        # ManifestError; OSError an unwritable, full or missing path, which its text names);
        # BONENET_DEBUG=1 shows the traceback.
        if os.environ.get("BONENET_DEBUG"):
            raise
        print(f"bonenet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


def _one_line(exc, limit=500):
    # Some library errors carry whole tensors in their text; the user gets the first line.
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0] if len(lines[0]) <= limit else lines[0][:limit] + "…"
    return text + (" (…)" if len(lines) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
