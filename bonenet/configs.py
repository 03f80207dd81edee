"""Configuration dataclasses: the one place where defaults, help, ranges and choices live.

Every field is a `setting`: its default, one line of help, and the range or choices it accepts.
The command line builds each subcommand's flags from these fields (`bonenet.flags.add_config_flags`),
so nothing is written twice. This module imports nothing heavy, so `--help` stays fast.
"""

from dataclasses import dataclass, field, fields

from bonenet.preprocessing.filters import MIN_SIDE
from bonenet.preprocessing.recipes import DEFAULT_RECIPE

IMAGE_SIZE = 224  # EfficientNetB0's native input side
FRACATLAS_REGIONS = ("hand", "leg", "hip", "shoulder")  # FracAtlas's region flags, in its dataset.csv
DEFAULT_THRESHOLD = 0.5  # a study is abnormal at or above it, as the MURA protocol decides
DEFAULT_TRAINABLE_LAYERS = 20  # the design's "last 20 layers fine-tuned"
N_BOOT = 1000  # bootstrap resamples behind every confidence interval
HOLDOUT_FRACTION = 0.2  # MURA's protocol: a patient-grouped fifth of train picks the epoch and threshold
# A datalist without a split column: the patient-grouped share of its studies that becomes `valid`.
DATALIST_VALID_FRACTION = 0.2
# make-synthetic: valid studies per part, as a share of the train studies per part.
SYNTHETIC_VALID_RATIO = 0.25
PREDICT_BATCH = 32  # images read, prepared and scored at a time by predict, serve and evaluate
THRESHOLD_MODES = ("tuned", "default")
# EfficientNetB0 without its top has 236 layers; fine-tuning the last 234 leaves its input scaling
# and normalisation as the frozen trunk (tests/bonenet/models/test_efficientnet.py pins that).
MAX_TRAINABLE_LAYERS = 234
# Without ImageNet weights: the recipe that measured best on the transfer yardstick (BENCHMARKS.md).
OFFLINE_FLAGS = "--weights radiograph --adapt-epochs 8 --image-size 128"
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
MODES = ("cached", "full")
# Test-time augmentation: the views of each prepared image whose probabilities are averaged.
TTA_CHOICES = ("none", "flip")
EXPLAIN_CHOICES = ("locator", "gradcam")
EXPLAIN_HELP = ("what heat maps draw: locator (the fracture locator's map and boxes, learned from FracAtlas' outlined "
                "fractures) or gradcam (Grad-CAM of the part model: where its decision looked)")
TTA_HELP = ("test-time augmentation: none, or flip (every probability the mean over the image and its mirror, at "
            "twice the trunk's time)")
# The Grad-CAM every output draws with `--explain gradcam` (`bonenet.inference.gradcam.heat_maps`): its layer, its
# method, and whether it is kept to the radiograph's foreground. Chosen by the pointing game on the FracAtlas training fold's 303 fractured hand
# images (`benchmarks/heat_map_choice.py`, figures in BENCHMARKS.md): of 24 candidates, Grad-CAM at block4c_add
# (6×6 at 96 px, 14×14 at 224) kept to the foreground hit most often; the last convolution alone, the default
# before, half as often.
HEAT_MAP = {"layer": "block4c_add", "method": "gradcam", "foreground": True}
# Progressive resizing (`bonenet.training.schedule.epoch_sizes`): most epochs small, the last quarter large.
EARLY_SIZE_HELP = ("progressive resizing: every epoch but the last quarter at this side in pixels (the images "
                   "prepared once at image-size and scaled down), the rest at image-size; 0: every epoch at "
                   "image-size")


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


def setting(default, help, accepted=None, choices=None):
    """A config field: its default, one line of help, and the `Range` or choices it accepts."""
    return field(default=default, metadata={"help": help, "range": accepted, "choices": choices})


def check_config(config):
    """Checks every field of a config against its range and choices; raises ValueError naming the field."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("range") is not None and value is not None:
            f.metadata["range"].check(f.name, value)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_early_size(name, early, image_size):
    """Progressive resizing's early side: 0 (off), or from 32 up to below `image_size`; raises ValueError naming
    the field."""
    if early and not 32 <= early < image_size:
        raise ValueError(f"{name} must be 0 (off) or from 32 up to below image_size ({image_size}), got {early}")


@dataclass(frozen=True)
class PretrainConfig:
    """How the backbone is pretrained (`bonenet.training.pretrain`). The defaults made the shipped file."""

    studies_per_part: int = setting(240, "synthetic train studies per part; valid, the hold-out, gets a quarter",
                                    Range(1))
    seed: int = setting(1, "synthetic data and initialisation seed; the demo uses 0, so 1 keeps the two disjoint")
    image_size: int = setting(96, "input side in pixels (the demo's)", Range(32))
    epochs: int = setting(52, "passes over the train images (about 6,400 steps at batch 32)", Range(1))
    batch_size: int = setting(32, "batch size", Range(1))
    learning_rate: float = setting(2e-3, "Adam peak learning rate (from scratch, so far above fine-tuning's)",
                                   Range(0, open_lo=True))
    warmup_epochs: int = setting(2, "linear warm-up epochs before the cosine decay to zero", Range(0))
    recipe: str = setting(DEFAULT_RECIPE, "preprocessing recipe name or JSON file")
    leave_out: str = setting("", "with --real: FracAtlas regions whose films are left out, comma-separated (hand, "
                                 "leg, hip, shoulder); the transfer yardstick pretrains without hand, then scores "
                                 "hand models, so what it measures was never trained")
    early_size: int = setting(0, EARLY_SIZE_HELP, Range(0))
    objective: str = setting("targets", "with --real: targets (every label the sources give, one sigmoid each), "
                                        "contrastive (self-supervised: two augmented views of each film pulled "
                                        "together; no labels, so unlabelled image folders serve) or both",
                             choices=("targets", "contrastive", "both"))
    precision: str = setting("auto", "training precision: auto (mixed_float16 on a GPU, float32 on a CPU), float32, "
                                     "mixed_float16, mixed_bfloat16 (faster only on a CPU that computes it natively); "
                                     "the weights are stored in float16 whatever trained them", choices=PRECISIONS)

    def __post_init__(self):
        check_config(self)
        check_early_size("early_size", self.early_size, self.image_size)
        unknown = set(self.regions_left_out) - set(FRACATLAS_REGIONS)
        if unknown:
            raise ValueError(f"leave_out: unknown region(s) {', '.join(sorted(unknown))}; expected some of "
                             f"{', '.join(FRACATLAS_REGIONS)}")

    @property
    def regions_left_out(self):
        """`leave_out` as a tuple of region names."""
        return tuple(r.strip().lower() for r in self.leave_out.split(",") if r.strip())


@dataclass(frozen=True)
class LocatorConfig:
    """How the fracture locator is trained (`bonenet.training.fit_locator`). The defaults made the shipped file."""

    image_size: int = setting(320, "input side in pixels: the whole film, letterboxed (fractures are small)",
                              Range(64))
    epochs: int = setting(8, "passes of the head over the cached taps of the train films and their mirrors",
                          Range(1))
    batch_size: int = setting(32, "batch size", Range(1))
    learning_rate: float = setting(1e-3, "Adam learning rate of the head", Range(0, open_lo=True))
    positive_weight: float = setting(20.0, "how much more a fracture cell weighs in the loss than a clear one",
                                     Range(1))
    seed: int = setting(0, "seed for the head's initialisation and shuffling")

    def __post_init__(self):
        check_config(self)
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (the trunk's stride), got {self.image_size}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model trains; written into the manifest as is.

    `trainable_layers` = `MAX_TRAINABLE_LAYERS` (the command line's `all`) fine-tunes the whole
    network: its trunk is then only the input scaling, so there is no trunk output worth caching,
    and such a run trains in full mode.
    """

    epochs: int = setting(10, "most epochs (passes over the train images, in either mode)", Range(1))
    batch_size: int = setting(32, "global batch size (split across replicas)", Range(1))
    image_size: int = setting(IMAGE_SIZE, "input side in pixels", Range(32))
    weights: str = setting("imagenet", "imagenet, radiograph (the shipped backbone pretrained on open real "
                                       "radiographs: the offline start, adapted with adapt-epochs 8 at 128 px), none, "
                                       "or a backbone .weights.h5 file")
    trainable_layers: int = setting(
        DEFAULT_TRAINABLE_LAYERS, "last base layers to fine-tune, or all: the whole network, in full mode. 20 (last-20, the shared trunk "
            "and its feature cache) suits an ImageNet backbone, or one adapted by adapt-epochs; all fine-tunes "
            "eight whole networks, each on its part's images", Range(0, MAX_TRAINABLE_LAYERS))
    train_batchnorm: bool = setting(False, "let BatchNorm layers among the trainable ones adapt (deep fine-tuning); "
                                           "by default they stay frozen")
    learning_rate: float = setting(1e-4, "Adam learning rate", Range(0, open_lo=True))
    adapt_epochs: int = setting(0, "adapt the whole trunk first, for this many epochs, on every fit image of the "
                                   "collection (abnormal and body part at once); the router and the part heads "
                                   "then train on it, frozen. 0: off", Range(0))
    adapt_learning_rate: float = setting(3e-4, "peak Adam rate of the trunk adaptation (warm-up, cosine decay)",
                                         Range(0, open_lo=True))
    adapt_early_size: int = setting(0, f"trunk adaptation: {EARLY_SIZE_HELP}", Range(0))
    seed: int = setting(0, "seed for split, shuffling, augmentation and initialisation")
    strategy: str = setting("auto", "tf.distribute strategy: auto (mirrored when >1 GPU), default, mirrored, "
                                    "multiworker", choices=STRATEGIES)
    recipe: str = setting(DEFAULT_RECIPE, "preprocessing recipe name or JSON file")
    augment: bool = setting(True, "augment training images")
    max_rotation: float = setting(15.0, "augmentation rotation bound in degrees", Range(0, 30))
    holdout_fraction: float = setting(HOLDOUT_FRACTION, "patient-grouped hold-out share of train, for model selection and "
                                           "threshold tuning", Range(0, 1, True, True))
    dropout: float = setting(0.2, "dropout before the softmax", Range(0, 1, open_hi=True))
    patience: int = setting(4, "early-stopping patience in epochs", Range(0))
    cache_dir: str = setting(None, "cache folder (trunk outputs in cached mode, prepared images in full mode; "
                                   "default <models-dir>/cache, or memory for images)")
    mode: str = setting("cached", "cached: heads on trunk outputs computed once; full: the whole model on "
                                  "live-augmented images", choices=MODES)
    views: int = setting(2, "cached mode: augmented views drawn once per train image; each epoch serves one of "
                            "them", Range(0))
    ensemble: int = setting(1, "members per model, differently seeded, their probabilities averaged: in cached mode "
                               "K heads on the one trunk cache (K x the head epochs, no more trunk passes); in full "
                               "mode K whole networks", Range(1, 20))
    precision: str = setting("auto", "training precision: auto (mixed_float16 on a GPU, float32 on a CPU), float32, "
                                     "mixed_float16, mixed_bfloat16; whatever trained them, models score in float32 "
                                     "wherever they are loaded", choices=PRECISIONS)

    def __post_init__(self):
        check_config(self)
        check_early_size("adapt_early_size", self.adapt_early_size, self.image_size)
        from bonenet.preprocessing.augment import AugmentConfig
        from bonenet.preprocessing.recipes import get_recipe

        AugmentConfig(max_rotation=self.max_rotation)  # checks the bound
        get_recipe(self.recipe)  # checks the recipe
        if self.deep and self.mode == "cached":
            # The trunk is only the input scaling: caching its output would store every prepared
            # image, three views each, in float16. Full mode prepares each image once instead.
            object.__setattr__(self, "mode", "full")

    @property
    def deep(self):
        """Whether the whole network fine-tunes (`--trainable-layers all`)."""
        return int(self.trainable_layers) == MAX_TRAINABLE_LAYERS


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: `demo` on 2 CPU cores is meant to take at most 10 minutes.

    The heads' learning rate is 1e-3: the recipe's 1e-4 is for many steps, and a few hundred
    synthetic images give the heads few; the manifest says so.
    """

    studies_per_part: int = setting(120, "synthetic train studies per part", Range(1))
    valid_studies_per_part: int = setting(40, "synthetic valid studies per part; 40 keeps per-part kappa intervals "
                                              "narrower than ±0.3", Range(1))
    image_size: int = setting(96, "input side in pixels (the shipped backbone's)", Range(32))
    epochs: int = setting(15, "most epochs per model", Range(1))
    learning_rate: float = setting(1e-3, "Adam learning rate of the heads", Range(0, open_lo=True))
    batch_size: int = setting(32, "batch size", Range(1))
    seed: int = setting(0, "synthetic data seed (the backbone's data used 1)")


QUICK_PLAN = DemoPlan(studies_per_part=8, valid_studies_per_part=4, image_size=64, epochs=1)


@dataclass(frozen=True)
class SyntheticConfig:
    """How big a synthetic MURA-shaped dataset is (`make-synthetic`)."""

    studies_per_part: int = setting(40, "train studies per part", Range(1))
    valid_studies_per_part: int = setting(None, "valid studies per part (default a quarter of --studies-per-part, "
                                                "at least 4)", Range(1))
    seed: int = setting(0, "random seed; same seed, same bytes")
    mura_scale: float = setting(None, "draw MURA's own per-part study, label and image counts times this scale "
                                      "instead (1: 36,808 train and 3,197 valid images)", Range(0, 1, open_lo=True))


@dataclass(frozen=True)
class EvaluateConfig:
    """How a run is scored (`evaluate`)."""

    split: str = setting("valid", "split to score", choices=("valid", "train"))
    bootstrap: int = setting(N_BOOT, "bootstrap resamples for the confidence intervals; 0 for none", Range(0))
    seed: int = setting(0, "bootstrap seed")
    gallery: int = setting(3, "heat maps per part and kind (true positive, false negative, false positive) for the "
                              "report's gallery; 0 for none", Range(0))
    tta: str = setting("none", TTA_HELP, choices=TTA_CHOICES)
    explain: str = setting("locator", EXPLAIN_HELP, choices=EXPLAIN_CHOICES)
    plots: bool = setting(True, "draw the figures (ROC, calibration and confusion PNGs)")

    def __post_init__(self):
        check_config(self)


@dataclass(frozen=True)
class PredictConfig:
    """How `predict` decides and groups."""

    threshold: str = setting("tuned", "tuned: each part's threshold tuned on the training hold-out, where the run "
                                      f"has one; default: {DEFAULT_THRESHOLD}", choices=THRESHOLD_MODES)
    per_image: bool = setting(False, "score every image on its own; by default the images directly in one folder "
                                     "are one study")
    tta: str = setting("none", TTA_HELP, choices=TTA_CHOICES)
    explain: str = setting("locator", EXPLAIN_HELP, choices=EXPLAIN_CHOICES)


@dataclass(frozen=True)
class ExportConfig:
    """What `export` puts in the artifact besides the run's models."""

    tta: str = setting("none", TTA_HELP + "; in the graph", choices=TTA_CHOICES)
    locator: bool = setting(False, "carry the fracture locator too, as a second artifact in the same format "
                                   "(without it, bonenet_export.json says it is not carried)")


@dataclass(frozen=True)
class ServeConfig:
    """Where `serve` listens, how it decides, and what it accepts."""

    host: str = setting("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = setting(8000, "port", Range(1, 65535))
    threshold: str = setting("tuned", f"tuned: each part's threshold tuned on the training hold-out; default: "
                                      f"{DEFAULT_THRESHOLD}",
                             choices=THRESHOLD_MODES)
    tta: str = setting("none", TTA_HELP, choices=TTA_CHOICES)
    explain: str = setting("locator", EXPLAIN_HELP, choices=EXPLAIN_CHOICES)
    max_file_mb: float = setting(20.0, "largest accepted file in MB", Range(0, open_lo=True))
    max_files: int = setting(32, "most files per request", Range(1))
    # A request whose body has not all arrived in this time gets 408: a client that sends headers
    # and stalls holds no connection, memory or worker for longer.
    body_timeout: float = setting(30.0, "seconds a request's body may take to arrive", Range(0, open_lo=True))
    allow_hosts: str = setting("", "more Host names to answer, comma-separated (a reverse proxy's, say); the bound "
                                   "address, localhost and 127.0.0.1 are always answered")
    token: str = setting(None, "require 'Authorization: Bearer TOKEN' on the API (better: set BONENET_TOKEN, which "
                               "ps does not show)")
    allow_no_token: bool = setting(False, "bind beyond this machine without a token: anyone who reaches it may "
                                          "send images")

    def __post_init__(self):
        check_config(self)


@dataclass(frozen=True)
class PreprocessConfig:
    """What `preprocess` draws."""

    recipe: str = setting(DEFAULT_RECIPE, "recipe name (none, equalize, sharpen, edges, full) or JSON file")
    image_size: int = setting(IMAGE_SIZE, "model input side", Range(MIN_SIDE))
    all_filters: bool = setting(False, "also show every filter (Sobel, Prewitt, Roberts, Canny, Laplacian, "
                                       "equalization, CLAHE)")
