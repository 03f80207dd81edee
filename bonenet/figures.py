"""Figures for people: the preprocessing panel (more plots live with evaluation)."""

import matplotlib.pyplot as plt

from preprocessing import filters
from preprocessing.recipes import get_recipe


def preprocess_panel(image, recipe="equalize", size=224, title=None):
    """Draws a labelled grid: the original, each filter, the ROI crop and the final model input.

    Args:
        image: uint8 H×W radiograph.
        recipe: recipe name, file or `Recipe` for the final input. Defaults to "equalize".
        size: model input side. Defaults to 224.
        title: figure title. Defaults to none.

    Returns:
        A matplotlib Figure.
    """
    image = filters.check_image(image)
    recipe = get_recipe(recipe)
    top, bottom, left, right = filters.roi_box(image)
    final = recipe.apply(image, size)
    tiles = [
        ("Original", image),
        ("Sobel", filters.sobel_edges(image)),
        ("Prewitt", filters.prewitt_edges(image)),
        ("Roberts", filters.roberts_edges(image)),
        ("Canny", filters.canny_edges(image)),
        ("Laplacian sharpen ×1.5", filters.laplacian_sharpen(image, 1.5)),
        ("Laplacian sharpen ×3.0", filters.laplacian_sharpen(image, 3.0)),
        ("Histogram equalization", filters.equalize_hist(image)),
        ("CLAHE", filters.equalize_clahe(image)),
        (f"ROI crop ({right - left}×{bottom - top} px)", image[top:bottom, left:right]),
    ]
    tiles += [(f"Input ch{c + 1}: {_chain_label(chain)}", final[..., c]) for c, chain in enumerate(recipe.channels)]
    tiles.append((f"Model input '{recipe.name}' ({size}×{size}×3)", final))
    cols = 4
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 3.6))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, tile) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(label, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _chain_label(chain):
    if not chain:
        return "gray"
    return " → ".join(dict(step)["op"] for step in chain)


def save_figure(fig, path, dpi=110):
    """Writes a figure to `path` (parents created) and closes it."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
