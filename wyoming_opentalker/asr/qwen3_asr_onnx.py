"""Qwen3-ASR on the CPU through onnxruntime: the default for Qwen3-ASR without a GPU.

The PyTorch engine in FP32 needs about 6 s for a 5 s command on two cores and peaks at
4 GB; this one runs the same model as int8/int4 ONNX graphs (``qwen3_onnx_export``) in
a fifth of the time and under 2 GB (``script/bench_qwen_asr_cpu.py``; the README's
*Qwen3-ASR without a GPU*). It imports neither torch nor transformers: log-mel features,
the prompt and greedy decoding are done here in NumPy, the same way upstream's processor
and ``generate`` do them.

Where the graphs come from: ``ASR_MODEL`` naming a folder converted already (it holds
``opentalker.json``), or else the Qwen3-ASR checkpoint (downloaded as usual) converted
once, in a child process, into the cache beside it, and reused while its manifest
matches. A damaged conversion is moved aside and made again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Device
from ..engine import AsrResult, EngineError, EngineInfo, LoadPlan
from ..integrity import Digest, Ledger, move_aside, verified
from ..memory import MemoryNeed, free_cpu_memory, gib, read_headers
from ..models import ModelError, ledger, opentalker_cache
from ..settings import Settings
from .qwen3_asr import (
    MAX_HINT_TOKENS,
    PIECE_SECONDS,
    SAMPLE_RATE,
    Qwen3AsrPieces,
    _Outcome,
    _Piece,
    max_new_tokens,
    resolve,
    token_budget,
)
from .qwen3_onnx_export import (
    FORMAT,
    GRAPHS,
    MANIFEST,
    ONNX_QUANT_MODES,
    conversion_memory,
    converted_bytes,
)

_LOGGER = logging.getLogger(__name__)

META = "opentalker.json"
# Requests decoded together on the CPU: a batch shares each decoder step's weight reads.
CPU_BATCH = 4


def is_converted(path: Path) -> bool:
    return (path / META).is_file()


def converted_folder(settings: Settings) -> Path | None:
    """``ASR_MODEL`` when it names a folder converted already (it is served as it is)."""
    folder = Path(settings.asr_model).expanduser() if settings.asr_model else None
    return folder if folder is not None and is_converted(folder) else None


def conversion_target(settings: Settings, source_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", source_name).strip("-")
    quant = settings.qwen_asr_onnx_quant
    return opentalker_cache(settings.cache_dir) / "qwen3-asr-onnx" / f"{safe}-{quant}-f{FORMAT}"


def damaged_files(folder: Path, files_ledger: Ledger | None, *, full: bool = False) -> list[str]:
    """Files of a converted model that are missing or do not match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [MANIFEST]
    bad = []
    for name, entry in files.items():
        digest = Digest("sha256", str(entry["sha256"]), int(entry["size"]))
        if not verified(folder / name, digest, files_ledger, full=full):
            bad.append(name)
    return bad


def _stale_partials(target: Path) -> None:
    """Remove half-written conversions left by a process that no longer runs."""
    for partial in target.parent.glob(f"{target.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and _alive(int(pid))
        if not alive:
            _LOGGER.info("Removing an interrupted conversion: %s", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def run_conversion(source: Path, target: Path, quant: str) -> None:
    """Convert in a child process (its PyTorch copy of the model is freed when it exits,
    and the server never imports torch); its log lines go to this process's log."""
    _LOGGER.info(
        "Converting Qwen3-ASR %s for the CPU (%s, once; about a minute on 2 cores)",
        source,
        quant,
    )
    command = [
        sys.executable,
        "-m",
        "wyoming_opentalker",
        "convert-qwen3-asr",
        "--model",
        str(source),
        "--output",
        str(target),
        "--quant",
        quant,
    ]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ModelError(
            f"converting Qwen3-ASR {source} to ONNX failed (exit {result.returncode}); "
            "the lines above say why"
        )


def memory_shortfall(need: int, free: int | None, model: str | None) -> str | None:
    """Why a conversion must not start here, in one line, or None. Started anyway it
    would be killed for memory at every start, minutes each, after swapping the box."""
    if free is None or need <= free:
        return None
    return (
        f"converting Qwen3-ASR for the CPU needs about {gib(need)} of memory and this machine "
        f"has {gib(free)} free (RAM and swap): convert it on a bigger machine "
        f"(wyoming-opentalker convert-qwen3-asr --model {model or 'Qwen/Qwen3-ASR-0.6B'} "
        "--output DIR) and set ASR_MODEL to that folder"
    )


def locate(settings: Settings, *, again: bool = False) -> Path:
    """The converted model to load: a converted folder named by ``ASR_MODEL`` as it is,
    else this checkpoint's conversion in the cache, converted now when missing, damaged,
    from another checkpoint or from an older exporter."""
    spec = settings.asr_model
    folder = converted_folder(settings)
    if folder is not None:
        bad = damaged_files(folder, None, full=again)
        if bad:
            raise ModelError(
                f"the converted Qwen3-ASR model in {folder} is damaged ({', '.join(bad[:3])} "
                "missing or not matching its manifest): convert it again "
                "(wyoming-opentalker convert-qwen3-asr)"
            )
        return folder
    resolved = resolve(settings)
    target = conversion_target(settings, resolved.name)
    files_ledger = ledger(settings.cache_dir)
    if target.exists():
        reason = _unusable(target, resolved.path, files_ledger, full=again)
        if reason is None:
            return target
        _LOGGER.warning(
            "The converted Qwen3-ASR model in %s %s: converting it again", target, reason
        )
        aside = target.with_name(target.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        if move_aside(target) is None:
            shutil.rmtree(target, ignore_errors=True)
    quant = settings.qwen_asr_onnx_quant
    missing = [name for name in ("torch", "qwen_asr", "onnx") if find_spec(name) is None]
    if missing:  # e.g. the aarch64 add-on: serves converted folders, cannot convert
        raise ModelError(
            f"converting Qwen3-ASR for the CPU needs {', '.join(missing)}, which this install "
            "lacks (the qwen extra): convert it on another machine (wyoming-opentalker "
            "convert-qwen3-asr --model ... --output DIR) and set ASR_MODEL to that folder"
        )
    shapes = {n: t.shape for n, t in read_headers(resolved.path).items()}
    refusal = memory_shortfall(conversion_memory(shapes), free_cpu_memory(), spec)
    if refusal:
        raise ModelError(refusal)
    target.parent.mkdir(parents=True, exist_ok=True)
    _stale_partials(target)
    run_conversion(resolved.path, target, quant)
    bad = damaged_files(target, files_ledger)
    if bad:
        raise ModelError(f"the conversion in {target} does not match its manifest: {bad[0]}")
    return target


def _unusable(target: Path, source: Path, files_ledger: Ledger, *, full: bool) -> str | None:
    try:
        meta = json.loads((target / META).read_text())
    except (OSError, ValueError):
        return "has no readable opentalker.json"
    if meta.get("format") != FORMAT:
        return "was made by an older exporter"
    if meta.get("source") != str(source):
        return f"was converted from {meta.get('source')}, not {source}"
    bad = damaged_files(target, files_ledger, full=full)
    if bad:
        return f"is damaged ({', '.join(bad[:3])} missing or not matching its manifest)"
    return None


class LogMel:
    """Whisper's log-mel features (what ``WhisperFeatureExtractor`` computes), in NumPy:
    periodic Hann window, centred frames with reflected edges, power spectrum through the
    checkpoint's own mel filters, log10, an 8-decade floor below the peak, scaled."""

    def __init__(self, filters: np.ndarray, n_fft: int, hop: int) -> None:
        self.filters = filters.astype(np.float32)  # [n_fft // 2 + 1, mels]
        self.n_fft = n_fft
        self.hop = hop
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        half = self.n_fft // 2
        padded = np.pad(audio.astype(np.float32), half, mode="reflect")
        count = 1 + (len(padded) - self.n_fft) // self.hop
        strides = (padded.strides[0] * self.hop, padded.strides[0])
        frames = np.lib.stride_tricks.as_strided(padded, (count, self.n_fft), strides)
        spectrum: np.ndarray = np.fft.rfft(frames * self.window, axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)[:-1]
        mel = np.maximum(power @ self.filters, 1e-10)
        log: np.ndarray = np.log10(mel).T  # [mels, frames]
        log = np.maximum(log, log.max() - 8.0)
        result: np.ndarray = ((log + 4.0) / 4.0).astype(np.float32)
        return result

    def frames(self, samples: int) -> int:
        """Feature frames of ``samples`` of audio (upstream's attention-mask length)."""
        return -(-samples // self.hop)


def conv_tokens(frames: int) -> int:
    """Tokens the convolution front makes of ``frames`` mel frames (one chunk)."""
    length = (frames - 1) // 2 + 1
    length = (length - 1) // 2 + 1
    return (length - 1) // 2 + 1


class OnnxQwen3Asr:
    """The converted graphs and the decoding loop around them."""

    def __init__(self, folder: Path, threads: int | None, max_new: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.meta: dict[str, Any] = json.loads((folder / META).read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning worker threads make a busy machine twice as slow; a blocked one waits.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {}
        for part in GRAPHS:
            # The audio graphs' working memory grows with the audio (0.2 GiB for 30 s) and
            # an arena would keep it for good; the decoder's many small per-step buffers
            # are what an arena is for. Measured on the 0.6B model, 30 s request decoded
            # to its cap: server peak 1.37 GiB this way, 1.56 with arenas everywhere.
            options.enable_cpu_mem_arena = options.enable_mem_pattern = part == "decoder"
            self.sessions[part] = ort.InferenceSession(
                str(folder / part / f"{part}.onnx"), options, providers=["CPUExecutionProvider"]
            )
        features = self.meta["features"]
        filters = np.load(folder / "mel_filters.npy")
        self.mel = LogMel(filters, int(features["n_fft"]), int(features["hop_length"]))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.max_new = max_new
        self.chunk = 2 * int(self.meta["n_window"])
        self.window_chunks = max(1, int(self.meta["n_window_infer"]) // self.chunk)
        self.eos = set(self.meta["eos_token_ids"])
        self.pad_id = self.tokenizer.token_to_id("<|endoftext|>") or 0
        self.penalty = float(self.meta.get("repetition_penalty", 1.0))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def features(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each audio's features as upstream's processor makes them for one batch: the
        audio zero-padded to the batch's longest, then cut to its own frames."""
        longest = max(len(a) for a in audios)
        out = []
        for audio in audios:
            padded = np.zeros(longest, np.float32)
            padded[: len(audio)] = audio
            full = self.mel(padded)
            out.append(full[:, : min(self.mel.frames(len(audio)), full.shape[1])])
        return out

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Audio embeddings of one piece: 1 s chunks through the convolutions, then the
        transformer one attention window (``n_window_infer`` frames) at a time."""
        frames = features.shape[1]
        starts = list(range(0, frames, self.chunk))
        width = self.chunk if len(starts) > 1 else frames
        outputs = []
        for first in range(0, len(starts), self.window_chunks):
            group = starts[first : first + self.window_chunks]
            batch = np.zeros((len(group), 1, features.shape[0], width), np.float32)
            counts = []
            for row, start in enumerate(group):
                piece = features[:, start : start + self.chunk]
                batch[row, 0, :, : piece.shape[1]] = piece
                counts.append(conv_tokens(piece.shape[1]))
            (embeds,) = self.sessions["conv"].run(None, {"chunks": batch})
            hidden = np.concatenate([embeds[row, :n] for row, n in enumerate(counts)])
            (audio,) = self.sessions["encoder"].run(None, {"hidden": hidden})
            outputs.append(audio)
        return np.concatenate(outputs)

    def prompt(self, context: str, language: str | None, audio_tokens: int) -> list[int]:
        parts = self.meta["prompt"]
        text = (
            parts["before"]
            + context
            + parts["middle"]
            + parts["audio_token"] * audio_tokens
            + parts["after"]
        )
        if language:
            text += f"language {language}<asr_text>"
        return list(self.tokenizer.encode(text).ids)

    def generate(
        self, prompts: list[list[int]], audio: list[np.ndarray], new_tokens: int
    ) -> list[str]:
        """Greedy decoding of a left-padded batch, stopping at an end token."""
        batch = len(prompts)
        longest = max(len(p) for p in prompts)
        hidden = int(self.meta["hidden_size"])
        ids = np.full((batch, longest), self.pad_id, np.int64)
        mask = np.zeros((batch, longest), np.int64)
        audio_in = np.zeros((batch, longest, hidden), np.float32)
        for row, (prompt, embeds) in enumerate(zip(prompts, audio, strict=True)):
            ids[row, longest - len(prompt) :] = prompt
            mask[row, longest - len(prompt) :] = 1
            places = np.nonzero(ids[row] == int(self.meta["audio_token_id"]))[0]
            places = places[places >= longest - len(prompt)]
            audio_in[row, places] = embeds[: len(places)]
        audio_mask = (ids == int(self.meta["audio_token_id"])) & (mask == 1)
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        empty = np.zeros(
            (batch, int(self.meta["kv_heads"]), 0, int(self.meta["head_dim"])), np.float32
        )
        past = {
            f"past_{kind}_{i}": empty
            for i in range(int(self.meta["layers"]))
            for kind in ("key", "value")
        }
        decoder = self.sessions["decoder"]
        names = [o.name for o in decoder.get_outputs()]
        written: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        seen = [set(p) for p in prompts]
        inputs: dict[str, np.ndarray] = {
            "input_ids": ids,
            "audio": audio_in,
            "audio_mask": audio_mask,
            "attention_mask": mask,
            "position_ids": positions,
        }
        next_position = positions[:, -1:] + 1
        for _ in range(new_tokens):
            outputs = decoder.run(None, {**inputs, **past})
            logits = outputs[0]
            if self.penalty != 1.0:
                for row in range(batch):
                    tokens = list(seen[row])
                    values = logits[row, tokens]
                    logits[row, tokens] = np.where(
                        values > 0, values / self.penalty, values * self.penalty
                    )
            chosen = logits.argmax(axis=-1)
            for row in range(batch):
                if done[row]:
                    chosen[row] = self.pad_id
                    continue
                token = int(chosen[row])
                if token in self.eos:
                    done[row] = True
                else:
                    written[row].append(token)
                    seen[row].add(token)
            if all(done):
                break
            past = {
                name.replace("present_", "past_"): value
                for name, value in zip(names[1:], outputs[1:], strict=True)
            }
            step = chosen.reshape(batch, 1).astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            inputs = {
                "input_ids": step,
                "audio": np.zeros((batch, 1, hidden), np.float32),
                "audio_mask": np.zeros((batch, 1), bool),
                "attention_mask": mask,
                "position_ids": next_position,
            }
            next_position = next_position + 1
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in written]


def parse_output(raw: str, forced: str | None) -> tuple[str, str]:
    """Qwen3-ASR's answer ``language X<asr_text>text`` as (language name, text); with a
    forced language the answer is all text. ``language None`` means no speech."""
    text = collapse_repeats(raw.strip())
    if not text:
        return "", ""
    if forced:
        return forced, text
    if "<asr_text>" not in text:
        return "", text
    meta, body = text.split("<asr_text>", 1)
    name = ""
    for line in meta.splitlines():
        line = line.strip()
        if line.lower().startswith("language "):
            name = line[len("language ") :].strip()
    if name.lower() == "none":
        return "", ""
    return name, body.strip()


def collapse_repeats(text: str, times: int = 20, longest: int = 20) -> str:
    """A model stuck in a loop writes one character or a short pattern over and over:
    more than ``times`` repeats in a row are kept once (as upstream's decoder does)."""
    out = []
    i = 0
    while i < len(text):
        step = 1
        for size in range(1, longest + 1):
            pattern = text[i : i + size]
            if len(pattern) < size:
                break
            count = 1
            while text[i + count * size : i + (count + 1) * size] == pattern:
                count += 1
            if count > times:
                step = count * size
                break
        out.append(text[i : i + (step if step == 1 else len(pattern))])
        i += step
    return "".join(out)


class Qwen3AsrOnnxEngine(Qwen3AsrPieces):
    """Qwen3-ASR through onnxruntime on the CPU (``QWEN_ASR_RUNTIME``: auto without a
    GPU, or onnx)."""

    @classmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """The graphs run on the CPU whatever ``DEVICE`` says; the weights counted are the
        converted files' size, held in CPU memory."""
        batch = settings.qwen_asr_max_batch_size or CPU_BATCH
        quant = settings.qwen_asr_onnx_quant
        folder = converted_folder(settings)
        if folder is not None:
            weights = sum(p.stat().st_size for p in folder.rglob("*.data"))
        else:  # what converting this checkpoint will write (CPU memory, not the GPU's)
            headers = read_headers(resolve(settings).path)
            weights = converted_bytes({n: t.shape for n, t in headers.items()}, quant)
        need = MemoryNeed(
            "asr",
            f"Qwen3-ASR ONNX on the CPU ({quant}, batch up to {batch})",
            weights if device.type == "cpu" else 0,
            0,
            engine="qwen3-asr-onnx",
            precision=quant,
            cpu=0 if device.type == "cpu" else weights,  # beside a GPU: not on it
            detail=f"batch up to {batch}, {PIECE_SECONDS:g} s pieces",
        )
        return LoadPlan(settings, device, need, f"QWEN_ASR_ONNX_QUANT={quant}", batch)

    def __init__(self, plan: LoadPlan) -> None:
        settings = plan.settings
        if settings.qwen_asr_onnx_quant not in ONNX_QUANT_MODES:
            raise EngineError(f"QWEN_ASR_ONNX_QUANT must be one of {', '.join(ONNX_QUANT_MODES)}")
        self.max_batch_size = plan.batch_size
        self._max_new_tokens = settings.qwen_asr_max_new_tokens
        self._budget = token_budget(self.max_batch_size, self._max_new_tokens)
        self._hints = settings.asr_hints
        threads = settings.qwen_asr_threads
        folder = locate(settings)
        try:
            self._model = OnnxQwen3Asr(folder, threads, self._max_new_tokens)
        except Exception as err:  # a graph onnxruntime refuses: check, convert again once
            _LOGGER.warning("Loading %s failed (%s): checking its files", folder, err)
            folder = locate(settings, again=True)
            try:
                self._model = OnnxQwen3Asr(folder, threads, self._max_new_tokens)
            except Exception as again:
                raise ModelError(
                    f"the converted Qwen3-ASR model in {folder} cannot be loaded: {again}"
                ) from None
        meta = self._model.meta
        self._languages = self.known_codes(meta["languages"])
        size = sum(p.stat().st_size for p in folder.rglob("*.data"))
        import onnxruntime

        self._info = EngineInfo(
            engine="qwen3-asr-onnx",
            model=str(meta.get("source_name") or Path(meta["source"]).name),
            device="cpu",
            precision=f"onnx {meta['quantization']}",
            weights_bytes=size,
            version=f"onnxruntime {onnxruntime.__version__}",
            description=f"Qwen3-ASR (ONNX {meta['quantization']}, CPU)",
            attribution=("Alibaba Qwen", "https://github.com/QwenLM/Qwen3-ASR"),
        )
        _LOGGER.info(
            "Qwen3-ASR on the CPU via onnxruntime: %s, %s threads, batch up to %d, %.0f MiB",
            meta["quantization"],
            threads or "all",
            self.max_batch_size,
            size / 2**20,
        )

    def _count_tokens(self, text: str) -> int:
        return self._model.count_tokens(text)

    def _decode(self, batch: list[_Piece]) -> list[_Outcome]:
        model = self._model
        features = model.features([piece.audio for piece in batch])
        audio = [model.encode(f) for f in features]
        prompts = [
            model.prompt(piece.context, piece.language, len(embeds))
            for piece, embeds in zip(batch, audio, strict=True)
        ]
        longest = max(len(piece.audio) for piece in batch) / SAMPLE_RATE
        raws = model.generate(prompts, audio, max_new_tokens(longest, self._max_new_tokens))
        results: list[_Outcome] = []
        for piece, raw in zip(batch, raws, strict=True):
            language, text = parse_output(raw, piece.language)
            results.append(AsrResult(text=text, language=self._code(language)))
        return results


__all__ = ["MAX_HINT_TOKENS", "Qwen3AsrOnnxEngine", "locate"]
