"""A run's manifest (`saved_models/<run>/manifest.json`): its typed record (`RunManifest`, one `ModelRecord` per
model), the one reader with its checks (`read_manifest`), the writers (`record_model`, `record_section`), and the
lock that two trainings into one folder take turns on.

The manifest is the single description of a run: which models it holds, the input size and the
preprocessing recipe they were trained with, where their weights came from and how well they did
on the hold-out. Every model in a run must share size, recipe and backbone weights; a folder made
with another recipe is refused rather than silently mixed. Every module reads a run through `RunManifest`'s
fields, never the JSON.

Layout (format version 3): one frozen `trunk.keras` that every model shares, ending at a block
boundary (`bonenet.models.efficientnet.trunk_cut`), and one small `heads/<model>.keras` per model that takes the
trunk's one output tensor. Earlier layouts (full models; two-tensor trunks) were never released
and are refused with a message to retrain. Saving and loading the models is `bonenet.run.store`.
"""

import dataclasses
import datetime
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bonenet import __version__
from bonenet.digests import weights_digest
from bonenet.files import write_text_whole
from bonenet.parts import PARTS, parse_part, short_name
from bonenet.scoring.calibration import T_BOUNDS

MANIFEST = "manifest.json"
FORMAT = "bonenet-run"
FORMAT_VERSION = 3
READABLE_VERSIONS = (FORMAT_VERSION,)
TRUNK_FILE = "trunk.keras"
# Settings every model of one run must share, or their inputs would differ.
SHARED_KEYS = ("image_size", "recipe", "weights", "trainable_layers")


class ManifestError(ValueError):
    """A run folder that is missing, from another format, or made with other settings."""


def model_key(target):
    """`router` or the canonical part name for `target`."""
    return "router" if str(target).lower() == "router" else parse_part(target)


def model_filename(key, member=0):
    """Relative file of a model's head: `heads/router.keras` or `heads/<part>.keras` (short part name); member k
    (from 2) of an ensemble `heads/<name>.m<k>.keras`."""
    name = "router" if key == "router" else short_name(key)
    return f"heads/{name}.m{member + 1}.keras" if member else f"heads/{name}.keras"


def write_json_atomic(payload, path):
    """Writes JSON through a temporary file and an atomic rename."""
    return write_text_whole(path, json.dumps(payload, indent=2))


@dataclass(frozen=True)
class ModelRecord:
    """One model of a run as its manifest records it: its head file and members, classes, the recipe it was
    trained with, its calibration and (a part's) tuned threshold, and what it trained on and how it did."""

    file: str
    labels: list
    members: list  # one {"file", "sha256_weights", "seed", "epochs_run", "holdout", "log"} per ensemble member
    recipe: dict
    calibration: dict  # {"temperature": T or None, …} (`bonenet.scoring.calibration`)
    tuning: dict = None  # a part's tuned-threshold record; None for the router
    config: dict = field(default_factory=dict)  # the `TrainConfig` it trained under
    dataset: dict = field(default_factory=dict)  # fingerprint, synthetic, image counts, unread images
    holdout: dict = field(default_factory=dict)  # its figures on the run's hold-out
    trunk_sha256: str = None
    input: str = "trunk"
    runtime: dict = field(default_factory=dict)
    epochs_run: int = None
    seconds: dict = field(default_factory=dict)
    log: str = None

    @property
    def temperature(self):
        """The calibration temperature, or None when the model is not calibrated."""
        return self.calibration.get("temperature")

    @property
    def threshold(self):
        """The threshold tuned on the training hold-out, or None."""
        return (self.tuning or {}).get("threshold")

    @property
    def synthetic(self):
        """Whether the model trained on synthetic data."""
        return bool(self.dataset.get("synthetic"))

    def to_json(self):
        """The record as the manifest stores it."""
        out = dataclasses.asdict(self)
        if self.tuning is None:
            del out["tuning"]
        return out

    @classmethod
    def from_json(cls, key, raw, path):
        """Reads `models.<key>` of the manifest at `path`, refusing a field out of range (`_checked_entry`)."""
        _checked_entry(key, raw, path)
        known = {f.name for f in dataclasses.fields(cls)}
        record = {k: v for k, v in raw.items() if k in known}
        return cls(**record)


@dataclass(frozen=True)
class RunManifest:
    """A run's record (`manifest.json`): the settings every model shares, the trunk and the models.

    `read_manifest` is its one reader (with the checks), `record_model` and `record_section` its writers.
    """

    image_size: int
    recipe: dict
    weights: dict
    trainable_layers: dict
    models: dict = field(default_factory=dict)  # {"router" | part: `ModelRecord`}
    trunk: dict = None  # {"file", "output", "sha256_weights"} once a model has saved it
    localisation: dict = field(default_factory=dict)  # {part: a heat map's pointing game}
    parts: tuple = PARTS
    bonenet_version: str = __version__
    updated: str = None
    format_version: int = FORMAT_VERSION

    def to_json(self):
        """The manifest as `manifest.json` stores it."""
        out = {"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        out["models"] = {k: m.to_json() for k, m in self.models.items()}
        out["parts"] = list(self.parts)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, raw, path):
        """Reads a parsed `manifest.json`, refusing another format or version and a field out of range."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ManifestError(f"{path}: not a BoneNet run manifest")
        if raw.get("format_version") not in READABLE_VERSIONS:
            raise ManifestError(
                f"{path}: format version {raw.get('format_version')} is not supported by bonenet "
                f"{__version__} (reads {', '.join(map(str, READABLE_VERSIONS))}); retrain or use a matching bonenet"
            )
        _checked_run(raw, path)
        models = {key: ModelRecord.from_json(key, entry, path) for key, entry in raw["models"].items()}
        known = {f.name for f in dataclasses.fields(cls)} - {"models"}
        return cls(**{k: v for k, v in raw.items() if k in known}, models=models)


def read_manifest(run_dir, required=True):
    """Reads and checks `run_dir/manifest.json`: the run's `RunManifest`.

    Raises:
        ManifestError: missing (when `required`), unreadable, of another format or version, or with a field
            out of range.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        if required:
            raise ManifestError(f"{path}: no manifest; is {run_dir} a BoneNet models folder (made by train-*)?")
        return None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    return RunManifest.from_json(raw, path)


def _number(value, lo, hi):
    """Whether `value` is a finite real number (not a bool or a string) within [lo, hi]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi


def _refuse(path, name, value, accepted):
    raise ManifestError(f"{path}: {name} must be {accepted}, got {value!r}; the manifest was edited or damaged "
                        "(retrain, or restore it)")


def _checked_run(raw, path):
    """Refuses a manifest whose run-wide fields are missing or out of range, in one line naming the file and the
    field."""
    if not _number(raw.get("image_size"), 32, 8192) or raw["image_size"] != int(raw["image_size"]):
        _refuse(path, "image_size", raw.get("image_size"), "a whole number of pixels, at least 32")
    for name in ("recipe", "weights", "trainable_layers"):
        if not isinstance(raw.get(name), dict):
            _refuse(path, name, raw.get(name), f"the run's {name} record")
    if not isinstance(raw.get("models"), dict):
        _refuse(path, "models", raw.get("models"), "a table of the run's models")


def _checked_entry(key, entry, path):
    """Refuses a model entry whose file, labels, members, recipe or calibration record is missing, whose
    temperature is neither null nor within the range calibration can produce, or whose tuned threshold is
    neither null nor within [0, 1]. A field every released run has, missing, was written by a development
    version before it existed: the run is refused with that reason, never read by a guess.

    A hand-edited or damaged manifest would otherwise decide silently: a temperature of 0 or NaN pushes every
    probability to 0, 1 or NaN, and a NaN p(abnormal) reads as "normal".
    """
    where = f"models.{key}"
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        _refuse(path, f"{where}.file", entry.get("file") if isinstance(entry, dict) else entry, "a file name")
    if not isinstance(entry.get("labels"), list) or not entry["labels"]:
        _refuse(path, f"{where}.labels", entry.get("labels"), "the list of the model's classes")
    for name, accepted in (("members", list), ("recipe", dict), ("calibration", dict)):
        if name not in entry:
            raise ManifestError(f"{path}: {where}.{name} is missing: the run was written by a development "
                                "version of BoneNet before it recorded that; retrain into a new --models-dir")
        if not isinstance(entry[name], accepted) or not entry[name]:
            _refuse(path, f"{where}.{name}", entry[name], f"the model's {name} record")
    if not all(isinstance(m, dict) and isinstance(m.get("file"), str) for m in entry["members"]):
        _refuse(path, f"{where}.members", entry["members"], "a list of the members' files")
    temperature = entry["calibration"].get("temperature")
    if temperature is not None and not _number(temperature, *T_BOUNDS):
        _refuse(path, f"{where}.calibration.temperature", temperature,
                f"null or a number within [{T_BOUNDS[0]}, {T_BOUNDS[1]}]")
    tuning = entry.get("tuning")
    if tuning is not None and not isinstance(tuning, dict):
        _refuse(path, f"{where}.tuning", tuning, "null or the model's tuning record")
    threshold = (tuning or {}).get("threshold")
    if threshold is not None and not _number(threshold, 0.0, 1.0):
        _refuse(path, f"{where}.tuning.threshold", threshold, "null or a number within [0, 1]")


def check_shared(manifest, shared, run_dir):
    """Refuses to mix a model into a run whose shared settings differ.

    Raises:
        ManifestError: naming each setting that differs, old and new.
    """
    diffs = [
        f"{k}: folder has {_shown(getattr(manifest, k), k)!r}, this model {_shown(shared[k], k)!r}"
        for k in SHARED_KEYS
        if k in shared and _comparable(getattr(manifest, k), k) != _comparable(shared[k], k)
    ]
    if diffs:
        raise ManifestError(
            f"{Path(run_dir) / MANIFEST}: models folder was made with other settings ({'; '.join(diffs)}); "
            "use a new --models-dir"
        )


def _shown(value, key):
    return _comparable(value, key) if key == "trainable_layers" else value


def _comparable(value, key):
    # A weights file is identified by its content, not by where it was read from.
    if key == "weights" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k in ("kind", "sha256")}
    if key == "trainable_layers" and isinstance(value, dict):
        return value.get("count")  # the layer list follows from the count and the architecture
    return value


_HELD = set()


@contextmanager
def run_lock(run_dir):
    """Holds an exclusive lock on a run folder (`.lock`, flock) while writing its trunk or manifest.

    Two trainings into one folder take turns: each re-reads the manifest under the lock, so
    neither overwrites the other's entry or trunk.
    """
    import fcntl

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    key = str(Path(run_dir).resolve())
    if key in _HELD:  # re-entered by this process: flock would wait for itself
        yield
        return
    with open(Path(run_dir) / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_consistent(manifest, run_dir, trunk=None):
    """Refuses a run whose models disagree with its manifest: recipe, input size or trunk.

    Each model's entry records the recipe and size it was trained with and the digest of the
    trunk it was trained on; the manifest records the trunk's digest. A hand-edited manifest, or
    two trainings that wrote one folder at once, would otherwise predict silently with the wrong
    preprocessing or on another trunk.

    Args:
        manifest: the run's manifest.
        run_dir: the run folder (for messages).
        trunk: the loaded trunk, to check its weights against the manifest. Defaults to None.

    Raises:
        ManifestError: naming the file and the setting that disagrees.
    """
    run_dir = Path(run_dir)
    recorded = (manifest.trunk or {}).get("sha256_weights")
    if trunk is not None and recorded:
        if weights_digest(trunk) != recorded:
            raise ManifestError(f"{run_dir / manifest.trunk['file']}: its weights are not the trunk the manifest "
                                "records (another training or a copy replaced it); retrain into a new --models-dir")
    for entry in manifest.models.values():
        where = run_dir / entry.file
        config = entry.config
        run_recipe = manifest.recipe
        name = entry.recipe.get("name")
        if {k: entry.recipe.get(k) for k in ("name", "roi", "channels")} != \
                {k: run_recipe.get(k) for k in ("name", "roi", "channels")}:
            raise ManifestError(f"{where}: trained with recipe {name!r} but the manifest's run recipe is "
                                f"{run_recipe.get('name')!r}; the manifest was edited or mixed from two runs")
        if "image_size" in config and int(config["image_size"]) != manifest.image_size:
            raise ManifestError(f"{where}: trained at {config['image_size']} px but the manifest says "
                                f"{manifest.image_size} px")
        if recorded and entry.trunk_sha256 not in (None, recorded):
            raise ManifestError(f"{where}: trained on another trunk than the run's {manifest.trunk['file']} "
                                "(two trainings wrote this folder at once); retrain it")


def record_model(run_dir, key, shared, entry, trunk=None):
    """Adds or replaces one model's entry in the run manifest (created if absent), atomically.

    Args:
        run_dir: the run folder.
        key: `router` or a part name.
        shared: the settings every model of the run shares (checked against the folder's).
        entry: the model's manifest entry, as stored (checked as `ModelRecord.from_json` reads it).
        trunk: the trunk's entry (`file`, `outputs`), written when the folder has none yet.

    Returns:
        The run's `RunManifest` as written.
    """
    with run_lock(run_dir):
        return _record_model(run_dir, key, shared, entry, trunk)


def _record_model(run_dir, key, shared, entry, trunk):
    path = Path(run_dir) / MANIFEST
    manifest = read_manifest(run_dir, required=False)
    if manifest is not None:
        check_shared(manifest, shared, run_dir)
    manifest = manifest or RunManifest(**{k: shared[k] for k in SHARED_KEYS})
    manifest = dataclasses.replace(
        manifest, **{k: shared[k] for k in SHARED_KEYS}, trunk=manifest.trunk or trunk,
        models={**manifest.models, key: ModelRecord.from_json(key, entry, path)}, bonenet_version=__version__,
        updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(manifest.to_json(), path)
    return manifest


def record_section(run_dir, section, key, value):
    """Adds or replaces `manifest.<section>[key]` under the run lock, atomically: a measurement made after
    training (a heat map's pointing game, `bonenet.scoring.localisation`) joins the run's record."""
    with run_lock(run_dir):
        manifest = read_manifest(run_dir)
        manifest = dataclasses.replace(manifest, **{section: {**getattr(manifest, section), key: value}})
        write_json_atomic(manifest.to_json(), Path(run_dir) / MANIFEST)
