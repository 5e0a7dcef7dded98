"""Wyoming speech-to-text and text-to-speech servers for Home Assistant."""

import os

__version__ = "0.1.0"

# PyTorch's OpenMP threads spin while they wait for each other; with one core taken by
# another process, every parallel region then waits for a thread that is not running.
# Passive waiting took Qwen3-ASR (PyTorch FP32, 2 cores) beside a busy core from 2.25x
# its idle time to 1.10-1.22x, for about 7 % more idle time (script/bench_qwen_asr_cpu.py
# --busy). Set here, before any engine imports torch; an OMP_WAIT_POLICY set by the
# user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
