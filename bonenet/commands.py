"""The commands behind `run_pipeline.py` (`bonenet`): each takes the parsed arguments, calls the library and
says its result on the console (`bonenet.console`). Heavy imports (TensorFlow) happen inside the commands that
need them, so `--help` stays fast; `run_pipeline.py` only builds the parser and runs a command.
"""

import json
import shlex
from pathlib import Path

from bonenet.console import note, say
from bonenet.flags import config_values
from bonenet.parts import PARTS, short_name


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


def _print_skips(skips):
    """Each file a command could not use (`bonenet.data.read.Skip`, or its dict), once, with its reason."""
    from bonenet.data.read import Skip

    for skip in skips:
        skip = Skip(**skip) if isinstance(skip, dict) else skip
        note(f"skipped {skip}")


def cmd_make_synthetic(args):
    """`make-synthetic`: see `run_pipeline.py --help`."""
    from bonenet.configs import SyntheticConfig
    from bonenet.data.synthetic import make_synthetic

    config = SyntheticConfig(**config_values(args, SyntheticConfig))
    root = make_synthetic(args.out, config, overwrite=args.overwrite)
    say(f"wrote {root}")


def cmd_fracatlas_datalist(args):
    """`fracatlas-datalist`: see `run_pipeline.py --help`."""
    from bonenet.data.datalist import fracatlas_datalist

    table = fracatlas_datalist(args.fracatlas, args.out)
    counts = table.groupby(["part", "label"]).size()
    say(f"wrote {args.out}: {len(table)} images, each its own study and patient (FracAtlas publishes no patient "
         "identifiers); " + ", ".join(f"{part} {'abnormal' if label else 'normal'} {n}"
                                     for (part, label), n in counts.items()))


def cmd_data_summary(args):
    """`data-summary`: see `run_pipeline.py --help`."""
    from bonenet.data.datalist import read_dataset
    from bonenet.data.mura import format_summary, summarize

    summary = summarize(read_dataset(args.data_root, verify=args.verify))
    say(format_summary(summary))
    if args.json:
        _write_json(args.json, summary)


def cmd_preprocess(args):
    """`preprocess`: see `run_pipeline.py --help`."""
    from bonenet.configs import PreprocessConfig
    from bonenet.data.decode import load_gray
    from bonenet.evaluation.figures import image_title, preprocess_panel, save_figure

    config = PreprocessConfig(**config_values(args, PreprocessConfig))
    try:
        fig = preprocess_panel(load_gray(args.image), config.recipe, config.image_size,
                               title=image_title(args.image), all_filters=config.all_filters)
    except ValueError as exc:
        raise CommandError(exc) from exc
    say(f"wrote {save_figure(fig, args.out)}")


def _training_notes(config, origin):
    """What a user should know before a training starts: a frozen trunk that last-20 cannot learn much from,
    what trunk adaptation and `--trainable-layers all` do."""
    from bonenet.configs import DEFAULT_TRAINABLE_LAYERS, OFFLINE_FLAGS

    if origin["kind"] != "imagenet" and not config.adapt_epochs and config.trainable_layers == DEFAULT_TRAINABLE_LAYERS:
        backbone = origin.get("description") or origin["kind"]
        note(f"the backbone is not ImageNet-pretrained ({backbone}), and on its frozen trunk the last "
             f"{config.trainable_layers} layers learn little of real radiographs; adapt the trunk on this collection first ({OFFLINE_FLAGS}: the offline "
             "recipe that measured best on the transfer yardstick, BENCHMARKS.md)")
    if config.adapt_epochs:
        note(f"--adapt-epochs {config.adapt_epochs}: the whole trunk first learns from every fit image of the "
             "collection (abnormal and body part at once), then the router and the part heads train on it, frozen")
    if config.deep:
        note("--trainable-layers all: the whole network fine-tunes in full mode (no shared trunk, so no "
             "trunk-feature cache; prepared images are cached in memory, or in --cache-dir)")
    if config.ensemble > 1:
        cost = ("K whole networks: about K times the training time, and K networks' passes at every prediction"
                if config.deep else "K heads on the one trunk cache: K times the head epochs, no more trunk passes")
        note(f"--ensemble {config.ensemble}: each model is the mean of {config.ensemble} differently seeded "
             f"members ({cost.replace('K', str(config.ensemble))})")


def cmd_train(args):
    """`train-router`, `train-part` and `train-all`: see `run_pipeline.py --help`."""
    from bonenet.configs import TrainConfig
    from bonenet.data.datalist import read_dataset
    from bonenet.models.efficientnet import resolve_weights
    from bonenet.training.distribute import is_chief
    from bonenet.training.train import train_all, train_model, unread_images

    config = TrainConfig(**config_values(args, TrainConfig))
    _, origin = resolve_weights(config.weights)  # fail within seconds, before reading the data
    _training_notes(config, origin)
    index = read_dataset(args.data_root)
    if not index.skipped.empty:
        note(f"{len(index.skipped)} file(s) skipped while reading the data; run data-summary to list them")
    if args.command == "train-all":
        entries, failures = train_all(index, args.models_dir, config, resume=args.resume)
        _print_skips(unread_images(entries.values()))
        say(f"trained {', '.join(entries) or 'nothing'} into {args.models_dir}")
        if failures:
            raise CommandError(f"could not train {', '.join(failures)} (see messages above)")
        return
    target = "router" if args.command == "train-router" else args.part
    entry, _ = train_model(target, index, args.models_dir, config, resume=args.resume)
    _print_skips(unread_images([entry]))
    where = "saved" if is_chief(config.strategy) else "trained (the chief saves)"
    members = entry.members
    saved = (f"{Path(args.models_dir) / entry.file}" if len(members) == 1 else
             f"{len(members)} members ({', '.join(m['file'] for m in members)}) in {args.models_dir}")
    say(f"{where} {saved}; hold-out " + ", ".join(f"{k} {v:.4f}" for k, v in entry.holdout.items()) +
         ("" if len(members) == 1 else " for their mean; each alone: " +
          "; ".join(", ".join(f"{k} {v:.4f}" for k, v in m["holdout"].items()) for m in members)))


def cmd_evaluate(args):
    """`evaluate`: see `run_pipeline.py --help`."""
    from bonenet.configs import EvaluateConfig
    from bonenet.evaluation.evaluate import evaluate_run

    config = EvaluateConfig(**config_values(args, EvaluateConfig))
    if config.tta != "none":
        note(f"test-time augmentation {config.tta}: the trunk runs twice per image (about twice the time)")
    metrics = evaluate_run(args.data_root, args.models_dir, args.out, config)
    _print_skips(metrics["source"]["skipped"])
    for message in metrics["source"]["messages"]:
        note(message)
    overall = metrics["study"].get("overall", {})
    say(f"router study accuracy {metrics['router']['study_accuracy']:.4f}; overall study kappa "
         f"{overall.get('kappa', float('nan')):.4f} on {overall.get('n', 0)} studies "
         f"({len(metrics['source']['parts_scored'])} part(s) scored)")
    say(f"wrote {args.out}/metrics.json, study_predictions.csv, image_predictions.csv, skipped.csv and plots")


def cmd_report(args):
    """`report`: see `run_pipeline.py --help`."""
    from bonenet.evaluation.report import run_reports

    for path in run_reports(args.eval_dir, args.out, parts=args.part):
        say(f"wrote {path}")


def cmd_serve(args):
    """`serve`: see `run_pipeline.py --help`."""
    from bonenet.configs import ServeConfig
    from bonenet.serving.serve import serve

    serve(args.models_dir, ServeConfig(**config_values(args, ServeConfig)))


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


def cmd_predict(args):
    """`predict`: see `run_pipeline.py --help`."""
    from bonenet.configs import PredictConfig
    from bonenet.inference.inputs import predict_paths
    from bonenet.inference.notes import tta_note
    from bonenet.inference.predictor import BoneNet
    from bonenet.run.provenance import backbone_warning

    config = PredictConfig(**config_values(args, PredictConfig))
    net = BoneNet.load(args.models_dir, threshold=config.threshold, tta=config.tta, explain=config.explain)
    if backbone_warning(net.manifest.weights):
        note(f"warning: {backbone_warning(net.manifest.weights)}")
    if tta_note(net.tta):
        note(tta_note(net.tta))
    if len(net.parts) < len(PARTS):
        note(f"this run covers {', '.join(net.parts)} only; every image is routed to one of them")
    results = predict_paths(net, args.paths, cam_dir=args.cam_dir, per_image=config.per_image)
    for r in results:
        say(_predict_line(r))
    if args.json:
        _write_json(args.json, results)
    if args.csv:
        from bonenet.files import file_written_whole
        from bonenet.inference.inputs import results_table

        with file_written_whole(args.csv) as tmp:
            results_table(results).to_csv(tmp, index=False)
        say(f"wrote {args.csv}")
    if args.dicom_out:
        _write_dicom_srs(args, results)
    failed = sum("error" in r for r in results)
    if failed:
        note(f"{failed} input(s) could not be read")
        return 1
    return None


def _write_dicom_srs(args, results):
    try:
        from bonenet.serving.dicom_sr import closing_line, write_study_srs
    except ImportError as exc:
        raise CommandError(f"--dicom-out needs highdicom ({exc}): pip install \"bonenet[dicom]\"") from exc
    written, skipped = write_study_srs(results, args.dicom_out, f"BoneNet {Path(args.models_dir).resolve().name}")
    for study, why in skipped:
        note(f"{study}: {why}")
    say(closing_line(written, skipped, args.dicom_out))


def cmd_export(args):
    """`export`: see `run_pipeline.py --help`."""
    from bonenet.configs import ExportConfig
    from bonenet.serving.export import export_run

    try:
        artifact, facts = export_run(args.models_dir, args.format, args.out, force=args.force,
                                     config=ExportConfig(**config_values(args, ExportConfig)))
    except ImportError as exc:
        raise CommandError(str(exc)) from exc
    calibrated = [k for k, c in facts["calibration"].items() if c["applied_in_graph"]]
    say(f"wrote {artifact} and {Path(args.out) / 'bonenet_export.json'}: input {facts['input']['shape'][1:]} "
         f"prepared images; outputs router_probs and p_abnormal for {', '.join(map(short_name, facts['outputs']['p_abnormal']['parts']))}"
         f"; calibrated: {', '.join(calibrated) or 'none'}; fracture locator: "
         f"{facts['locator'].get('artifact') or 'not carried (--locator carries it)'}")


def cmd_pretrain_backbone(args):
    """`pretrain-backbone`: see `run_pipeline.py --help`."""
    from bonenet.training.pretrain import PretrainConfig, pretrain_backbone, pretrain_on_real

    config = PretrainConfig(**config_values(args, PretrainConfig))
    command = shlex.join(["bonenet", *args.argv])
    if config.leave_out and not args.real:
        raise CommandError("--leave-out chooses FracAtlas regions to leave out of --real pretraining; add --real")
    if args.real:
        provenance = pretrain_on_real(args.out, args.real, config, init=args.init, resume=args.resume, command=command)
        figures = [f"{t} AUROC {a:.3f}" for t, a in provenance.get("monitor_auroc", {}).items() if a == a]
        if "monitor_views_found" in provenance:
            figures.append(f"views finding their partner {provenance['monitor_views_found']:.3f}")
        say(f"wrote {args.out} ({provenance['steps']} steps, {provenance['seconds']} s) from {provenance['images']:,} "
             f"real radiographs; on {provenance['monitor_images']} held-back images: {', '.join(figures)}; sha256 "
             f"{provenance['sha256'][:12]}…")
        return
    provenance = pretrain_backbone(args.out, config, data_dir=args.data_dir, resume=args.resume, command=command)
    accuracy = provenance["holdout_accuracy"]
    say(f"wrote {args.out} ({provenance['steps']} steps, {provenance['seconds']} s); hold-out accuracy: joint "
         f"{accuracy['joint']:.3f}, part {accuracy['part']:.3f}, normal/abnormal {accuracy['abnormal']:.3f} "
         f"on {accuracy['images']} images; sha256 {provenance['sha256'][:12]}…")


def cmd_demo(args):
    """`demo`: see `run_pipeline.py --help`."""
    from bonenet.configs import DemoPlan
    from bonenet.demo import closing_text, run_demo

    summary = run_demo(args.out, quick=args.quick, **config_values(args, DemoPlan))
    _print_skips(summary["skipped"])
    for message in summary["messages"]:
        note(message)
    say(closing_text(summary, args.out))


def _write_json(path, payload):
    from bonenet.files import json_safe, write_text_whole

    # allow_nan=False: a NaN that slipped past json_safe fails here instead of writing a file no reader parses.
    say(f"wrote {write_text_whole(path, json.dumps(json_safe(payload), indent=2, allow_nan=False))}")


def cmd_train_locator(args):
    """`train-locator`: see `run_pipeline.py --help`."""
    from bonenet.configs import LocatorConfig
    from bonenet.scoring.metrics import figure_text, with_interval
    from bonenet.training.fit_locator import drawn_text, train_locator

    config = LocatorConfig(**config_values(args, LocatorConfig))
    provenance = train_locator(args.out, args.fracatlas, config, resume=args.resume,
                               command=shlex.join(["bonenet", *args.argv]))
    for group, figures in provenance["held_out"].items():
        game, found = figures["pointing"], figures["detector"]
        say(f"held-out {group}: pointing game {with_interval(game['hit'], game['hit_ci95'])} on {game['images']} "
            f"fractured films (the image's centre {with_interval(game['centre'], game['centre_ci95'])}, a random "
            f"point {figure_text(game['random'])}); sensitivity at 1 false box per image "
            f"{with_interval(found['sensitivity_at_1fp'], found['sensitivity_at_1fp_ci95'])}; AP@50 "
            f"{with_interval(found['ap50'], found['ap50_ci95'])}; {drawn_text(figures['drawn'])}")
    say(f"wrote {args.out} ({provenance['seconds']} s; box threshold {provenance['threshold']:.2f}, candidate floor "
        f"{provenance['candidate_floor']:.2f}); sha256 {provenance['sha256'][:12]}…")

