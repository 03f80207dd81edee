"""A run folder (`saved_models/<run>/`): its manifest, atomic saves and checked loading.

The manifest is the single description of a run: which models it holds, the input size and the
preprocessing recipe they were trained with, where their weights came from and how well they did
on the hold-out. Every model in a run must share size, recipe and backbone weights; a folder made
with another recipe is refused rather than silently mixed.

Layout (format version 3): one frozen `trunk.keras` that every model shares, ending at a block
boundary (`bonenet.models.trunk_cut`), and one small `heads/<model>.keras` per model that takes the
trunk's one output tensor. Earlier layouts (full models; two-tensor trunks) were never released
and are refused with a message to retrain.
"""

import datetime
import functools
import json
import math
from contextlib import contextmanager
from pathlib import Path

from bonenet import __version__
from bonenet.outputs import file_written_whole, write_text_whole
from bonenet.parts import PARTS, parse_part, short_name
from bonenet.runtime import in_float32

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
    """A model entry's members, `[{"file", …}]`: its ensemble's, or the one head of a run written before
    ensembles (its `file`)."""
    return entry.get("members") or [{"file": entry["file"]}]


def _atomic_replace(write, path, suffix):
    """Calls `write(tmp_path)` then renames onto `path`, so a crash leaves the old file whole."""
    with file_written_whole(path, suffix) as tmp:
        write(str(tmp))
    return Path(path)


def save_model_atomic(model, path):
    """Saves a Keras model's architecture and weights in `.keras` format, atomically, computing in float32.

    Keras 3 `model.save` always writes the optimizer state of a compiled model (Adam's two
    moments per trainable weight, twice the trainable weights again), so an uncompiled model
    sharing the same layers is saved instead; predictions do not need that state.

    Keras also writes each layer's dtype policy into the file, so a model trained in mixed
    precision would compute in float16 wherever it is loaded, a CPU too. The saved config names
    float32 instead (mixed policies keep their variables in float32, so the weights are exact):
    a run computes in float32 wherever it is loaded, whatever precision trained it.
    """
    import keras

    bare = keras.Model(model.inputs, model.outputs, name=model.name)

    def write(tmp):
        bare.save(tmp)
        _float32_policies(tmp)

    return _atomic_replace(write, path, ".keras")


def _float32_policies(keras_file):
    """Rewrites a `.keras` file's config.json so that no layer names a mixed dtype policy."""
    import zipfile

    def fix(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith(
                    "mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    with zipfile.ZipFile(keras_file) as src:
        entries = {info.filename: src.read(info) for info in src.infolist()}
    config = json.loads(entries["config.json"])
    fixed = fix(config)
    if fixed == config:
        return
    entries["config.json"] = json.dumps(fixed).encode()
    with zipfile.ZipFile(keras_file, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries.items():
            dst.writestr(name, data)


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
    the file and the field: each model's file and labels, its temperature (null, or within the range
    calibration can produce) and its tuned threshold (null, or within [0, 1]), and the input size.

    A hand-edited or damaged manifest would otherwise decide silently: a temperature of 0 or NaN pushes every
    probability to 0, 1 or NaN, and a NaN p(abnormal) reads as "normal".
    """
    from bonenet.calibration import T_BOUNDS

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
        from bonenet.features import weights_digest

        if weights_digest(trunk) != recorded:
            raise ManifestError(f"{run_dir / manifest['trunk']['file']}: its weights are not the trunk the manifest "
                                "records (another training or a copy replaced it); retrain into a new --models-dir")
    for key, entry in manifest.get("models", {}).items():
        where = run_dir / entry.get("file", key)
        config = entry.get("config", {})
        run_recipe = manifest["recipe"]
        if "recipe" in entry:  # the whole recipe the model was trained with
            same = {k: entry["recipe"].get(k) for k in ("name", "roi", "channels")} == \
                {k: run_recipe.get(k) for k in ("name", "roi", "channels")}
            name = entry["recipe"].get("name")
        else:  # entries written before models recorded their recipe: the name in their config
            name = Path(str(config.get("recipe", run_recipe.get("name")))).stem
            same = name == run_recipe.get("name")
        if not same:
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


@in_float32
def load_model(path):
    """Loads a `.keras` model with `safe_mode=True` (no arbitrary code from the file), computing in float32.

    Raises:
        ManifestError: the file is missing, or is not a readable Keras model (truncated, corrupt).
    """
    import zipfile

    import keras

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: model file listed in the manifest is missing")
    if not zipfile.is_zipfile(path):  # Keras would call a truncated file "not found"
        raise ManifestError(f"{path}: not a readable Keras model file (not a complete .keras zip archive: "
                            f"truncated or damaged, {path.stat().st_size:,} bytes); retrain it or restore the run")
    try:
        # Python 3.12+ seeks inside stored zip members without checking their CRC, so Keras would load damaged
        # weights silently: check every member's CRC first.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {damaged!r}")
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"{path}: not a readable Keras model file ({reason}); retrain it or restore the run") \
            from exc


def load_trunk(run_dir, manifest=None):
    """The run's shared trunk model."""
    manifest = manifest or read_manifest(run_dir)
    if "trunk" not in manifest:
        raise ManifestError(f"{Path(run_dir) / MANIFEST}: lists no trunk")
    return load_model(Path(run_dir) / manifest["trunk"]["file"])


def load_run_models(run_dir, keys=None):
    """Loads the trunk and the heads a run's manifest lists, checking that they fit together.

    Args:
        run_dir: the run folder.
        keys: which models (`router`, part names); None loads all listed. Defaults to None.

    Returns:
        (manifest, trunk model, {key: head model}).
    """
    manifest = read_manifest(run_dir)
    listed = manifest["models"]
    wanted = list(listed) if keys is None else [model_key(k) for k in keys]
    missing = [k for k in wanted if k not in listed]
    if missing:
        raise ManifestError(f"{Path(run_dir) / MANIFEST}: no {', '.join(missing)} model in this run")
    trunk = load_trunk(run_dir, manifest)
    check_consistent(manifest, run_dir, trunk)
    size = int(manifest["image_size"])
    if tuple(trunk.input_shape[1:3]) != (size, size):
        raise ManifestError(f"{Path(run_dir) / manifest['trunk']['file']}: takes {trunk.input_shape[1:3]} images "
                            f"but the manifest says {size}×{size}")
    return manifest, trunk, {k: load_members(run_dir, k, listed[k], trunk) for k in wanted}


def load_members(run_dir, key, entry, trunk):
    """Model `key`'s heads, one per ensemble member, each checked against its manifest entry (`check_role`,
    and the weights digest the entry records), in member order.

    Raises:
        ManifestError: a member's file is missing, damaged, another model's, or not the member recorded.
    """
    from bonenet.features import weights_digest

    heads = []
    for number, member in enumerate(member_entries(entry), 1):
        path = Path(run_dir) / member["file"]
        head = load_model(path)
        check_role(head, key, entry, trunk, path)
        if member.get("sha256_weights") and weights_digest(head) != member["sha256_weights"]:
            raise ManifestError(f"{path}: its weights are not member {number} of the {key} model that the manifest "
                                "records (another member's or another run's file is in its place); restore it or "
                                "retrain")
        heads.append(head)
    return heads


def check_role(head, key, entry, trunk, path):
    """Refuses a head that is not the model its manifest entry describes, naming the file.

    A head file swapped for another (the router's in a part's place, one part's in another's) would
    otherwise load and answer with the wrong model's outputs. Checked: the input (the run's trunk
    output), the number of outputs (the entry's labels) and the model's name, which names its role.
    """
    if tuple(head.input_shape) != tuple(trunk.output_shape):
        raise ManifestError(f"{path}: head takes {head.input_shape} but the run's trunk gives {trunk.output_shape}")
    labels = entry.get("labels", [])
    if head.output_shape[-1] != len(labels):
        raise ManifestError(f"{path}: gives {head.output_shape[-1]} outputs, but the manifest's {key} model has "
                            f"{len(labels)} ({', '.join(labels)}); the file is another model's head")
    expected = "router_head" if key == "router" else f"part_{key.lower()}_head"
    if head.name != expected:
        raise ManifestError(f"{path}: is the head {head.name!r}, not {key}'s ({expected!r}); the file is another "
                            "model's head")


@functools.lru_cache(maxsize=1)
def _load_trunk_file(run_dir, file, stamp):
    return load_trunk(run_dir, {"trunk": {"file": file}}) if stamp else None


def shared_trunk(run_dir, manifest):
    """The run's trunk, loaded once per process while its file is unchanged.

    `train_all` builds eight models on one trunk; deserialising it for each cost seconds apiece.
    One is kept: a long process training many runs keeps one trunk alive.
    """
    if "trunk" not in manifest:
        return load_trunk(run_dir, manifest)  # raises the manifest's own error
    path = Path(run_dir, manifest["trunk"]["file"]).resolve()
    if not path.is_file():
        return load_trunk(run_dir, manifest)
    stat = path.stat()
    return _load_trunk_file(str(run_dir), manifest["trunk"]["file"], (stat.st_mtime_ns, stat.st_size))


def save_trunk_once(run_dir, trunk, output, key):
    """Saves a run's first trunk (`output`: the layer it ends at); returns its manifest entry, or None when
    the run already has this trunk.

    Call under the run lock. Every worker saves (saving may take part in collectives); only the
    chief's lands in the run. Raises ValueError when another training wrote a different trunk.
    """
    from bonenet.features import weights_digest

    run_dir = Path(run_dir)
    digest = weights_digest(trunk)
    written = (read_manifest(run_dir, required=False) or {}).get("trunk")
    if written is None:
        save_model_atomic(trunk, run_dir / TRUNK_FILE)
        return {"file": TRUNK_FILE, "output": output, "sha256_weights": digest}
    if written.get("sha256_weights") != digest:
        raise ValueError(f"{run_dir / TRUNK_FILE}: another training wrote this run's trunk while "
                         f"{key} trained on a different one (another seed or backbone); train "
                         f"{key} again into this folder, or use a new --models-dir")
    return None
