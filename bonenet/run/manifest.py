"""A run's manifest (`saved_models/<run>/manifest.json`): its schema, the one reader with its checks, the writer,
and the lock that two trainings into one folder take turns on.

The manifest is the single description of a run: which models it holds, the input size and the
preprocessing recipe they were trained with, where their weights came from and how well they did
on the hold-out. Every model in a run must share size, recipe and backbone weights; a folder made
with another recipe is refused rather than silently mixed.

Layout (format version 3): one frozen `trunk.keras` that every model shares, ending at a block
boundary (`bonenet.models.efficientnet.trunk_cut`), and one small `heads/<model>.keras` per model that takes the
trunk's one output tensor. Earlier layouts (full models; two-tensor trunks) were never released
and are refused with a message to retrain. Saving and loading the models is `bonenet.run.store`.
"""

import datetime
import json
import math
from contextlib import contextmanager
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


def member_entries(entry):
    """A model entry's members, `[{"file", …}]`: one for a model trained alone, K for an ensemble."""
    return entry["members"]


def write_json_atomic(payload, path):
    """Writes JSON through a temporary file and an atomic rename."""
    return write_text_whole(path, json.dumps(payload, indent=2))


def read_manifest(run_dir, required=True):
    """Reads and checks `run_dir/manifest.json`.

    Raises:
        ManifestError: missing (when `required`), unreadable, or of another format or version.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        if required:
            raise ManifestError(f"{path}: no manifest; is {run_dir} a BoneNet models folder (made by train-*)?")
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a BoneNet run manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ManifestError(
            f"{path}: format version {manifest.get('format_version')} is not supported by bonenet "
            f"{__version__} (reads {', '.join(map(str, READABLE_VERSIONS))}); retrain or use a matching bonenet"
        )
    check_numbers(manifest, path)
    return manifest


def _number(value, lo, hi):
    """Whether `value` is a finite real number (not a bool or a string) within [lo, hi]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi


def check_numbers(manifest, path):
    """Refuses a manifest whose numbers a run would act on are missing or out of range, in one line naming
    the file and the field: each model's file, labels, members, recipe and calibration record, its temperature
    (null, or within the range calibration can produce) and its tuned threshold (null, or within [0, 1]), and
    the input size. A field that every released run has, missing, was written by a development version before
    it existed: the run is refused with that reason, never read by a guess.

    A hand-edited or damaged manifest would otherwise decide silently: a temperature of 0 or NaN pushes every
    probability to 0, 1 or NaN, and a NaN p(abnormal) reads as "normal".
    """
    def refuse(field, value, accepted):
        raise ManifestError(f"{path}: {field} must be {accepted}, got {value!r}; the manifest was edited or damaged "
                            "(retrain, or restore it)")

    if not _number(manifest.get("image_size"), 32, 8192) or manifest["image_size"] != int(manifest["image_size"]):
        refuse("image_size", manifest.get("image_size"), "a whole number of pixels, at least 32")
    if not isinstance(manifest.get("models"), dict):
        refuse("models", manifest.get("models"), "a table of the run's models")
    for key, entry in manifest["models"].items():
        where = f"models.{key}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            refuse(f"{where}.file", (entry or {}).get("file") if isinstance(entry, dict) else entry, "a file name")
        if not isinstance(entry.get("labels"), list) or not entry["labels"]:
            refuse(f"{where}.labels", entry.get("labels"), "the list of the model's classes")
        for field, accepted in (("members", list), ("recipe", dict), ("calibration", dict)):
            if field not in entry:
                raise ManifestError(f"{path}: {where}.{field} is missing: the run was written by a development "
                                    "version of BoneNet before it recorded that; retrain into a new --models-dir")
            if not isinstance(entry[field], accepted) or not entry[field]:
                refuse(f"{where}.{field}", entry[field], f"the model's {field} record")
        if not all(isinstance(m, dict) and isinstance(m.get("file"), str) for m in entry["members"]):
            refuse(f"{where}.members", entry["members"], "a list of the members' files")
        temperature = (entry.get("calibration") or {}).get("temperature")
        if temperature is not None and not _number(temperature, *T_BOUNDS):
            refuse(f"{where}.calibration.temperature", temperature, f"null or a number within [{T_BOUNDS[0]}, "
                                                                    f"{T_BOUNDS[1]}]")
        threshold = (entry.get("tuning") or {}).get("threshold")
        if threshold is not None and not _number(threshold, 0.0, 1.0):
            refuse(f"{where}.tuning.threshold", threshold, "null or a number within [0, 1]")


def check_shared(manifest, shared, run_dir):
    """Refuses to mix a model into a run whose shared settings differ.

    Raises:
        ManifestError: naming each setting that differs, old and new.
    """
    diffs = [
        f"{k}: folder has {_shown(manifest[k], k)!r}, this model {_shown(shared[k], k)!r}"
        for k in SHARED_KEYS
        if k in manifest and k in shared and _comparable(manifest[k], k) != _comparable(shared[k], k)
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
    recorded = manifest.get("trunk", {}).get("sha256_weights")
    if trunk is not None and recorded:
        if weights_digest(trunk) != recorded:
            raise ManifestError(f"{run_dir / manifest['trunk']['file']}: its weights are not the trunk the manifest "
                                "records (another training or a copy replaced it); retrain into a new --models-dir")
    for key, entry in manifest.get("models", {}).items():
        where = run_dir / entry.get("file", key)
        config = entry.get("config", {})
        run_recipe = manifest["recipe"]
        name = entry["recipe"].get("name")
        if {k: entry["recipe"].get(k) for k in ("name", "roi", "channels")} != \
                {k: run_recipe.get(k) for k in ("name", "roi", "channels")}:
            raise ManifestError(f"{where}: trained with recipe {name!r} but the manifest's run recipe is "
                                f"{run_recipe.get('name')!r}; the manifest was edited or mixed from two runs")
        if "image_size" in config and int(config["image_size"]) != int(manifest["image_size"]):
            raise ManifestError(f"{where}: trained at {config['image_size']} px but the manifest says "
                                f"{manifest['image_size']} px")
        if recorded and entry.get("trunk_sha256") not in (None, recorded):
            raise ManifestError(f"{where}: trained on another trunk than the run's {manifest['trunk']['file']} "
                                "(two trainings wrote this folder at once); retrain it")


def record_model(run_dir, key, shared, entry, trunk=None):
    """Adds or replaces one model's entry in the run manifest (created if absent), atomically.

    Args:
        run_dir: the run folder.
        key: `router` or a part name.
        shared: the settings every model of the run shares (checked against the folder's).
        entry: the model's manifest entry.
        trunk: the trunk's entry (`file`, `outputs`), written when the folder has none yet.
    """
    with run_lock(run_dir):
        return _record_model(run_dir, key, shared, entry, trunk)


def _record_model(run_dir, key, shared, entry, trunk):
    manifest = read_manifest(run_dir, required=False)
    if manifest is None:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "parts": list(PARTS), "models": {}}
    check_shared(manifest, shared, run_dir)
    if trunk is not None and "trunk" not in manifest:
        manifest["trunk"] = trunk
    manifest.update(shared)
    manifest["bonenet_version"] = __version__
    manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["models"][key] = entry
    write_json_atomic(manifest, Path(run_dir) / MANIFEST)
    return manifest


def record_section(run_dir, section, key, value):
    """Adds or replaces `manifest[section][key]` under the run lock, atomically: a measurement made after
    training (a heat map's pointing game, `bonenet.scoring.localisation`) joins the run's record."""
    with run_lock(run_dir):
        manifest = read_manifest(run_dir)
        manifest.setdefault(section, {})[key] = value
        write_json_atomic(manifest, Path(run_dir) / MANIFEST)
