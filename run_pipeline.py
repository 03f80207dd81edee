"""BoneNet command line: `python run_pipeline.py SUBCOMMAND --help` (also installed as `bonenet`).

This file only parses arguments and calls library functions; heavy imports (TensorFlow) happen
inside the subcommands that need them, so `--help` stays fast.
"""

import argparse
import json
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
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from bonenet.imageio import ImageReadError
    from bonenet.mura import MuraError

    try:
        result = args.func(args)
    except (CommandError, MuraError, ImageReadError, FileNotFoundError) as exc:
        print(f"bonenet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
