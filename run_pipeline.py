"""BoneNet command line: `python run_pipeline.py SUBCOMMAND --help` (also installed as `bonenet`).

This file only parses arguments and calls library functions; heavy imports (TensorFlow) happen
inside the subcommands that need them, so `--help` stays fast.
"""

import argparse
import os
import sys
import threading
import traceback

from bonenet import commands
from bonenet.console import CLI, note, one_line, setup_console
from bonenet.flags import add_config_flags, part_type
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


def _data_commands(sub, common):
    from bonenet.configs import PreprocessConfig, SyntheticConfig

    p = sub.add_parser("make-synthetic", parents=[common], help="write a synthetic MURA-v1.1-shaped dataset")
    p.add_argument("--out", required=True, help="folder to create MURA-v1.1/ in")
    add_config_flags(p, SyntheticConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/MURA-v1.1")
    p.set_defaults(func=commands.cmd_make_synthetic)

    p = sub.add_parser("fracatlas-datalist", parents=[common],
                       help="a datalist CSV of FracAtlas' hand and shoulder radiographs (CC BY 4.0) for training "
                            "and evaluating on real images")
    p.add_argument("--fracatlas", required=True, help="the FracAtlas folder (dataset.csv and images/)")
    p.add_argument("--out", required=True, help="datalist CSV to write (paths relative to its folder)")
    p.set_defaults(func=commands.cmd_fracatlas_datalist)

    p = sub.add_parser("data-summary", parents=[common], help="per part and split counts, and skipped files")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--json", help="also write the summary as JSON here")
    p.add_argument("--verify", action="store_true",
                   help="decode every image fully (slow), not only its first and last bytes")
    p.set_defaults(func=commands.cmd_data_summary)

    p = sub.add_parser("preprocess", parents=[common],
                       help="a labelled figure of one image through each filter and the recipe")
    p.add_argument("image", help="a PNG, JPEG or DICOM radiograph")
    p.add_argument("--out", required=True, help="panel PNG to write")
    add_config_flags(p, PreprocessConfig)
    p.set_defaults(func=commands.cmd_preprocess)


def _training_commands(sub, common):
    from bonenet.configs import LocatorConfig, PretrainConfig, TrainConfig

    training = argparse.ArgumentParser(add_help=False, parents=[common])
    training.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    training.add_argument("--models-dir", required=True, help="run folder to write models and manifest.json into")
    add_config_flags(training, TrainConfig)
    training.add_argument("--resume", action="store_true", help="continue a killed run from its last completed epoch")
    training.set_defaults(func=commands.cmd_train)
    sub.add_parser("train-router", parents=[training], help="train the EfficientNetB0 body-part router")
    p = sub.add_parser("train-part", parents=[training],
                       help="train one part's abnormality model (the per-bone training)")
    p.add_argument("--part", required=True, type=part_type, metavar="PART",
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
                        "benchmark's held-out images are left out), datalist CSVs, or folders of images without "
                        "labels (for --objective contrastive or both)")
    p.add_argument("--init", default="synthetic",
                   help="with --real, what to start from: synthetic (the shipped synthetic backbone), none, or a "
                        "backbone .weights.h5 (default synthetic)")
    add_config_flags(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue a killed pretraining from its last epoch")
    p.set_defaults(func=commands.cmd_pretrain_backbone)

    p = sub.add_parser("train-locator", parents=[common],
                       help="train the fracture locator on FracAtlas' outlined fractures (how the shipped one was "
                            "made) and score it on the benchmark's held-out films")
    p.add_argument("--fracatlas", required=True, help="FracAtlas folder (dataset.csv, images/, "
                                                      "fracture_annotations_coco.json)")
    p.add_argument("--out", required=True, help="locator .weights.h5 file to write; <name>.json beside it records "
                                                "its provenance, threshold and held-out figures")
    add_config_flags(p, LocatorConfig)
    p.add_argument("--resume", action="store_true", help="continue a killed training from its cache and last epoch")
    p.set_defaults(func=commands.cmd_train_locator)


def _reading_commands(sub, common):
    from bonenet.configs import EvaluateConfig, ExportConfig, PredictConfig, ServeConfig

    p = sub.add_parser("evaluate", parents=[common],
                       help="score a run per image and per study, per part, against the baselines")
    p.add_argument("--data-root", required=True, help=DATA_ROOT_HELP)
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--out", required=True, help="folder for metrics.json, prediction CSVs, skipped.csv and plots")
    add_config_flags(p, EvaluateConfig)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("report", parents=[common],
                       help="run the report notebooks head-less: one HTML per part plus an overview")
    p.add_argument("--eval-dir", required=True, help="an evaluate --out folder")
    p.add_argument("--out", required=True, help="folder for the HTML reports")
    p.add_argument("--part", action="append", type=part_type, metavar="PART",
                   help="render this part's page (repeatable); default every scored part. The overview is always made")
    p.set_defaults(func=commands.cmd_report)

    p = sub.add_parser("predict", parents=[common],
                       help="part, p(abnormal) and decision for images, study folders or directories")
    p.add_argument("paths", nargs="+", help="PNG, JPEG or DICOM files, study folders or folders of studies")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--cam-dir", help="write a heat map PNG per image here (--explain says which)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--csv", help="write the results as CSV here, one row per image, study or error")
    p.add_argument("--dicom-out", help="write a DICOM Structured Report per study read from DICOM files here "
                                       "(needs bonenet[dicom]); not for diagnostic use")
    add_config_flags(p, PredictConfig)
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("export", parents=[common],
                       help="a run as one SavedModel, ONNX or LiteRT artifact for serving runtimes, with a JSON of "
                            "what a runtime needs (needs bonenet[export] for onnx and litert)")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    p.add_argument("--format", required=True, choices=["savedmodel", "onnx", "litert"])
    p.add_argument("--out", required=True, help="folder for the artifact and bonenet_export.json; an earlier export "
                                                "there is replaced whole, a folder of other files refused")
    p.add_argument("--force", action="store_true", help="replace --out even when it holds files BoneNet did not write")
    add_config_flags(p, ExportConfig)
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("serve", parents=[common],
                       help="a web page and an HTTP API (POST /api/predict, GET /api/health) for reading a study")
    p.add_argument("--models-dir", required=True, help="a run folder with manifest.json")
    add_config_flags(p, ServeConfig)
    p.set_defaults(func=commands.cmd_serve)


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
    p.set_defaults(func=commands.cmd_demo)
    return parser


OUTPUTS = {"make-synthetic": ["out"], "fracatlas-datalist": ["out"], "data-summary": ["json"], "preprocess": ["out"], "train-router": ["models_dir"],
           "train-part": ["models_dir"], "train-all": ["models_dir"], "evaluate": ["out"], "report": ["out"],
           "predict": ["json", "csv", "cam_dir", "dicom_out"], "pretrain-backbone": ["out"], "train-locator": ["out"], "demo": ["out"],
           "export": ["out"]}

# Subcommands that run TensorFlow: it is started once, quietly, before any of them imports it.
TF_COMMANDS = {"train-router", "train-part", "train-all", "evaluate", "predict", "pretrain-backbone", "train-locator", "demo", "serve",
               "export"}


def main(argv=None):
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    setup_console(args.command, args.verbose - args.quiet)
    try:
        from bonenet.files import check_writable

        for name in OUTPUTS.get(args.command, []):
            if getattr(args, name, None):
                check_writable(getattr(args, name))
    except OSError as exc:
        CLI.error(one_line(exc))
        return 2
    if args.command in TF_COMMANDS:
        from bonenet import runtime

        if threading.current_thread() is threading.main_thread():
            runtime.catch_interrupts()
        try:
            runtime.start(getattr(args, "precision", "auto"))
        except ValueError as exc:
            CLI.error(one_line(exc))
            return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, as SIGTERM gives, and how to go on
        if os.environ.get("BONENET_DEBUG"):
            raise
        resume = (" (training keeps its last completed epoch: run the same command with --resume)"
                  if hasattr(args, "resume") else "")
        note(f"interrupted{resume}")
        return 130
    except (commands.CommandError, ValueError, OSError, RuntimeError) as exc:
        # Bad input and known failures become one line (ValueError covers MuraError, ImageReadError,
        # ManifestError; OSError an unwritable, full or missing path, which its text names);
        # BONENET_DEBUG=1 shows the traceback.
        if os.environ.get("BONENET_DEBUG"):
            raise
        CLI.error(one_line(exc) if str(exc).strip() else _unexpected(args, exc))
        return 2
    except Exception as exc:  # a fault BoneNet did not foresee: still one line, saying where it happened
        if os.environ.get("BONENET_DEBUG"):
            raise
        CLI.error(_unexpected(args, exc))
        return 1
    return 0 if result is None else int(result)


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
    detail = f"{type(exc).__name__}: {one_line(exc)}" if str(exc).strip() else f"{type(exc).__name__} (no message)"
    on = f" of {', '.join(subjects)}" if subjects else ""
    return f"{args.command}{on} failed{where}: {detail} (unexpected: BONENET_DEBUG=1 shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
