"""TensorFlow start-up, once per process: a quiet import and the device decisions.

TensorFlow's C++ side logs through absl before Python can configure anything: the CUDA probe
("Could not find cuda drivers", "failed call to cuInit"), oneDNN's start-up notice and absl's "All log messages before
absl::InitializeLog()" notice reach stderr whatever `TF_CPP_MIN_LOG_LEVEL` says. `start` sets the
log level before the first import and holds back exactly those known start-up lines (`NOISE`);
every other line, Python warnings included, is passed on unchanged.

Devices are decided here too, once: TensorFlow refuses to change physical devices after its
context exists, so memory growth is set before the first model is built, and every later call
returns the first decision.

Precision is a training-speed choice, never a result. `start` resolves the precision that training
builds its models under, but never sets Keras' global dtype policy: training builds inside
`precision_scope(training precision)`, and everything built to score an image (a loaded run, an
ensemble's mean, test-time views, the export's wrappers) inside `precision_scope("float32")`, so
every probability, score, heat map and exported graph is float32 on any CPU or GPU, whatever
policy a caller's script has set.
"""

import os
import platform
import re
import sys
import tempfile
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

from bonenet.configs import PRECISIONS

# The start-up lines held back; nothing else is.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cuda_executor\.cc:\d+\] .*(kernel driver does not appear|no NVIDIA GPU)"
    # On CPUs with AVX-512, oneDNN's notice that results may differ in the last bits, at every start.
    r"|port\.cc:\d+\] oneDNN custom operations are on"
)
# TensorFlow's retracing detector keys on a function's code location, and every Keras model's
# train/predict step is a closure at the same location in Keras. Building or loading eight models
# (train-all, a run's heads) is therefore reported as "retracing" although each model traces
# once. Only that message about those Keras steps is dropped; a real retracing elsewhere still shows.
KERAS_STEP_RETRACING = re.compile(
    r"<function TensorFlowTrainer\.\w+\.<locals>\.\w+ at 0x[0-9a-f]+> triggered tf\.function retracing")
_STATE = {}


class _KerasStepRetracing:
    """A logging filter for the `tensorflow` logger that drops `KERAS_STEP_RETRACING` only."""

    @staticmethod
    def filter(record):
        return not KERAS_STEP_RETRACING.search(record.getMessage())


@contextmanager
def _held_back_stderr():
    """Sends fd 2 to a temporary file, then replays it without the `NOISE` lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def cpu_info(cpuinfo="/proc/cpuinfo"):
    """The CPU's model and the instruction sets that decide the trunk's speed: {"model", "cpus", "avx512",
    "bf16" (native bfloat16 arithmetic: AVX512_BF16 or AMX-BF16), "amx"}, read from `cpuinfo` (all False
    where it is missing)."""
    path = Path(cpuinfo)
    info = path.read_text() if path.is_file() else ""
    lines = info.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return {"model": model, "cpus": os.cpu_count(), "avx512": "avx512f" in flags,
            "bf16": bool({"avx512_bf16", "amx_bf16"} & flags), "amx": "amx_tile" in flags}


def auto_precision(gpus):
    """What precision "auto" means: mixed float16 on a GPU, float32 on every CPU.

    Not mixed bfloat16 on a CPU that computes it natively: on one (AVX512_BF16 and AMX-BF16, TensorFlow
    2.21's oneDNN) it trained 0.91x and filled the feature cache 0.85x as fast as float32
    (`benchmarks/precision_speed.py`, BENCHMARKS.md). `--precision mixed_bfloat16` still selects it."""
    return "mixed_float16" if gpus else "float32"


def start(precision="auto"):
    """Imports TensorFlow quietly and decides the devices and the training precision, once per process.

    On a GPU: memory growth (so several processes can share a card) and XLA. The precision is
    the Keras dtype policy that training builds its models under (`auto_precision`, applied by
    `precision_scope`): "auto" is mixed float16 on a GPU and float32 on a CPU; "mixed_bfloat16" runs on
    any CPU. The global policy is left as it is, and
    saved models never carry it (`bonenet.run.store.save_model_atomic`): they compute in float32 wherever
    they are loaded.

    Args:
        precision: one of `PRECISIONS`. Defaults to "auto".

    Returns:
        {"gpus": number of GPUs visible, "precision": the Keras dtype policy name, "xla": bool}.

    Raises:
        ValueError: an unknown precision, or another explicit precision than the process already uses.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if "precision" in _STATE:
        if precision not in ("auto", _STATE["precision"]):
            raise ValueError(f"this process already computes in {_STATE['precision']}; precision {precision!r} "
                             "must be chosen before the first model (one per process)")
        return {k: _STATE[k] for k in ("gpus", "precision", "xla")}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _held_back_stderr():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    tf.get_logger().addFilter(_KerasStepRetracing)
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if precision == "auto":
        precision = auto_precision(len(gpus))
    _STATE.update({"gpus": len(gpus), "precision": precision, "xla": bool(gpus)})
    return {k: _STATE[k] for k in ("gpus", "precision", "xla")}


@contextmanager
def precision_scope(policy):
    """Builds Keras layers under dtype policy `policy` (a name: "float32", "mixed_bfloat16", …) inside the
    block, then restores the caller's policy.

    Keras keeps its global policy per thread, so one thread's scope never changes another's models.
    """
    import keras

    saved = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(saved)


def in_float32(build):
    """Decorates a function that builds or loads models for scoring so that it builds them in float32
    (`precision_scope("float32")`), whatever policy its caller has set."""

    @wraps(build)
    def wrapper(*args, **kwargs):
        with precision_scope("float32"):
            return build(*args, **kwargs)

    return wrapper


def catch_interrupts():
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered for `raise_if_interrupted`.

    Python drops an exception raised while a finalizer or weakref callback runs (it reports it as
    unraisable), and TensorFlow and Keras run many: a Ctrl-C landing in one was lost, and training went on.
    Call from the main thread, once per command.
    """
    import signal

    def interrupted(signum, frame):
        _STATE["interrupted"] = True
        raise KeyboardInterrupt

    _STATE["interrupted"] = False
    signal.signal(signal.SIGINT, interrupted)


def raise_if_interrupted():
    """Raises KeyboardInterrupt if Ctrl-C arrived since `catch_interrupts`: long loops call it at each step,
    so an interrupt Python dropped still stops them there."""
    if _STATE.get("interrupted"):
        raise KeyboardInterrupt
