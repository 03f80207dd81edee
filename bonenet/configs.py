"""Configuration dataclasses: the one place where defaults live.

The command line builds its flags from these fields (`run_pipeline._add_config_flags`), so a
default is written once. This module imports nothing heavy, so `--help` stays fast.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainConfig:
    """How the backbone is pretrained. The defaults made the shipped file.

    Attributes:
        studies_per_part: synthetic train studies per part (valid, the hold-out, gets a quarter).
            Defaults to 240.
        seed: synthetic data seed; the demo uses 0, so 1 keeps the two disjoint. Defaults to 1.
        image_size: input side, the demo's. Defaults to 96.
        epochs: passes over the train images; with batch 32 this is about 6,400 steps. Defaults to 52.
        batch_size: batch size. Defaults to 32.
        learning_rate: Adam peak learning rate (from scratch, so far above fine-tuning's). Defaults to 2e-3.
        warmup_epochs: linear warm-up before the cosine decay to zero. Defaults to 2.
        recipe: preprocessing recipe. Defaults to "equalize".
    """

    studies_per_part: int = 240
    seed: int = 1
    image_size: int = 96
    epochs: int = 52
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_epochs: int = 2
    recipe: str = "equalize"


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts, for the checks at the door and their messages."""

    lo: float = None
    hi: float = None
    open_lo: bool = False
    open_hi: bool = False

    def __contains__(self, value):
        return ((self.lo is None or value > self.lo or (value == self.lo and not self.open_lo))
                and (self.hi is None or value < self.hi or (value == self.hi and not self.open_hi)))

    def __str__(self):
        if self.hi is None:
            return f"{'above' if self.open_lo else 'at least'} {self.lo:g}"
        left, right = "(" if self.open_lo else "[", ")" if self.open_hi else "]"
        return f"within {left}{self.lo:g}, {self.hi:g}{right}"

    def check(self, name, value):
        """Returns `value`, or raises ValueError naming `name`, the value and the accepted range."""
        if value not in self:
            raise ValueError(f"{name} must be {self}, got {value:g}")
        return value


# EfficientNetB0 without its top has 236 layers; fine-tuning the last 234 leaves its input scaling
# and normalisation as the frozen trunk (tests/bonenet/test_models.py pins that).
MAX_TRAINABLE_LAYERS = 234
# The ranges of TrainConfig's numeric fields, checked by the dataclass and, earlier, by the parser.
TRAIN_RANGES = {
    "epochs": Range(1), "batch_size": Range(1), "image_size": Range(32), "trainable_layers": Range(0, MAX_TRAINABLE_LAYERS),
    "learning_rate": Range(0, open_lo=True), "max_rotation": Range(0, 30), "holdout_fraction": Range(0, 1, True, True),
    "dropout": Range(0, 1, open_hi=True), "patience": Range(0), "views": Range(0),
}

# The ranges of PretrainConfig's and DemoPlan's numeric fields, checked by the parser.
PRETRAIN_RANGES = {"studies_per_part": Range(1), "image_size": Range(32), "epochs": Range(1), "batch_size": Range(1),
                   "learning_rate": Range(0, open_lo=True), "warmup_epochs": Range(0)}
DEMO_RANGES = {"studies_per_part": Range(1), "valid_studies_per_part": Range(1), "image_size": Range(32),
               "epochs": Range(1), "learning_rate": Range(0, open_lo=True), "batch_size": Range(1)}

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
MODES = ("cached", "full")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model trains; written into the manifest as is.

    Attributes:
        epochs: most epochs to train. Defaults to 10.
        batch_size: global batch size (split across replicas). Defaults to 32.
        image_size: input side. Defaults to 224.
        weights: "imagenet", "none" or a backbone weights file. Defaults to "imagenet".
        trainable_layers: last base layers to fine-tune (BatchNorm stays frozen unless
            `train_batchnorm`). `MAX_TRAINABLE_LAYERS` (the command line's `all`) fine-tunes the whole
            network: its trunk is then only the input scaling, so there is no trunk output worth
            caching, and such a run trains in full mode. Defaults to 20.
        learning_rate: Adam learning rate. Defaults to 1e-4.
        seed: seeds the split, shuffling, augmentation and initialisation. Defaults to 0.
        strategy: one of auto, default, mirrored, multiworker. Defaults to "auto".
        recipe: preprocessing recipe name or JSON file. Defaults to "equalize".
        augment: augment training images. Defaults to True.
        max_rotation: augmentation rotation bound in degrees (at most 30). Defaults to 15.
        holdout_fraction: patient-grouped hold-out share of train. Defaults to 0.2.
        dropout: dropout before the softmax. Defaults to 0.2.
        patience: epochs without hold-out improvement before stopping. Defaults to 4.
        cache_dir: where caches live: trunk outputs (cached mode) or prepared images (full mode).
            None means `<models-dir>/cache` for trunk outputs and memory for images. Defaults to None.
        mode: "cached" trains heads on cached trunk outputs; "full" fits the whole model on
            live-augmented images. Defaults to "cached".
        views: in cached mode with `augment`, augmented views drawn once per train image and
            cached beside the unaugmented one. Defaults to 2.
        precision: "auto" (mixed float16 on a GPU, float32 on a CPU), "float32", "mixed_float16"
            or "mixed_bfloat16"; decided once per process (`bonenet.runtime`). Defaults to "auto".
        train_batchnorm: let the BatchNorm layers among the trainable ones adapt their statistics
            (for deep fine-tuning on a domain far from the backbone's). Defaults to False.
    """

    epochs: int = 10
    batch_size: int = 32
    image_size: int = 224
    weights: str = "imagenet"
    trainable_layers: int = 20
    train_batchnorm: bool = False
    learning_rate: float = 1e-4
    seed: int = 0
    strategy: str = "auto"
    recipe: str = "equalize"
    augment: bool = True
    max_rotation: float = 15.0
    holdout_fraction: float = 0.2
    dropout: float = 0.2
    patience: int = 4
    cache_dir: str = None
    mode: str = "cached"
    views: int = 2
    precision: str = "auto"

    def __post_init__(self):
        for name, accepted in TRAIN_RANGES.items():
            accepted.check(name, getattr(self, name))
        if self.deep and self.mode == "cached":
            # The trunk is only the input scaling: caching its output would store every prepared
            # image, three views each, in float16. Full mode prepares each image once instead.
            object.__setattr__(self, "mode", "full")

    @property
    def deep(self):
        """Whether the whole network fine-tunes (`--trainable-layers all`)."""
        return int(self.trainable_layers) == MAX_TRAINABLE_LAYERS
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        from preprocessing.augment import AugmentConfig
        from preprocessing.recipes import get_recipe

        AugmentConfig(max_rotation=self.max_rotation)  # checks the bound
        get_recipe(self.recipe)  # checks the recipe


# One line of help per TrainConfig field, for the flags the command line generates from it.
TRAIN_HELP = {
    "epochs": "most epochs (passes over the train images, in either mode)",
    "batch_size": "global batch size",
    "image_size": "input side in pixels",
    "weights": "imagenet, none, or a backbone .weights.h5 file",
    "trainable_layers": "last base layers to fine-tune, or all: the whole network, in full mode. 20 (last-20, the "
                        "shared trunk and its feature cache) suits an ImageNet backbone; all is what learns real "
                        "findings from a backbone that is not ImageNet-pretrained",
    "train_batchnorm": "let BatchNorm layers among the trainable ones adapt (deep fine-tuning); by default they "
                       "stay frozen",
    "learning_rate": "Adam learning rate",
    "seed": "seed for split, shuffling and augmentation",
    "strategy": "tf.distribute strategy: auto (mirrored when >1 GPU), default, mirrored, multiworker",
    "recipe": "preprocessing recipe name or JSON file",
    "augment": "augment training images",
    "max_rotation": "augmentation rotation bound in degrees, at most 30",
    "holdout_fraction": "patient-grouped hold-out share of train, for model selection",
    "dropout": "dropout before the softmax",
    "patience": "early-stopping patience in epochs",
    "cache_dir": "cache folder (trunk outputs in cached mode, prepared images in full mode; "
                 "default <models-dir>/cache, or memory for images)",
    "mode": "cached: heads on trunk outputs computed once; full: the whole model on live-augmented images",
    "views": "cached mode: augmented views drawn once per train image; each epoch serves one of them",
    "precision": "compute precision: auto (mixed_float16 on a GPU, float32 on a CPU), float32, mixed_float16, "
                 "mixed_bfloat16; saved models compute in float32 wherever they are loaded",
}
CHOICES = {"strategy": STRATEGIES, "mode": MODES, "precision": PRECISIONS}


PRETRAIN_HELP = {
    "studies_per_part": "synthetic train studies per part; valid, the hold-out, gets a quarter",
    "seed": "synthetic data and initialisation seed; the demo uses 0",
    "image_size": "input side in pixels",
    "epochs": "passes over the train images",
    "batch_size": "batch size",
    "learning_rate": "Adam peak learning rate",
    "warmup_epochs": "linear warm-up epochs before the cosine decay",
    "recipe": "preprocessing recipe name or JSON file",
}


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: `demo` on 2 CPU cores is meant to take at most 10 minutes.

    Attributes:
        studies_per_part: synthetic train studies per part. Defaults to 120.
        valid_studies_per_part: synthetic valid studies per part; 40 keeps per-part kappa intervals
            narrower than ±0.3. Defaults to 40.
        image_size: input side, the shipped backbone's. Defaults to 96.
        epochs: most epochs per model. Defaults to 15.
        learning_rate: Adam learning rate of the heads. The recipe's 1e-4 is for many steps; a few
            hundred synthetic images give the heads few, so the demo uses 1e-3 and the manifest
            says so. Defaults to 1e-3.
        batch_size: batch size. Defaults to 32.
        seed: synthetic data seed, disjoint from the backbone's (1). Defaults to 0.
    """

    studies_per_part: int = 120
    valid_studies_per_part: int = 40
    image_size: int = 96
    epochs: int = 15
    learning_rate: float = 1e-3
    batch_size: int = 32
    seed: int = 0


QUICK_PLAN = DemoPlan(studies_per_part=8, valid_studies_per_part=4, image_size=64, epochs=1)

DEMO_HELP = {
    "studies_per_part": "synthetic train studies per part",
    "valid_studies_per_part": "synthetic valid studies per part",
    "image_size": "input side in pixels",
    "epochs": "most epochs per model",
    "learning_rate": "Adam learning rate of the heads",
    "batch_size": "batch size",
    "seed": "synthetic data seed (the backbone's data used 1)",
}
