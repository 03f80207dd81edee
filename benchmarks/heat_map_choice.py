"""Which heat map points at fractures: every candidate's pointing game on a FracAtlas fold, side by side.

    python benchmarks/heat_map_choice.py --bench fracatlas_bench [--split train] [--part XR_HAND]

`--bench` is a `benchmarks/real_radiographs.py --out` folder (its `run/` and `fracatlas.csv`). The
candidates (layer × method, and the same with the map kept to the radiograph's foreground) are scored
on the fractured images of `--split` that have fracture boxes, whatever the model decided for them:
the choice is made on the **train** fold (the default), and only the chosen method is reported on the
held-out fold, by `real_radiographs.py`. It prints one Markdown table and writes
`<bench>/heat_map_choice_<split>.json`.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"
# (layer, side at 96 px): the trunk's block outputs from fine to coarse, and the head's last convolution.
LAYERS = ("block2b_add", "block3b_add", "block4c_add", "block5c_add", "block6c_add", "top_activation")
METHODS = ("gradcam", "hirescam")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", required=True, help="a real_radiographs.py --out folder (run/, fracatlas.csv)")
    p.add_argument("--fracatlas", default=str(DEFAULT_FRACATLAS), help="FracAtlas folder (dataset.csv, boxes)")
    p.add_argument("--split", default="train", choices=("train", "valid"), help="fold to score (default train)")
    p.add_argument("--part", default="XR_HAND", help="part model to explain (default XR_HAND)")
    p.add_argument("--layers", default=",".join(LAYERS), help="comma-separated layers to try")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    return p.parse_args(argv)


def fractured_images(bench, root, split, part):
    """The fold's fractured images of `part` that have fracture boxes, and {name: boxes}."""
    import pandas as pd

    from bonenet.data.datalist import read_dataset
    from bonenet.data.fractures import fracatlas_boxes

    index = read_dataset(Path(bench) / "fracatlas.csv")
    table = pd.read_csv(Path(root) / "dataset.csv").set_index("image_id")
    boxes = fracatlas_boxes(root)
    rows = index.images[(index.images["split"] == split) & (index.images["part"] == part)]
    return [p for p in rows["path"] if Path(p).name in boxes and table.loc[Path(p).name, "fractured"] == 1], boxes


def candidates(layers):
    """(name, layer, method, keep to foreground) of every candidate."""
    return [(f"{method} {layer}{' fg' if fg else ''}", layer, method, fg)
            for layer in layers for method in METHODS for fg in (False, True)]


def score(net, part, paths, boxes, layers, n_boot):
    """{candidate name: pointing game} over `paths`: every candidate's map of an image from one pass each through
    the trunk's layers and the heads' (`BoneNet.cams`)."""
    from bonenet.data.read import read_gray
    from bonenet.inference.gradcam import keep_foreground
    from bonenet.inference.heatmap import part_cams
    from bonenet.scoring.localisation import image_pointing, pointing_game

    rows = {name: [] for name, *_ in candidates(layers)}
    for path in paths:
        gray = read_gray(path)
        for (layer, method), cam in part_cams(net, part, gray, layers, METHODS).items():
            for fg in (False, True):
                rows[f"{method} {layer}{' fg' if fg else ''}"].append(
                    image_pointing(keep_foreground(cam, gray) if fg else cam, boxes[Path(path).name]))
    return {name: pointing_game(r, n_boot) for name, r in rows.items()}


def table(games):
    """The candidates as Markdown rows, best hit rate first."""
    def ci(pair):
        return f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    lines = ["| candidate | hits [95% CI] | random point | centre | energy in boxes |", "|---|---|---|---|---|"]
    for name, g in sorted(games.items(), key=lambda kv: -kv[1]["hit"]):
        lines.append(f"| {name} | {g['hit']:.3f} {ci(g['hit_ci95'])} | {g['random']:.3f} | {g['centre']:.3f} "
                     f"{ci(g['centre_ci95'])} | {g['energy']:.3f} {ci(g['energy_ci95'])} |")
    return "\n".join(lines)


def main(argv=None):
    """Scores every candidate, prints the table and writes the JSON."""
    args = parse_args(argv)
    from bonenet import runtime

    runtime.start()
    from bonenet.inference.predictor import BoneNet

    net = BoneNet.load(Path(args.bench) / "run")
    paths, boxes = fractured_images(args.bench, args.fracatlas, args.split, args.part)
    games = score(net, args.part, paths, boxes, args.layers.split(","), args.bootstrap)
    out = Path(args.bench) / f"heat_map_choice_{args.split}.json"
    out.write_text(json.dumps({"split": args.split, "part": args.part, "images": len(paths), "games": games}, indent=2))
    print(f"{len(paths)} fractured {args.part} images with boxes, {args.split} fold")
    print(table(games))
    return games


if __name__ == "__main__":
    main()
