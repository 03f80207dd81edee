"""A run's Keras models on disk: atomic saving in float32, and checked loading (every zip member's CRC, the
role of each head, its weights digest, the trunk it fits). What a run holds is its manifest, `bonenet.run.manifest`.
"""

import functools
import json
from pathlib import Path

from bonenet.digests import weights_digest
from bonenet.files import file_written_whole
from bonenet.run.manifest import (
    MANIFEST,
    TRUNK_FILE,
    ManifestError,
    check_consistent,
    model_key,
    read_manifest,
)
from bonenet.runtime import in_float32


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
    if manifest.trunk is None:
        raise ManifestError(f"{Path(run_dir) / MANIFEST}: lists no trunk")
    return load_model(Path(run_dir) / manifest.trunk["file"])


def load_run_models(run_dir, keys=None):
    """Loads the trunk and the heads a run's manifest lists, checking that they fit together.

    Args:
        run_dir: the run folder.
        keys: which models (`router`, part names); None loads all listed. Defaults to None.

    Returns:
        (`RunManifest`, trunk model, {key: head model}).
    """
    manifest = read_manifest(run_dir)
    listed = manifest.models
    wanted = list(listed) if keys is None else [model_key(k) for k in keys]
    missing = [k for k in wanted if k not in listed]
    if missing:
        raise ManifestError(f"{Path(run_dir) / MANIFEST}: no {', '.join(missing)} model in this run")
    trunk = load_trunk(run_dir, manifest)
    check_consistent(manifest, run_dir, trunk)
    size = manifest.image_size
    if tuple(trunk.input_shape[1:3]) != (size, size):
        raise ManifestError(f"{Path(run_dir) / manifest.trunk['file']}: takes {trunk.input_shape[1:3]} images "
                            f"but the manifest says {size}×{size}")
    return manifest, trunk, {k: load_members(run_dir, k, listed[k], trunk) for k in wanted}


def load_members(run_dir, key, entry, trunk):
    """Model `key`'s heads, one per ensemble member, each checked against its manifest entry (`check_role`,
    and the weights digest the entry records), in member order.

    Raises:
        ManifestError: a member's file is missing, damaged, another model's, or not the member recorded.
    """
    heads = []
    for number, member in enumerate(entry.members, 1):
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
    labels = entry.labels
    if head.output_shape[-1] != len(labels):
        raise ManifestError(f"{path}: gives {head.output_shape[-1]} outputs, but the manifest's {key} model has "
                            f"{len(labels)} ({', '.join(labels)}); the file is another model's head")
    expected = "router_head" if key == "router" else f"part_{key.lower()}_head"
    if head.name != expected:
        raise ManifestError(f"{path}: is the head {head.name!r}, not {key}'s ({expected!r}); the file is another "
                            "model's head")


@functools.lru_cache(maxsize=1)
def _load_trunk_file(run_dir, file, stamp):
    return load_model(Path(run_dir) / file) if stamp else None


def shared_trunk(run_dir, manifest):
    """The run's trunk, loaded once per process while its file is unchanged.

    `train_all` builds eight models on one trunk; deserialising it for each cost seconds apiece.
    One is kept: a long process training many runs keeps one trunk alive.
    """
    if manifest.trunk is None:
        return load_trunk(run_dir, manifest)  # raises the manifest's own error
    path = Path(run_dir, manifest.trunk["file"]).resolve()
    if not path.is_file():
        return load_trunk(run_dir, manifest)
    stat = path.stat()
    return _load_trunk_file(str(run_dir), manifest.trunk["file"], (stat.st_mtime_ns, stat.st_size))


def save_trunk_once(run_dir, trunk, output, key):
    """Saves a run's first trunk (`output`: the layer it ends at); returns its manifest entry, or None when
    the run already has this trunk.

    Call under the run lock. Every worker saves (saving may take part in collectives); only the
    chief's lands in the run. Raises ValueError when another training wrote a different trunk.
    """
    run_dir = Path(run_dir)
    digest = weights_digest(trunk)
    written = getattr(read_manifest(run_dir, required=False), "trunk", None)
    if written is None:
        save_model_atomic(trunk, run_dir / TRUNK_FILE)
        return {"file": TRUNK_FILE, "output": output, "sha256_weights": digest}
    if written.get("sha256_weights") != digest:
        raise ValueError(f"{run_dir / TRUNK_FILE}: another training wrote this run's trunk while "
                         f"{key} trained on a different one (another seed or backbone); train "
                         f"{key} again into this folder, or use a new --models-dir")
    return None
