"""Distribution: which tf.distribute strategy a process trains under, which process writes the run, and
how datasets are sharded across workers.

One strategy per process (`get_strategy`): `train-all` trains eight models, and a second
MultiWorkerMirroredStrategy would start its collectives over and clash with the first. Under
`multiworker` only the chief writes the run; the other workers write into a private scratch folder.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from bonenet.configs import STRATEGIES


def get_strategy(name="auto"):
    """Returns the tf.distribute strategy for `name`, one instance per process.

    `auto` mirrors across GPUs when more than one is visible. `mirrored` mirrors across every GPU,
    or across the logical CPUs where there is no GPU (how tests run it on a CPU). `multiworker`
    reads the cluster from the TF_CONFIG environment variable (see docs/gpus.md). A strategy is made
    once and reused by every model the process trains (`train-all` trains eight): a second
    instance would start its collective operations over and clash with the first's.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return _make_strategy(name)


@functools.cache
def _make_strategy(name):
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable (see docs/gpus.md)")
        return _MultiWorkerStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus)
    return tf.distribute.get_strategy()


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3.15's `fit` passes it.

    Across several workers Keras' TensorFlow trainer calls `reduce` with a whole (x, y,
    sample_weight) batch before building, and with `axis=0` on scalar per-replica logs after
    each step; the collective reduce takes one tensor and needs the axis to exist, so both fail
    (keras-team/keras#20585). Each leaf is reduced on its own, and a scalar across replicas only,
    which is what those calls mean.
    """

    def reduce(self, reduce_op, value, axis):
        """Reduces every leaf of `value` across replicas (see `tf.distribute.Strategy.reduce`)."""

        def leaf(v):
            scalar = axis is not None and self.experimental_local_results(v)[0].shape.rank == 0
            return super(_MultiWorkerStrategy, self).reduce(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(leaf, value)


def is_chief(strategy_name):
    """Whether this process writes the run.

    Under `multiworker`, only the chief does (TF_CONFIG's "chief" task, or worker 0 when the
    cluster names none), as Keras' multi-worker guide prescribes; the other workers write their
    checkpoints, logs and cache into a private temporary folder that is removed afterwards.
    """
    if strategy_name != "multiworker":
        return True
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind is None or kind == "chief" or (kind == "worker" and index == 0
                                               and "chief" not in tf_config.get("cluster", {}))


def shardable(ds):
    """`ds` sharded by element across workers (its examples come from an in-memory list, not files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


@functools.cache
def worker_scratch():
    """A non-chief worker's private folder, one per process (so `train-all` computes its feature
    cache once, not once per model), removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="bonenet-worker-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
