"""BoneNet command line: `python run_pipeline.py SUBCOMMAND --help` (also installed as `bonenet`).

This file only parses arguments and calls library functions; heavy imports (TensorFlow) happen
inside the subcommands that need them, so `--help` stays fast.
"""

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import threading
import traceback
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
  6. export --models-dir RUN --format onnx --out EXPORT   one artifact for a serving runtime

demo runs all five on synthetic data, offline, on a CPU. Not for clinical use."""


DATA_ROOT_HELP = ("the MURA-v1.1 folder or its parent, or a datalist CSV (path,patient,study,part,label[,split]; "
                  "see bonenet/data/datalist.py)")


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


# The console's one channel: every line a command shows goes through the `bonenet` logger and the
# one `_ConsoleHandler`, whether a command's result (`_say`), its remark (`_note`), the library's log,
# a Python warning (`_show_warning`) or an error.
CLI = logging.getLogger("bonenet.cli")
NOTE = logging.INFO + 5  # a command's remark or problem: standard error, prefixed with the command
logging.addLevelName(NOTE, "NOTE")


def _say(text):
    """A command's own result, on standard output."""
    CLI.info(text)


def _note(args, text):
    """A command's one-line remark or problem, on standard error, prefixed with the command."""
    CLI.log(NOTE, text)


def _print_skips(args, skips):
    """Each file a command could not use (`bonenet.data.read.Skip`, or its dict), once, with its reason."""
    from bonenet.data.read import Skip

    for skip in skips:
        skip = Skip(**skip) if isinstance(skip, dict) else skip
        _note(args, f"skipped {skip}")


class _ConsoleHandler(logging.Handler):
    """The console: information on standard output; progress lines on standard error; remarks, warnings and
    errors on standard error prefixed with the command. The streams are looked up at each record, so a
    redirected `sys.stdout` (a test's capture) is honoured."""

    PREFIX = {NOTE: "", logging.WARNING: "warning: ", logging.ERROR: "error: "}

    def __init__(self, command):
        super().__init__()
        self.command = command

    def emit(self, record):
        try:
            text = record.getMessage()
            if record.levelno >= NOTE:
                prefix = self.PREFIX.get(record.levelno, f"{record.levelname.lower()}: ")
                print(f"bonenet {self.command}: {prefix}{text}", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr if record.name == "bonenet.progress" else sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Python's warnings, through the console's one channel as one line; BONENET_DEBUG=1 adds the source."""
    where = f" ({filename}:{lineno}, {category.__name__})" if os.environ.get("BONENET_DEBUG") else ""
    CLI.warning(f"{_one_line(message)}{where}")


def _setup_logging(command, verbosity):
    """One console handler on the `bonenet` logger; -q shows problems only, -v adds debug lines. A command's
    own results and remarks always show."""
    logger = logging.getLogger("bonenet")
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler(command))
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    CLI.setLevel(logging.INFO)
    warnings.showwarning = _show_warning


def _cmd_make_synthetic(args):
    from bonenet.configs import SyntheticConfig
    from bonenet.data.synthetic import make_synthetic

    config = SyntheticConfig(**_config_values(args, SyntheticConfig))
    root = make_synthetic(args.out, config, overwrite=args.overwrite)
    _say(f"wrote {root}")


def _cmd_fracatlas_datalist(args):
    from bonenet.data.datalist import fracatlas_datalist

    table = fracatlas_datalist(args.fracatlas, args.out)
    counts = table.groupby(["part", "label"]).size()
    _say(f"wrote {args.out}: {len(table)} images, each its own study and patient (FracAtlas publishes no patient "
         "identifiers); " + ", ".join(f"{part} {'abnormal' if label else 'normal'} {n}"
                                     for (part, label), n in counts.items()))


def _cmd_data_summary(args):
    from bonenet.data.datalist import read_dataset
    from bonenet.data.mura import format_summary, summarize

    summary = summarize(read_dataset(args.data_root, verify=args.verify))
    _say(format_summary(summary))
    if args.json:
        _write_json(args.json, summary)


def _cmd_preprocess(args):
    from bonenet.configs import PreprocessConfig
    from bonenet.data.decode import load_gray
    from bonenet.evaluation.figures import image_title, preprocess_panel, save_figure

    config = PreprocessConfig(**_config_values(args, PreprocessConfig))
    try:
        fig = preprocess_panel(load_gray(args.image), config.recipe, config.image_size,
                               title=image_title(args.image), all_filters=config.all_filters)
    except ValueError as exc:
        raise CommandError(exc) from exc
    _say(f"wrote {save_figure(fig, args.out)}")


def _training_notes(args, config, origin):
    """What a user should know before a training starts: a backbone last-20 cannot learn much
    from, and what `--trainable-layers all` changes."""
    from bonenet.configs import TrainConfig

    if origin["kind"] not in ("imagenet", "radiograph") and config.trainable_layers == TrainConfig.trainable_layers:
        backbone = origin.get("description") or origin["kind"]
        # Notes are information, on standard output: standard error holds problems only.
        _say(f"note: the backbone is not ImageNet-pretrained ({backbone}), and the last {config.trainable_layers} "
             "layers alone learn little of real radiographs from it; deep fine-tuning (--trainable-layers all) is "
             "what learns real findings from such a backbone")
    if config.deep:
        _say("note: --trainable-layers all: the whole network fine-tunes in full mode (no shared trunk, so no "
             "trunk-feature cache; prepared images are cached in memory, or in --cache-dir)")
    if config.ensemble > 1:
        cost = ("K whole networks: about K times the training time, and K networks' passes at every prediction"
                if config.deep else "K heads on the one trunk cache: K times the head epochs, no more trunk passes")
        _say(f"note: --ensemble {config.ensemble}: each model is the mean of {config.ensemble} differently seeded "
             f"members ({cost.replace('K', str(config.ensemble))})")


def _cmd_train(args):
    from bonenet.configs import TrainConfig
    from bonenet.data.datalist import read_dataset
    from bonenet.models.efficientnet import resolve_weights
    from bonenet.training.distribute import is_chief
    from bonenet.training.train import train_all, train_model, unread_images

    config = TrainConfig(**_config_values(args, TrainConfig))
    _, origin = resolve_weights(config.weights)  # fail within seconds, before reading the data
    _training_notes(args, config, origin)
    index = read_dataset(args.data_root)
    if not index.skipped.empty:
        _note(args, f"{len(index.skipped)} file(s) skipped while reading the data; run data-summary to list them")
    if args.command == "train-all":
        entries, failures = train_all(index, args.models_dir, config, resume=args.resume)
        _print_skips(args, unread_images(entries.values()))
        _say(f"trained {', '.join(entries) or 'nothing'} into {args.models_dir}")
        if failures:
            raise CommandError(f"could not train {', '.join(failures)} (see messages above)")
        return
    target = "router" if args.command == "train-router" else args.part
    entry, _ = train_model(target, index, args.models_dir, config, resume=args.resume)
    _print_skips(args, unread_images([entry]))
    where = "saved" if is_chief(config.strategy) else "trained (the chief saves)"
    members = entry["members"]
    saved = (f"{Path(args.models_dir) / entry['file']}" if len(members) == 1 else
             f"{len(members)} members ({', '.join(m['file'] for m in members)}) in {args.models_dir}")
    _say(f"{where} {saved}; hold-out " + ", ".join(f"{k} {v:.4f}" for k, v in entry["holdout"].items()) +
         ("" if len(members) == 1 else " for their mean; each alone: " +
          "; ".join(", ".join(f"{k} {v:.4f}" for k, v in m["holdout"].items()) for m in members)))


def _cmd_evaluate(args):
    from bonenet.configs import EvaluateConfig
    from bonenet.evaluation.evaluate import evaluate_run

    config = EvaluateConfig(**_config_values(args, EvaluateConfig))
    if config.tta != "none":
        _note(args, f"test-time augmentation {config.tta}: the trunk runs twice per image (about twice the time)")
    metrics = evaluate_run(args.data_root, args.models_dir, args.out, config)
    _print_skips(args, metrics["source"]["skipped"])
    for message in metrics["source"]["messages"]:
        _note(args, message)
    overall = metrics["study"].get("overall", {})
    _say(f"router study accuracy {metrics['router']['study_accuracy']:.4f}; overall study kappa "
         f"{overall.get('kappa', float('nan')):.4f} on {overall.get('n', 0)} studies "
         f"({len(metrics['source']['parts_scored'])} part(s) scored)")
    _say(f"wrote {args.out}/metrics.json, study_predictions.csv, image_predictions.csv, skipped.csv and plots")


def _cmd_report(args):
    from bonenet.evaluation.report import run_reports

    for path in run_reports(args.eval_dir, args.out, parts=args.part):
        _say(f"wrote {path}")


def _cmd_serve(args):
    from bonenet.configs import ServeConfig
    from bonenet.serving.serve import serve

    serve(args.models_dir, ServeConfig(**_config_values(args, ServeConfig)))


def _predict_line(r):
    """One console line per `predict` result entry."""
    from bonenet.inference.inputs import mixed_parts_text

    if "error" in r:  # the error names the file itself; say the path once
        return f"{r['path']}: ERROR {r['error'].removeprefix(r['path'] + ': ')}"
    if "skipped" in r:
        return f"{r['path']}: skipped: {r['skipped']}"
    what = f"study {r['study']}" if "study" in r else r["path"]
    lines = []
    if r.get("mixed_parts"):
        lines.append(f"{what}: warning: its images disagree about the part ({mixed_parts_text(r['mixed_parts'])}); "
                     "are they one study? --per-image scores each image alone")
    if r["p_abnormal"] is None:
        lines.append(f"{what}: {r['part']} (router confidence {r['part_confidence']:.2f}), unscored: no model for it")
    else:
        verdict = "abnormal" if r["abnormal"] else "normal"
        lines.append(f"{what}: {r['part']} (router confidence {r['part_confidence']:.2f}) "
                     f"p(abnormal)={r['p_abnormal']:.3f} ({'' if r.get('calibrated') else 'not '}calibrated) -> {verdict} "
                     f"at threshold {r['threshold']:.3f} "
                     f"({r['threshold_source']})")
    return "\n".join(lines)


def _cmd_predict(args):
    from bonenet.configs import PredictConfig
    from bonenet.inference.inputs import predict_paths
    from bonenet.inference.notes import tta_note
    from bonenet.inference.predictor import BoneNet
    from bonenet.run.provenance import backbone_warning

    config = PredictConfig(**_config_values(args, PredictConfig))
    net = BoneNet.load(args.models_dir, threshold=config.threshold, tta=config.tta)
    if backbone_warning(net.manifest["weights"]):
        _note(args, f"warning: {backbone_warning(net.manifest['weights'])}")
    if tta_note(net.tta):
        _note(args, tta_note(net.tta))
    if len(net.parts) < len(PARTS):
        _note(args, f"this run covers {', '.join(net.parts)} only; every image is routed to one of them")
    results = predict_paths(net, args.paths, cam_dir=args.cam_dir, per_image=config.per_image)
    for r in results:
        _say(_predict_line(r))
    if args.json:
        _write_json(args.json, results)
    if args.csv:
        from bonenet.files import file_written_whole
        from bonenet.inference.inputs import results_table

        with file_written_whole(args.csv) as tmp:
            results_table(results).to_csv(tmp, index=False)
        _say(f"wrote {args.csv}")
    if args.dicom_out:
        _write_dicom_srs(args, net, results)
    failed = sum("error" in r for r in results)
    if failed:
        _note(args, f"{failed} input(s) could not be read")
        return 1
    return None


def _write_dicom_srs(args, net, results):
    try:
        from bonenet.serving.dicom_sr import closing_line, write_study_srs
    except ImportError as exc:
        raise CommandError(f"--dicom-out needs highdicom ({exc}): pip install \"bonenet[dicom]\"") from exc
    written, skipped = write_study_srs(results, args.dicom_out, f"BoneNet {Path(args.models_dir).resolve().name}")
    for study, why in skipped:
        _note(args, f"{study}: {why}")
    _say(closing_line(written, skipped, args.dicom_out))


def _cmd_export(args):
    from bonenet.serving.export import export_run

    try:
        artifact, facts = export_run(args.models_dir, args.format, args.out, force=args.force, tta=args.tta)
    except ImportError as exc:
        raise CommandError(str(exc)) from exc
    calibrated = [k for k, c in facts["calibration"].items() if c["applied_in_graph"]]
    _say(f"wrote {artifact} and {Path(args.out) / 'bonenet_export.json'}: input {facts['input']['shape'][1:]} "
         f"prepared images; outputs router_probs and p_abnormal for {', '.join(map(short_name, facts['outputs']['p_abnormal']['parts']))}"
         f"; calibrated: {', '.join(calibrated) or 'none'}")


def _cmd_pretrain_backbone(args):
    from bonenet.training.pretrain import PretrainConfig, pretrain_backbone, pretrain_on_real

    config = PretrainConfig(**_config_values(args, PretrainConfig))
    command = shlex.join(["bonenet", *args.argv])
    if args.real:
        provenance = pretrain_on_real(args.out, args.real, config, init=args.init, resume=args.resume, command=command)
        figures = ", ".join(f"{t} {a:.3f}" for t, a in provenance["monitor_auroc"].items() if a == a)
        _say(f"wrote {args.out} ({provenance['steps']} steps, {provenance['seconds']} s) from {provenance['images']:,} "
             f"real radiographs; AUROC on {provenance['monitor_images']} held-back images: {figures}; sha256 "
             f"{provenance['sha256'][:12]}…")
        return
    provenance = pretrain_backbone(args.out, config, data_dir=args.data_dir, resume=args.resume, command=command)
    accuracy = provenance["holdout_accuracy"]
    _say(f"wrote {args.out} ({provenance['steps']} steps, {provenance['seconds']} s); hold-out accuracy: joint "
         f"{accuracy['joint']:.3f}, part {accuracy['part']:.3f}, normal/abnormal {accuracy['abnormal']:.3f} "
         f"on {accuracy['images']} images; sha256 {provenance['sha256'][:12]}…")


def _cmd_demo(args):
    from bonenet.configs import DemoPlan
    from bonenet.demo import closing_text, run_demo

    summary = run_demo(args.out, quick=args.quick, **_config_values(args, DemoPlan))
    _print_skips(args, summary["skipped"])
    for message in summary["messages"]:
        _note(args, message)
    _say(closing_text(summary, args.out))


def add_config_flags(parser, config_class, plan_defaults=False):
    """Adds one `--flag` per config field; its default, help, range and choices come from the field.

    A True boolean becomes `--no-FIELD`. With `plan_defaults`, flags default to None so that only
    what the user typed overrides a plan (the demo's full or quick plan).
    """
    from bonenet.configs import MAX_TRAINABLE_LAYERS

    for field in dataclasses.fields(config_class):
        flag, default, meta = field.name.replace("_", "-"), field.default, field.metadata
        text = meta["help"] if default is None else f"{meta['help']} (default {default})"
        if isinstance(default, bool):
            parser.add_argument(f"--{'no-' if default else ''}{flag}", dest=field.name, default=default,
                                action="store_false" if default else "store_true",
                                help=f"do not {meta['help']}" if default else meta["help"])
            continue
        kind = _recipe if field.name == "recipe" else {int: int, float: float}.get(field.type, str)
        if meta.get("range") is not None:
            kind = _in_range(kind, meta["range"])
            text += f"; {meta['range']}"
        if field.name == "trainable_layers":
            kind = _all_or(kind, MAX_TRAINABLE_LAYERS)
            text += ", or all"
        parser.add_argument(f"--{flag}", type=kind, default=None if plan_defaults else default,
                            choices=meta.get("choices"), help=text)


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
    from bonenet.preprocessing.recipes import get_recipe

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
    from bonenet.files import json_safe, write_text_whole

    # allow_nan=False: a NaN that slipped past json_safe fails here instead of writing a file no reader parses.
    _say(f"wrote {write_text_whole(path, json.dumps(json_safe(payload), indent=2, allow_nan=False))}")


def _data_commands(sub, common):
    from bonenet.configs import PreprocessConfig, SyntheticConfig

    p = sub.add_parser("make-synthetic", parents=[common], help="write a synthetic MURA-v1.1-shaped dataset")
    p.add_argument("--out", required=True, help="folder to create MURA-v1.1/ in")
    add_config_flags(p, SyntheticConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/MURA-v1.1")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("fracatlas-datalist", parents=[common],
                       help="a datalist CSV of FracAtlas' hand and shoulder radiographs (CC BY 4.0) for training "
                            "and evaluating on real images")
    p.add_argument("--fracatlas", required=True, help="the FracAtlas folder (dataset.csv and images/)")
    p.add_argument("--out", required=True, help="datalist CSV to write (paths relative to its folder)")
    p.set_defaults(func=_cmd_fracatlas_datalist)

    p = sub.add_parser("data-summary", parents=[common], help="per part and split counts, and skipped files")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--verify", action="store_true",
                   help="decode every image fully (slow), not only its first and last bytes")
    p.set_defaults(func=_cmd_data_summary)

    p = sub.add_parser("preprocess", parents=[common],
                       help="a labelled figure of one image through each filter and the recipe")
    p.add_argument("image", help="a PNG, JPEG or DICOM radiograph")
    p.add_argument("--out", required=True, help="panel PNG to write")
    add_config_flags(p, PreprocessConfig)
    p.set_defaults(func=_cmd_preprocess)


def _training_commands(sub, common):
    from bonenet.configs import PretrainConfig, TrainConfig

    training = argparse.ArgumentParser(add_help=False, parents=[common])
    training.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    training.add_argument("--models-dir", required=True, help="run folder to write models and manifest.json into")
    add_config_flags(training, TrainConfig)
    training.add_argument("--resume", action="store_true", help="continue a killed run from its last completed epoch")
    training.set_defaults(func=_cmd_train)
    sub.add_parser("train-router", parents=[training], help="train the EfficientNetB0 body-part router")
    p = sub.add_parser("train-part", parents=[training],
                       help="train one part's abnormality model (the per-bone training)")
    p.add_argument("--part", required=True, type=_part, metavar="PART",
                   help=f"one of {', '.join(PART_CHOICES)} (or XR_ELBOW …, any case)")
    sub.add_parser("train-all", parents=[training], help="train the router, then the seven part models")

    p = sub.add_parser("pretrain-backbone", parents=[common],
                       help="train EfficientNetB0 end to end on synthetic radiographs, or with --real on open real "
                            "radiographs (how the shipped backbones were made; never ImageNet)")
    p.add_argument("--out", required=True, help="backbone .weights.h5 file to write; <name>.json beside it records "
                                                "its provenance")
    p.add_argument("--data-dir", help="where the synthetic pretraining data goes (default <name>-data beside --out)")
    p.add_argument("--real", nargs="+", metavar="SOURCE",
                   help="pretrain on real radiographs instead: FracAtlas folders (dataset.csv and images/; the "
                        "benchmark's held-out images are left out) or datalist CSVs")
    p.add_argument("--init", default="synthetic",
                   help="with --real, what to start from: synthetic (the shipped synthetic backbone), none, or a "
                        "backbone .weights.h5 (default synthetic)")
    add_config_flags(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue a killed pretraining from its last epoch")
    p.set_defaults(func=_cmd_pretrain_backbone)


def _reading_commands(sub, common):
    from bonenet.configs import TTA_CHOICES, TTA_HELP, EvaluateConfig, PredictConfig, ServeConfig

    p = sub.add_parser("evaluate", parents=[common],
                       help="score a run per image and per study, per part, against the baselines")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--out", required=True, help="folder for metrics.json, prediction CSVs, skipped.csv and plots")
    add_config_flags(p, EvaluateConfig)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", parents=[common],
                       help="run the report notebooks head-less: one HTML per part plus an overview")
    p.add_argument("--eval-dir", required=True, help="an evaluate --out folder")
    p.add_argument("--out", required=True, help="folder for the HTML reports")
    p.add_argument("--part", action="append", type=_part, metavar="PART",
                   help="render this part's page (repeatable); default every scored part. The overview is always made")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("predict", parents=[common],
                       help="part, p(abnormal) and decision for images, study folders or directories")
    p.add_argument("paths", nargs="+", help="PNG, JPEG or DICOM files, study folders or folders of studies")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--cam-dir", help="write a Grad-CAM overlay PNG per image here")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--csv", help="write the results as CSV here, one row per image, study or error")
    p.add_argument("--dicom-out", help="write a DICOM Structured Report per study read from DICOM files here "
                                       "(needs bonenet[dicom]); not for diagnostic use")
    add_config_flags(p, PredictConfig)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", parents=[common],
                       help="a run as one SavedModel, ONNX or LiteRT artifact for serving runtimes, with a JSON of "
                            "what a runtime needs (needs bonenet[export] for onnx and litert)")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--format", required=True, choices=["savedmodel", "onnx", "litert"])
    p.add_argument("--out", required=True, help="folder for the artifact and bonenet_export.json; an earlier export "
                                                "there is replaced whole, a folder of other files refused")
    p.add_argument("--force", action="store_true", help="replace --out even when it holds files BoneNet did not write")
    p.add_argument("--tta", default="none", choices=TTA_CHOICES, help=TTA_HELP + "; in the graph")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", parents=[common],
                       help="a web page and an HTTP API (POST /api/predict, GET /api/health) for reading a study")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    add_config_flags(p, ServeConfig)
    p.set_defaults(func=_cmd_serve)


def build_parser():
    """Returns the argparse parser for every subcommand."""
    from bonenet import __version__
    from bonenet.configs import DemoPlan

    parser = argparse.ArgumentParser(prog="bonenet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bonenet {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug lines)")
    common.add_argument("-q", "--quiet", action="count", default=0, help="problems and results only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _data_commands(sub, common)
    _training_commands(sub, common)
    _reading_commands(sub, common)
    p = sub.add_parser("demo", parents=[common], help="the whole chain on built-in synthetic data, offline, on a "
                                                      "CPU, with the shipped synthetic-pretrained backbone")
    p.add_argument("--out", default="demo_output", help="folder for everything the demo writes (default demo_output)")
    p.add_argument("--quick", action="store_true", help="a smoke run of under 2 minutes (tiny data, one epoch)")
    add_config_flags(p, DemoPlan, plan_defaults=True)
    p.set_defaults(func=_cmd_demo)
    return parser


OUTPUTS = {"make-synthetic": ["out"], "fracatlas-datalist": ["out"], "data-summary": ["json"], "preprocess": ["out"], "train-router": ["models_dir"],
           "train-part": ["models_dir"], "train-all": ["models_dir"], "evaluate": ["out"], "report": ["out"],
           "predict": ["json", "csv", "cam_dir", "dicom_out"], "pretrain-backbone": ["out"], "demo": ["out"],
           "export": ["out"]}

# Subcommands that run TensorFlow: it is started once, quietly, before any of them imports it.
TF_COMMANDS = {"train-router", "train-part", "train-all", "evaluate", "predict", "pretrain-backbone", "demo", "serve",
               "export"}


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    _setup_logging(args.command, args.verbose - args.quiet)
    try:
        from bonenet.files import check_writable

        for name in OUTPUTS.get(args.command, []):
            if getattr(args, name, None):
                check_writable(getattr(args, name))
    except OSError as exc:
        CLI.error(_one_line(exc))
        return 2
    if args.command in TF_COMMANDS:
        from bonenet import runtime

        if threading.current_thread() is threading.main_thread():
            runtime.catch_interrupts()
        try:
            runtime.start(getattr(args, "precision", "auto"))
        except ValueError as exc:
            CLI.error(_one_line(exc))
            return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, as SIGTERM gives, and how to go on
        if os.environ.get("BONENET_DEBUG"):
            raise
        resume = (" (training keeps its last completed epoch: run the same command with --resume)"
                  if hasattr(args, "resume") else "")
        _note(args, f"interrupted{resume}")
        return 130
    except (CommandError, ValueError, OSError, RuntimeError) as exc:
        # Bad input and known failures become one line (ValueError covers MuraError, ImageReadError,
        # ManifestError; OSError an unwritable, full or missing path, which its text names);
        # BONENET_DEBUG=1 shows the traceback.
        if os.environ.get("BONENET_DEBUG"):
            raise
        CLI.error(_one_line(exc) if str(exc).strip() else _unexpected(args, exc))
        return 2
    except Exception as exc:  # a fault BoneNet did not foresee: still one line, saying where it happened
        if os.environ.get("BONENET_DEBUG"):
            raise
        CLI.error(_unexpected(args, exc))
        return 1
    return 0 if result is None else int(result)


def _one_line(exc, limit=500):
    # Some library errors carry whole tensors in their text; the user gets the first line.
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0] if len(lines[0]) <= limit else lines[0][:limit] + "…"
    return text + (" (…)" if len(lines) > 1 else "")


# The arguments that name what a command works on, as an unexpected error's line words them.
SUBJECTS = (("models_dir", "run"), ("data_root", "data"), ("eval_dir", "evaluation"), ("image", "image"),
            ("paths", "input"))


def _unexpected(args, exc):
    """One line for an exception BoneNet did not foresee: the command, the run, data or files it worked on, the
    BoneNet function it was in, and the exception with its message."""
    subjects = []
    for name, word in SUBJECTS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else f"{value[0]} and {len(value) - 1} more"
        if value:
            subjects.append(f"{word} {value}")
    frames = [(frame.f_globals["__name__"], frame.f_code.co_name, line)
              for frame, line in traceback.walk_tb(exc.__traceback__)
              if frame.f_globals.get("__name__", "").startswith("bonenet")]
    where = f" in {frames[-1][0]}.{frames[-1][1]} (line {frames[-1][2]})" if frames else ""
    detail = f"{type(exc).__name__}: {_one_line(exc)}" if str(exc).strip() else f"{type(exc).__name__} (no message)"
    on = f" of {', '.join(subjects)}" if subjects else ""
    return f"{args.command}{on} failed{where}: {detail} (unexpected: BONENET_DEBUG=1 shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
