"""Figures for people: the preprocessing panel (more plots live with evaluation)."""

import matplotlib.pyplot as plt

from bonenet.configs import IMAGE_SIZE
from bonenet.preprocessing import filters
from bonenet.preprocessing.recipes import DEFAULT_RECIPE, get_recipe


def image_title(path):
    """A figure title from an image path: part · patient · study · image for MURA paths, else the file name."""
    from pathlib import Path

    parts = Path(path).parts
    for k, piece in enumerate(parts[:-3]):
        if piece.upper().startswith("XR_") and parts[k + 1].startswith("patient"):
            study = parts[k + 2].replace("_", " (", 1) + ")" if "_" in parts[k + 2] else parts[k + 2]
            return f"{piece[3:].lower()} · {parts[k + 1]} · {study} · {Path(parts[-1]).stem}"
    return Path(path).name


def preprocess_panel(image, recipe=DEFAULT_RECIPE, size=IMAGE_SIZE, title=None, all_filters=False):
    """Draws a labelled grid: the original with its ROI box, the recipe's own steps, and the model input.

    Args:
        image: uint8 H×W radiograph.
        recipe: recipe name, file or `Recipe` for the final input. Defaults to "equalize".
        size: model input side. Defaults to 224.
        title: figure title (see `image_title`). Defaults to none.
        all_filters: also show every filter of the preprocessing stage (the full gallery).
            Defaults to False.

    Returns:
        A matplotlib Figure.
    """
    from matplotlib.patches import Rectangle

    image = filters.check_image(image)
    recipe = get_recipe(recipe)
    h, w = image.shape
    top, bottom, left, right = filters.roi_box(image) if recipe.roi else (0, h, 0, w)
    crop_label = (f"Original: ROI box {right - left}×{bottom - top} of {w}×{h} px" if recipe.roi
                  else f"Original {w}×{h} px (this recipe does not crop)")
    tiles = [(crop_label, image), *(_filter_tiles(image) if all_filters else [])]
    tiles += _recipe_tiles(recipe, filters.resize_longest(image[top:bottom, left:right], int(size)))
    tiles.append((f"Model input '{recipe.name}' ({size}×{size}×3)", recipe.apply(image, size)))
    fig, axes = _tile_grid(tiles)
    if recipe.roi:
        axes[0, 0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                       edgecolor="#ffb000", linewidth=2))
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _filter_tiles(image):
    """Every filter of `preprocessing.filters` on the whole image, labelled."""
    return [
        ("Sobel", filters.sobel_edges(image)),
        ("Prewitt", filters.prewitt_edges(image)),
        ("Roberts", filters.roberts_edges(image)),
        ("Canny", filters.canny_edges(image)),
        ("Laplacian sharpen ×1.5", filters.laplacian_sharpen(image, 1.5)),
        ("Histogram equalization", filters.equalize_hist(image)),
        ("CLAHE", filters.equalize_clahe(image)),
    ]


def _recipe_tiles(recipe, resized):
    """The recipe's own steps on the cropped, resized image, each distinct chain once (equalize uses
    one chain for all three channels)."""
    from bonenet.preprocessing.recipes import OPS

    chains, tiles = {}, []
    for c, chain in enumerate(recipe.channels):
        chains.setdefault(tuple(chain), []).append(c + 1)
    for chain, channels in chains.items():
        plane, where = resized, f"ch {', '.join(map(str, channels))}"
        if not chain:
            tiles.append((f"{where}: cropped gray", plane))
        for step in chain:
            params = dict(step)
            op = params.pop("op")
            plane = OPS[op](plane, **params)
            tiles.append((f"{where}: {op}" + (f" {params}" if params else ""), plane))
    return tiles


def _tile_grid(tiles):
    """A figure of labelled grayscale or colour tiles, four to a row."""
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 3.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, tile) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(label, fontsize=9)
    return fig, axes


def save_figure(fig, path, dpi=110):
    """Writes a figure to `path` whole (parents created; see `bonenet.files`) and closes it."""
    from pathlib import Path

    from bonenet.files import file_written_whole

    path = Path(path)
    try:
        with file_written_whole(path, path.suffix) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
