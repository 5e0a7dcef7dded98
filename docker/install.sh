#!/bin/sh
# The image's install step: the Dockerfile runs exactly this, and tests/test_packaging.py
# runs it into a fresh virtual environment.
#   VARIANT=cuda  (default) Qwen3-ASR/Qwen3-TTS with PyTorch for CUDA 12.6 — the newest
#                 CUDA line whose PyTorch wheels still run Pascal cards (GTX 1050 Ti, sm_61);
#                 plus the CPU engines.
#   VARIANT=cpu   the embedded CPU default only (faster-whisper tiny.en, Piper), no PyTorch.
# TORCH_INDEX overrides where PyTorch comes from (empty: the ordinary package index).
set -eu
venv="$1"
variant="${VARIANT:-cuda}"
torch_index="${TORCH_INDEX-https://download.pytorch.org/whl/cu126}"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "pip==26.3"
case "$variant" in
  cpu)
    "$venv/bin/pip" install --quiet ".[cpu,whisper-base]"
    ;;
  cuda)
    if [ -n "$torch_index" ]; then
      "$venv/bin/pip" install --quiet --index-url "$torch_index" "torch==2.13.0"
    else
      "$venv/bin/pip" install --quiet "torch==2.13.0"
    fi
    "$venv/bin/pip" install --quiet ".[cpu,qwen]"
    # qwen-asr and qwen-tts pin different transformers releases: installed without their
    # pins (see requirements/qwen-nodeps.txt).
    "$venv/bin/pip" install --quiet --no-deps -r requirements/qwen-nodeps.txt
    ;;
  *)
    echo "install.sh: VARIANT must be cpu or cuda, not '$variant'" >&2
    exit 2
    ;;
esac
# Nothing of the build is needed at run time.
"$venv/bin/pip" uninstall --quiet --yes pip
