"""script/gpu-proof, the GPU machine's one prepared run: dry-run on the CPU with tiny
checkpoints through the same code path (build, the product's planner, one child process
per configuration, the real servers on 127.0.0.1 over Wyoming, real speech), a run cut
off by its budget, and the completeness check of the wheels carried to that machine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "script"))

import gpu_proof  # noqa: E402

FRAMES = 40  # codec frames per TTS chunk and ASR tokens: enough to measure, quick on a CPU


def proof(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_PROOF_STARTED")}
    argv = [str(ROOT / "script" / "gpu-proof"), "--device", "cpu", "--size", "tiny", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One configuration (the GTX 1050 Ti's), run the way the GPU machine runs all three."""
    base = tmp_path_factory.mktemp("gpu-proof")
    out, models = base / "out", base / "models"
    done = proof("--configs", "1", "--out", str(out), "--models", str(models),
                 "--tts-frames", str(FRAMES), "--asr-tokens", str(FRAMES))  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return out, models, done.stdout


def test_dry_run_measures_one_configuration_end_to_end(dry_run: tuple[Path, Path, str]) -> None:
    out, _, stdout = dry_run
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]
    assert row["status"] == "ok", row["status"]
    assert row["plan_source"] == "the product's planner", row["plan_source"]
    # the planner's choices for the emulated card are forced on the servers
    argv = row["argv"]
    asr, tts = row["choices"]["asr"], row["choices"]["tts"]
    for flag, value in (("--asr-dtype", asr["precision"]), ("--tts-dtype", tts["precision"]),
                        ("--qwen-asr-quant", asr["quantization"]),
                        ("--qwen-tts-quant", tts["quantization"]),
                        ("--qwen-asr-max-batch-size", str(asr["max_batch_size"]))):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    # four real-speech requests of 5-30 s and the 300 s upload, all answered
    requests = row["asr"]["requests"]
    assert len(requests) == 4
    for request in requests:
        assert "error" not in request, request
        assert 5 <= request["seconds"] <= 30 and request["latency_s"] > 0
    assert row["asr"]["upload"]["seconds"] == 300.0
    assert "error" not in row["asr"]["upload"], row["asr"]["upload"]
    assert row["asr"]["rtf_median"] > 0
    # two TTS requests at once: audio streamed, first audio before the end
    spoken = {request["chars"]: request for request in row["tts"]["requests"]}
    assert set(spoken) == {100, 200}
    for request in spoken.values():
        assert "error" not in request, request
        assert 0 < request["ttfa_s"] <= request["total_s"]
        assert 0 < request["frames"] <= FRAMES
    compare = row["compare"]
    assert compare["ours_ms_per_frame"] > 0, compare
    assert compare["stock_ms_per_frame"] > 0, compare
    assert row["ooms"]["total"] == 0
    # memory taken the moment each service was ready, and peaks per stage
    memory = row["memory"]
    assert memory["after_asr"]["rss_mib"] > 0 and memory["after_tts"]["rss_mib"] > 0
    assert memory["peak"]["process_mib"] >= memory["after_asr"]["rss_mib"]
    assert {"peak_load", "peak_traffic", "peak_upload", "peak_compare"} <= set(memory)
    # every result file, the row as it was written, and the table printed at the end
    assert json.loads((out / "config-1.json").read_text())["status"] == "ok"
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    table = (out / "results.md").read_text()
    assert "| 1. GTX 1050 Ti defaults" in table and "ours ms/frame" in table
    assert "| 1. GTX 1050 Ti defaults" in stdout
    assert "Transcribed 300.0 s" in (out / "run.log").read_text()


def test_run_out_of_budget_still_leaves_its_rows(
    dry_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, models, _ = dry_run  # checkpoints already built
    done = proof("--configs", "1", "--out", str(tmp_path), "--models", str(models),
                 "--budget", "1", timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    # Killed mid-stage, or stopped between stages when the budget ran out first (which
    # one depends on how fast this machine loads the tiny models): a row either way.
    status = row["status"]
    assert status.startswith(("killed after", "partial:")), status
    assert json.loads((tmp_path / "config-1.json").read_text())["status"] == status
    assert status.split(":")[0].split(" after")[0] in (tmp_path / "results.md").read_text()


# --- the wheels carried to the machine


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    requires: tuple[str, ...] = (),
    tag: str = "py3-none-any",
    files: dict[str, bytes] | None = None,
) -> Path:
    """A minimal valid wheel: METADATA, WHEEL, RECORD with real hashes."""
    dist = f"{name.replace('-', '_')}-{version}"
    contents = dict(files or {})
    contents[f"{dist}.dist-info/METADATA"] = (
        "\n".join(
            [
                "Metadata-Version: 2.1",
                f"Name: {name}",
                f"Version: {version}",
                *(f"Requires-Dist: {req}" for req in requires),
            ]
        )
        + "\n\n"
    ).encode()
    contents[f"{dist}.dist-info/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    )
    record = [
        f"{path},sha256={urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for path, data in contents.items()
    ]
    record.append(f"{dist}.dist-info/RECORD,,")
    path = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data in contents.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def closure(tmp_path: Path, ours: list[str], stub: bool = True) -> dict[str, Any]:
    stubs = tmp_path / "stubs"
    if stub:
        (stubs / "nagisa").mkdir(parents=True, exist_ok=True)
        (stubs / "nagisa" / "__init__.py").write_text("")
    return gpu_proof.check_closure(tmp_path, stubs, [Requirement(line) for line in ours])


def test_complete_set_passes_and_names_what_the_machine_supplies(tmp_path: Path) -> None:
    make_wheel(tmp_path, "alpha", "1.0", ("beta>=2", "numpy>=1.20", "nagisa==0.2.11",
                                          'standard-aifc; python_version >= "3.13"'))  # fmt: skip
    make_wheel(tmp_path, "beta", "2.1", ("scipy", "torch>=2.0"))
    report = closure(tmp_path, ["alpha==1.0", "torch==2.13.0"])
    assert report["ok"], report["problems"]
    assert report["carried"] == {"alpha": "1.0", "beta": "2.1"}
    assert report["met_otherwise"]["numpy"] == "machine's 2.5.2"
    assert "assumed" in report["met_otherwise"]["scipy"]  # listed there, version unknown
    assert report["met_otherwise"]["torch"].startswith("machine's own")  # our pin relaxed
    assert report["met_otherwise"]["nagisa"].startswith("stand-in")


def test_incomplete_or_conflicting_sets_are_reported(tmp_path: Path) -> None:
    make_wheel(tmp_path, "alpha", "1.0", ("beta>=2", "transformers==4.57.6", "einops==0.8.2"))
    make_wheel(tmp_path, "gamma", "1.0", tag="cp313-cp313-manylinux_2_17_x86_64")
    make_wheel(tmp_path, "delta", "1.0", ("nagisa",))
    make_wheel(tmp_path, "delta", "0.9", tag="py2.py3-none-any")
    problems = "\n".join(closure(tmp_path, ["alpha==1.0"], stub=False)["problems"])
    assert "alpha needs beta>=2: missing" in problems
    assert "alpha needs transformers==4.57.6: have 5.17.0" in problems  # the machine's won't do
    assert "alpha needs einops==0.8.2: missing" in problems  # version unknown: pins must travel
    assert "does not install on CPython 3.12" in problems
    assert "two versions of delta" in problems
    assert "stand-in for nagisa is missing" in problems


def test_our_pins_split_between_carried_and_the_machine() -> None:
    ours = gpu_proof.our_requirements(("qwen",))
    unmet = {
        gpu_proof.canonical(req.name)
        for req in ours
        if gpu_proof.how_met(req, gpu_proof.OURS, {}) is None
    }
    must_travel = {"transformers", "huggingface-hub", "qwen-asr", "qwen-tts", "wyoming", "soxr",
                   "librosa", "soundfile", "accelerate"}  # fmt: skip
    assert must_travel <= unmet
    assert not unmet & {"torch", "numpy", "av", "zeroconf", "aiohttp", "nagisa"}


def test_trimmed_wheel_keeps_the_machines_libraries_and_installs(tmp_path: Path) -> None:
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": os.urandom(50_000)
            for v in ("cuda128", "cuda130", "rocm64", "cpu")}  # fmt: skip
    wheel = make_wheel(tmp_path, "bitsandbytes", "0.50.2",
                       files={"bitsandbytes/__init__.py": b"", **libs})  # fmt: skip
    saved = gpu_proof.trim_wheel(wheel, gpu_proof.TRIM["bitsandbytes"])
    assert saved > 90_000
    with zipfile.ZipFile(wheel) as trimmed:
        names = set(trimmed.namelist())
        record = trimmed.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_cuda130.so" in names
    assert "bitsandbytes/libbitsandbytes_cpu.so" in names
    assert "cuda128" not in record and "rocm64" not in record
    assert not {n for n in names if "cuda128" in n or "rocm64" in n}
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--target", str(target), str(wheel)], check=True)  # fmt: skip
    assert (target / "bitsandbytes" / "libbitsandbytes_cuda130.so").stat().st_size == 50_000
