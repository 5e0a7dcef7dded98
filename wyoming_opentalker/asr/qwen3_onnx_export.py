"""Convert a Qwen3-ASR checkpoint into the three ONNX graphs ``qwen3_asr_onnx`` runs.

Written for this project (the public Qwen3-ASR ONNX exporters carry no licence). The
graphs mirror upstream's ``Qwen3ASRForConditionalGeneration`` exactly, with the parts
that are Python control flow there done by the runtime in NumPy instead:

* ``conv.onnx``: the audio tower's three strided convolutions, its projection and the
  sinusoidal positions, for a stack of 1 s mel chunks (``[chunks, 1, mels, frames]`` →
  ``[chunks, tokens, d_model]``; 13 tokens for a full 100-frame chunk).
* ``encoder.onnx``: the audio tower's transformer layers and output projection for one
  attention window (upstream attends within windows of ``n_window_infer`` frames and
  never across them, so one window at a time is exact and bounds working memory).
* ``decoder.onnx``: the language model with an explicit KV cache. It embeds the token
  ids itself and takes the audio embeddings where the prompt has audio placeholders, and
  returns the logits of the last position only (what greedy decoding reads).

Positions: Qwen3-ASR's multimodal RoPE gets three identical position streams for audio
and text, which makes it ordinary RoPE over the position ids.

Quantisation (``QWEN_ASR_ONNX_QUANT``): ``int8`` is onnxruntime's dynamic int8
(``MatMulInteger``); ``int4`` is its block-wise 4-bit ``MatMulNBits`` (block 64, symmetric,
int8 activations); ``int8-int4`` (the default) keeps the audio encoder at int8 and the
language model at int4; ``none`` keeps FP32 (tests compare it with the PyTorch engine).

The finished model is written into a temporary folder beside its destination, its
files' sizes and SHA-256 recorded in ``manifest.json`` (written last), and only then
renamed into place: a conversion that is killed leaves nothing a later start trusts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

ONNX_QUANT_MODES = ("int8-int4", "int8", "int4", "none")
FORMAT = 1  # bumped when the graphs' inputs or outputs change: older conversions are redone
MANIFEST = "manifest.json"
GRAPHS = ("conv", "encoder", "decoder")
INT4_BLOCK = 64
OPSET = 18


def part_quant(quant: str, part: str) -> str:
    """The quantisation one graph gets under mode ``quant``: ``none``, ``int8``, ``int4``.
    The convolution front stays FP32 (its ``Conv`` weights are small)."""
    if quant == "none" or part == "conv":
        return "none"
    if quant == "int8-int4":
        return "int8" if part == "encoder" else "int4"
    return quant


def graph_part(name: str) -> str:
    """Which graph a checkpoint tensor ends up in."""
    if ".audio_tower.conv" in name:
        return "conv"
    return "encoder" if ".audio_tower." in name else "decoder"


def converted_bytes(shapes: Mapping[str, tuple[int, ...]], quant: str) -> int:
    """The size a conversion's weight files will have, from the checkpoint's tensor
    shapes: matrices at 1 byte (int8) or 4 bits plus an FP32 scale per block (int4),
    vectors and the convolution front at FP32. The audio encoder's linears export as
    ``Gemm``, which onnxruntime's 4-bit quantiser does not take: under ``int4`` they
    stay FP32 (measured: 0.70 GB of encoder files, against 0.18 GB at int8)."""
    total = 0.0
    for name, shape in shapes.items():
        count = math.prod(shape)
        part = graph_part(name)
        mode = part_quant(quant, part) if len(shape) >= 2 else "none"
        if mode == "int4" and part == "encoder":
            mode = "none"
        total += count * {"none": 4.0, "int8": 1.0, "int4": 0.5 + 4 / INT4_BLOCK}[mode]
    return int(total)


def conversion_memory(shapes: Mapping[str, tuple[int, ...]], quant: str) -> int:
    """Peak memory of converting a checkpoint: about 0.6 GiB of libraries, the model in
    FP32, and the exported graph's own copy of it; onnxruntime's int8 quantiser holds a
    further copy. Fitted to the 0.6B model (3.49 GiB in FP32), measured at 7.58 GiB for
    ``int8-int4`` and ``int4`` and 9.4-10.0 GiB for ``int8``."""
    fp32 = 4 * sum(math.prod(shape) for shape in shapes.values())
    return int(0.6 * 1024**3 + (2.7 if quant == "int8" else 2.0) * fp32)


def _modules(thinker: Any) -> dict[str, Any]:
    """The three exportable modules, built around the loaded thinker's own layers."""
    import torch
    from torch import nn
    from torch.nn import functional

    tower = thinker.audio_tower
    text = thinker.model
    text_config = thinker.config.text_config

    class Conv(nn.Module):
        positions: Any

        def __init__(self) -> None:
            super().__init__()
            self.tower = tower
            self.register_buffer("positions", tower.positional_embedding.positional_embedding)

        def forward(self, chunks: Any) -> Any:
            x = functional.gelu(self.tower.conv2d1(chunks))
            x = functional.gelu(self.tower.conv2d2(x))
            x = functional.gelu(self.tower.conv2d3(x))
            b, c, f, t = x.shape
            x = self.tower.conv_out(x.permute(0, 3, 1, 2).reshape(b, t, c * f))
            return x + self.positions[:t].unsqueeze(0)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, hidden: Any) -> Any:
            length = hidden.shape[0]
            for layer in self.tower.layers:
                attn = layer.self_attn
                heads = attn.num_heads
                residual = hidden
                x = layer.self_attn_layer_norm(hidden)
                q = attn.q_proj(x).reshape(length, heads, -1).transpose(0, 1)
                k = attn.k_proj(x).reshape(length, heads, -1).transpose(0, 1)
                v = attn.v_proj(x).reshape(length, heads, -1).transpose(0, 1)
                weights = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * attn.scaling, -1)
                x = torch.matmul(weights, v).transpose(0, 1).reshape(length, -1)
                hidden = residual + attn.out_proj(x)
                residual = hidden
                x = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
                hidden = residual + x
            hidden = self.tower.ln_post(hidden)
            return self.tower.proj2(self.tower.act(self.tower.proj1(hidden)))

    rotary = text.rotary_emb

    class Decoder(nn.Module):
        head: Any

        def __init__(self) -> None:
            super().__init__()
            self.text = text
            self.register_buffer("inv_freq", rotary.inv_freq.float().clone())
            # The head as its own (transposed) weight, so quantisers see a plain MatMul.
            self.register_buffer("head", thinker.lm_head.weight.detach().t().contiguous())
            self.scaling = float(rotary.attention_scaling)

        def forward(
            self,
            input_ids: Any,
            audio: Any,
            audio_mask: Any,
            attention_mask: Any,
            position_ids: Any,
            *past: Any,
        ) -> Any:
            embeds = self.text.embed_tokens(input_ids)
            hidden = torch.where(audio_mask.unsqueeze(-1), audio, embeds)
            batch, steps = input_ids.shape
            freqs = position_ids.float().unsqueeze(-1) * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = (emb.cos() * self.scaling).unsqueeze(1)
            sin = (emb.sin() * self.scaling).unsqueeze(1)
            total = attention_mask.shape[1]
            start = total - steps
            query_pos = torch.arange(steps).unsqueeze(1) + start
            key_pos = torch.arange(total).unsqueeze(0)
            allowed = (key_pos <= query_pos).unsqueeze(0) & attention_mask.bool().unsqueeze(1)
            mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).unsqueeze(1)
            presents = []
            for index, layer in enumerate(self.text.layers):
                attn = layer.self_attn
                residual = hidden
                x = layer.input_layernorm(hidden)
                shape = (batch, steps, -1, attn.head_dim)
                q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
                k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
                v = attn.v_proj(x).view(shape).transpose(1, 2)
                q = q * cos + _rotate_half(torch, q) * sin
                k = k * cos + _rotate_half(torch, k) * sin
                k = torch.cat((past[2 * index], k), dim=2)
                v = torch.cat((past[2 * index + 1], v), dim=2)
                presents += [k, v]
                groups = attn.num_key_value_groups
                kk = k.repeat_interleave(groups, dim=1)
                vv = v.repeat_interleave(groups, dim=1)
                scores = torch.matmul(q, kk.transpose(2, 3)) * attn.scaling + mask
                x = torch.matmul(torch.softmax(scores, dim=-1), vv)
                x = x.transpose(1, 2).reshape(batch, steps, -1)
                hidden = residual + attn.o_proj(x)
                residual = hidden
                hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
            last = self.text.norm(hidden[:, -1, :])
            return (torch.matmul(last, self.head), *presents)

    del text_config
    return {"conv": Conv(), "encoder": Encoder(), "decoder": Decoder()}


def _rotate_half(torch: Any, x: Any) -> Any:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _export(torch: Any, thinker: Any, part: str, module: Any, target: Path) -> None:
    """Trace one module to ``target`` (weights in an external ``.data`` file)."""
    config = thinker.config
    audio = config.audio_config
    text = config.text_config
    layers = int(text.num_hidden_layers)
    kv_heads = int(text.num_key_value_heads)
    head_dim = int(getattr(text, "head_dim", text.hidden_size // text.num_attention_heads))
    if part == "conv":
        args: tuple[Any, ...] = (torch.zeros(2, 1, audio.num_mel_bins, 100),)
        names = ["chunks"]
        outputs = ["embeds"]
        axes: dict[str, dict[int, str]] = {
            "chunks": {0: "chunks", 3: "frames"},
            "embeds": {0: "chunks", 1: "tokens"},
        }
    elif part == "encoder":
        args = (torch.zeros(20, audio.d_model),)
        names, outputs = ["hidden"], ["audio"]
        axes = {"hidden": {0: "tokens"}, "audio": {0: "tokens"}}
    else:
        batch, steps, past = 2, 3, 4
        args = (
            torch.zeros(batch, steps, dtype=torch.long),
            torch.zeros(batch, steps, text.hidden_size),
            torch.zeros(batch, steps, dtype=torch.bool),
            torch.ones(batch, past + steps, dtype=torch.long),
            torch.zeros(batch, steps, dtype=torch.long),
            *(torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)),
        )
        kv = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
        names = ["input_ids", "audio", "audio_mask", "attention_mask", "position_ids", *kv]
        presents = [name.replace("past_", "present_") for name in kv]
        outputs = ["logits", *presents]
        axes = {
            "input_ids": {0: "batch", 1: "steps"},
            "audio": {0: "batch", 1: "steps"},
            "audio_mask": {0: "batch", 1: "steps"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "steps"},
            "logits": {0: "batch"},
            **{name: {0: "batch", 2: "past"} for name in kv},
            **{name: {0: "batch", 2: "total"} for name in presents},
        }
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(target),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    _external(target)


def _external(path: Path) -> None:
    """Rewrite ``path`` with every weight in one ``<name>.data`` file beside it (the
    exporter may have scattered them over many files; a >2 GB graph needs it anyway)."""
    import onnx

    model = onnx.load(str(path))
    for stray in path.parent.iterdir():  # the graph's own folder: nothing else lives there
        if stray != path:
            stray.unlink()
    data = path.with_name(path.name + ".data")
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )


def _quantize(path: Path, mode: str) -> None:
    """Quantise one graph in place (``mode`` int8 or int4)."""
    import onnx

    temporary = path.with_name(path.stem + ".q.onnx")
    if mode == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(path),
            str(temporary),
            op_types_to_quantize=["MatMul", "Gather"],
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(path)),
            bits=4,
            block_size=INT4_BLOCK,
            is_symmetric=True,
            accuracy_level=4,
            op_types_to_quantize=("MatMul", "Gather"),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(temporary), use_external_data_format=True)
    os.replace(temporary, path)
    _external(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _prompt_parts(processor: Any) -> dict[str, str]:
    """The chat template rendered once around markers, so the runtime builds the same
    prompt text as upstream's ``_build_text_prompt`` without the template engine."""
    context, audio_mark = "\x00CONTEXT\x00", "\x00AUDIO\x00"
    messages = [
        {"role": "system", "content": context},
        {"role": "user", "content": [{"type": "audio", "audio": ""}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    audio_token = processor.audio_token
    if text.count(context) != 1 or text.count(audio_token) != 1:
        raise ValueError("the chat template does not have one context and one audio place")
    text = text.replace(audio_token, audio_mark)
    before, rest = text.split(context)
    middle, after = rest.split(audio_mark)
    return {"before": before, "middle": middle, "after": after, "audio_token": audio_token}


def convert(
    source: Path,
    target: Path,
    quant: str = "int8-int4",
    progress: Callable[[str], None] | None = None,
    source_name: str | None = None,
) -> Path:
    """Convert the checkpoint in ``source`` into ``target`` (replaced only when complete)."""
    if quant not in ONNX_QUANT_MODES:
        raise ValueError(f"unknown quantisation {quant!r}; expected one of {ONNX_QUANT_MODES}")
    say = progress or _LOGGER.info
    import numpy as np
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )

    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        say(f"converting {source} to ONNX ({quant}) in {target}")
        processor = Qwen3ASRProcessor.from_pretrained(str(source))
        model = Qwen3ASRForConditionalGeneration.from_pretrained(
            str(source), dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        thinker = model.thinker
        modules = _modules(thinker)
        for part in GRAPHS:
            folder = work / part
            folder.mkdir()
            say(f"exporting the {part} graph")
            _export(torch, thinker, part, modules[part], folder / f"{part}.onnx")
        config = thinker.config
        audio = config.audio_config
        text = config.text_config
        meta = {
            "format": FORMAT,
            "source": str(source),
            "quantization": quant,
            "parts": {part: part_quant(quant, part) for part in GRAPHS},
            "num_mel_bins": int(audio.num_mel_bins),
            "n_window": int(audio.n_window),
            "n_window_infer": int(audio.n_window_infer),
            "d_model": int(audio.d_model),
            "hidden_size": int(text.hidden_size),
            "layers": int(text.num_hidden_layers),
            "kv_heads": int(text.num_key_value_heads),
            "head_dim": int(
                getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
            ),
            "audio_token_id": int(config.audio_token_id),
            "eos_token_ids": _eos_ids(model),
            "repetition_penalty": float(model.generation_config.repetition_penalty or 1.0),
            "source_name": source_name or source.name,
            "languages": list(getattr(model.config, "support_languages", None) or []),
            "prompt": _prompt_parts(processor),
        }
        del modules, thinker, model
        import gc

        gc.collect()
        for part in GRAPHS:
            mode = part_quant(quant, part)
            if mode != "none":
                say(f"quantising the {part} graph ({mode})")
                _quantize(work / part / f"{part}.onnx", mode)
        extractor = processor.feature_extractor
        np.save(work / "mel_filters.npy", np.asarray(extractor.mel_filters, dtype=np.float32))
        meta["features"] = {
            "n_fft": int(extractor.n_fft),
            "hop_length": int(extractor.hop_length),
            "sampling_rate": int(extractor.sampling_rate),
        }
        processor.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        (work / "opentalker.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        files = sorted(p for p in work.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "files": {
                str(p.relative_to(work)): {"size": p.stat().st_size, "sha256": sha256(p)}
                for p in files
            },
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    say(f"converted in {time.monotonic() - started:.0f} s: {total / 2**20:.0f} MiB in {target}")
    return target


def _eos_ids(model: Any) -> list[int]:
    """The end tokens upstream's ``generate`` stops at (its own default argument)."""
    import inspect

    default = inspect.signature(type(model).generate).parameters["eos_token_id"].default
    values = default if isinstance(default, list) else [default]
    return [int(i) for i in values]
