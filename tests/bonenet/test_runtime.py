"""TensorFlow start-up (`bonenet.runtime`): only the known start-up lines are held back, once per process."""

import subprocess
import sys
from pathlib import Path

import pytest

from bonenet import runtime

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("line, held", [
    ("W0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.", True),
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on. You may see slightly different results", True),
    ("E0000 00:00:1.0  1 some_kernel.cc:9] Out of memory while trying to allocate", False),
    ("UserWarning: something a user should read", False),
])
def test_only_the_known_start_up_noise_is_held_back(line, held):
    assert bool(runtime.NOISE.search(line)) is held


def test_the_first_decision_holds_for_the_process_and_a_conflicting_one_is_refused():
    code = ("from bonenet import runtime\n"
            "first = runtime.start('float32')\n"
            "import tensorflow as tf\n"
            "gpus = len(tf.config.list_physical_devices('GPU'))\n"
            "assert runtime.start() == first == {'gpus': gpus, 'precision': 'float32', 'xla': gpus > 0}, first\n"
            "try:\n    runtime.start('mixed_bfloat16')\nexcept ValueError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already computes in float32" in proc.stdout
    assert "cuda" not in proc.stderr.lower() and "absl::InitializeLog" not in proc.stderr


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.start("float8")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n")
    info = runtime.cpu_info(cpuinfo)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert (info["avx512"], info["bf16"], info["amx"]) == (True, True, True)
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
    assert not any(runtime.cpu_info(cpuinfo)[k] for k in ("avx512", "bf16", "amx"))
    assert not runtime.cpu_info(tmp_path / "missing")["bf16"]


@pytest.mark.parametrize("gpus, expected", [(1, "mixed_float16"), (2, "mixed_float16"), (0, "float32")])
def test_auto_precision_is_mixed_float16_on_a_gpu_and_float32_on_any_cpu(gpus, expected):
    # float32 on a CPU with native bfloat16 too: mixed bfloat16 was measured slower there (BENCHMARKS.md).
    assert runtime.auto_precision(gpus) == expected


def test_a_ctrl_c_that_python_dropped_is_raised_at_the_next_step():
    import signal

    previous = signal.getsignal(signal.SIGINT)
    try:
        runtime.catch_interrupts()
        runtime.raise_if_interrupted()  # nothing arrived yet
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # as if the first had landed in a finalizer and been dropped
            runtime.raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
