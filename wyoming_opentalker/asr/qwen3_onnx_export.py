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

Quantisation (``QWEN_ASR_ONNX_QUANT``), done here into onnxruntime's own operators:
``int8`` makes every linear layer a ``DynamicQuantizeMatMul`` (int8 weights, one scale per
output column, activations quantised per call) and the embedding table int8 rows with
one scale each; ``int4`` makes them ``MatMulNBits`` (4-bit, blocks of 64 along the input,
symmetric) and ``GatherBlockQuantized``; ``int8-int4`` (the default) keeps the audio
encoder at int8 and the language model at int4; ``none`` keeps FP32 (tests compare it
with the PyTorch engine). The convolution front always stays FP32.

Memory: the graphs are traced from a skeleton whose weights are zero-stride placeholders
(with a 16-row vocabulary), exported without weights, and each weight is then read from
the safetensors files, quantised and appended to the graph's data file one tensor at a
time. No full copy of the checkpoint is ever held: the 0.6B model converts in about
2 GiB (it needed 7.6 GiB when the loaded model was exported and quantised whole).

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
from typing import Any, ClassVar

_LOGGER = logging.getLogger(__name__)

ONNX_QUANT_MODES = ("int8-int4", "int8", "int4", "none")
FORMAT = 1  # bumped when the graphs' inputs or outputs change: older conversions are redone
MANIFEST = "manifest.json"
GRAPHS = ("conv", "encoder", "decoder")
INT4_BLOCK = 64
OPSET = 18
_EMBED = "thinker.model.embed_tokens.weight"
_HEAD = "thinker.lm_head.weight"
_TRACE_VOCAB = 16  # rows of the embedding and output layers while tracing (see _skeleton)


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
    vectors and the convolution front at FP32. The output layer is its own matrix in the
    decoder graph even where the checkpoint ties it to the embedding table."""
    shapes = dict(shapes)
    if _HEAD not in shapes and _EMBED in shapes:
        shapes[_HEAD] = shapes[_EMBED]
    total = 0.0
    for name, shape in shapes.items():
        count = math.prod(shape)
        mode = part_quant(quant, graph_part(name)) if len(shape) >= 2 else "none"
        total += count * {"none": 4.0, "int8": 1.0, "int4": 0.5 + 4 / INT4_BLOCK}[mode]
    return int(total)


def conversion_memory(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Peak memory of converting a checkpoint: about 0.8 GiB of libraries plus what the
    TorchScript exporter materialises of the placeholders while it works on the largest
    graph. Fitted to the 0.6B model (2.91 GiB in FP32 without a separate output layer):
    measured 1.98-2.21 GiB at ``int8-int4`` and 2.42 GiB at ``none``; the quantisation
    mode changes it little, as each tensor is quantised on its own."""
    fp32 = 4 * sum(math.prod(shape) for name, shape in shapes.items() if name != _HEAD)
    return int(0.8 * 1024**3 + 0.55 * fp32)


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
            # The head as its own (transposed) weight, so it is a plain MatMul by a
            # constant; its value is read from the checkpoint by ``_sources``.
            self.register_buffer("head", thinker.lm_head.weight.detach().t())
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


def _export(torch: Any, thinker: Any, part: str, module: Any, target: Path) -> Any:
    """Trace one module of the skeleton into an ONNX graph whose weights are graph
    inputs named by the module's state dict (filled in afterwards by ``_fill``)."""
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
            export_params=False,  # the placeholders' values are never wanted
            do_constant_folding=False,  # folding would materialise transposed weights
        )
    import onnx

    return onnx.load(str(target))


def _skeleton(source: Path) -> Any:
    """The model built from its config with every weight a zero-stride placeholder (one
    float each, distinct so the exporter cannot merge them) and its computed buffers
    real: tracing needs shapes, not weights, so no copy of the checkpoint is held."""
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
    )

    config = Qwen3ASRConfig.from_pretrained(str(source))
    register = torch.nn.Module.register_parameter

    def on_meta(module: Any, name: str, param: Any) -> None:
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
    try:
        model = Qwen3ASRForConditionalGeneration._from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    thinker = model.thinker
    vocab_tables = (thinker.model.embed_tokens, thinker.lm_head)
    count = 0
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            count += 1
            shape = tuple(param.shape)
            if module in vocab_tables:  # a zero-stride matrix is copied whole by a
                shape = (_TRACE_VOCAB, *shape[1:])  # matmul: trace with a short vocabulary
            value = torch.full((), 1.0 + count / 4096).expand(shape)
            setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
    return model.eval()


class _Checkpoint:
    """The checkpoint's tensors by name, each read on request from its safetensors file
    with plain reads (a memory map would leave every page read in this process's
    resident memory until the end)."""

    _DTYPES: ClassVar[dict[str, str]] = {
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "F64": "float64",
    }

    def __init__(self, source: Path) -> None:
        from ..memory import read_headers

        self._headers = read_headers(source)
        if not self._headers:
            raise FileNotFoundError(f"no safetensors weights in {source}")

    def __contains__(self, key: str) -> bool:
        return key in self._headers

    def get(self, key: str) -> Any:
        """The tensor as stored (its own dtype)."""
        import torch

        if key not in self._headers:
            raise KeyError(f"the checkpoint has no tensor {key}")
        header = self._headers[key]
        if header.dtype not in self._DTYPES:
            raise ValueError(f"{key} is stored as {header.dtype}, not a floating type")
        dtype = getattr(torch, self._DTYPES[header.dtype])
        if not header.length:
            return torch.zeros(header.shape, dtype=dtype)
        buffer = bytearray(header.length)
        with header.file.open("rb") as handle:
            handle.seek(header.offset)
            if handle.readinto(buffer) != header.length:
                raise ValueError(f"{header.file.name} ends inside tensor {key}")
        return torch.frombuffer(buffer, dtype=dtype).reshape(header.shape)


def _sources(model: Any, module: Any, checkpoint: _Checkpoint) -> dict[str, Callable[[], Any]]:
    """For every weight of ``module`` (by its state-dict name, which the exporter gives
    the graph input), how to get its FP32 value: read from the checkpoint, or the
    module's own computed buffer. ``head`` is the output layer transposed (the input
    embedding where the checkpoint ties the two)."""
    import torch

    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    head = _HEAD if _HEAD in checkpoint else _EMBED  # tied: the embedding table

    def read(key: str, transpose: bool = False) -> Callable[[], Any]:
        def value() -> Any:  # a transpose stays a view: whoever writes it lays it out once
            tensor = checkpoint.get(key).to(torch.float32)
            return tensor.t() if transpose else tensor

        return value

    sources: dict[str, Callable[[], Any]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if name == "head":
            sources[name] = read(head, transpose=True)
        elif id(tensor) in names:
            sources[name] = read(names[id(tensor)])
        elif 0 not in tensor.stride() or tensor.numel() <= 1:
            sources[name] = _computed(tensor)
    return sources


def _computed(tensor: Any) -> Callable[[], Any]:
    return lambda: tensor.detach().float().contiguous()


class _Writer:
    """Appends tensors to one external-data file and returns their ``TensorProto``s
    pointing into it (large ones page-aligned, so onnxruntime can map them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")

    def add(self, name: str, array: Any, data_type: int | None = None, dims: Any = None) -> Any:
        import numpy as np
        import onnx

        array = np.ascontiguousarray(array)
        if array.nbytes >= 1 << 16 and self._file.tell() % 4096:
            self._file.write(b"\0" * (4096 - self._file.tell() % 4096))
        offset = self._file.tell()
        self._file.write(array.tobytes())
        tensor = onnx.TensorProto()
        tensor.name = name
        tensor.data_type = data_type or onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape if dims is None else dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.path.name),
            ("offset", str(offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    def close(self) -> None:
        self._file.close()


def _int8_columns(weight: Any) -> tuple[Any, Any]:
    """Symmetric int8 per output column of a ``[K, N]`` matrix: (values, scales)."""
    import torch

    scale = weight.abs().amax(dim=0).clamp_min(1e-12) / 127
    values = torch.empty(weight.shape, dtype=torch.int8)
    for start in range(0, weight.shape[0], 1024):  # bounded temporaries
        rows = weight[start : start + 1024] / scale
        values[start : start + 1024] = rows.round_().clamp_(-127, 127).to(torch.int8)
    return values.numpy(), scale.numpy()


def _int4_blocks(weight: Any, offset: int = 0) -> tuple[Any, Any]:
    """Symmetric 4-bit blocks of ``INT4_BLOCK`` along the last axis of ``[rows, K]``:
    the scale is the block's value of largest magnitude over -8, so that value maps to
    -8 exactly. Returns (two values per byte, low nibble first; scales ``[rows, blocks]``).
    ``offset`` 8 stores them unsigned, as ``MatMulNBits`` reads them without zero points
    (``GatherBlockQuantized`` reads signed ``INT4``)."""
    import torch

    rows, width = weight.shape
    blocks = -(-width // INT4_BLOCK)
    packed = torch.empty(rows, blocks * INT4_BLOCK // 2, dtype=torch.uint8)
    scales = torch.empty(rows, blocks, dtype=torch.float32)
    for start in range(0, rows, 4096):
        x = weight[start : start + 4096]
        if width % INT4_BLOCK:  # MatMulNBits pads K with zeros up to whole blocks
            x = torch.nn.functional.pad(x, (0, blocks * INT4_BLOCK - width))
        x = x.reshape(-1, blocks, INT4_BLOCK)
        high, low = x.amax(dim=-1), x.amin(dim=-1)
        scale = torch.where(high.abs() > low.abs(), high, low) / -8
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = (x / safe.unsqueeze(-1)).round_().clamp_(-8, 7).to(torch.int8).reshape(len(x), -1)
        nibbles = (q + offset).to(torch.uint8) & 0xF
        packed[start : start + 4096] = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        scales[start : start + 4096] = scale
    return packed.numpy(), scales.numpy()


def _fill(model: Any, sources: Mapping[str, Callable[[], Any]], mode: str, data: Path) -> None:
    """Turn the weight inputs of an exported graph into initializers in ``data``, one
    tensor at a time, quantising each matrix as it is read: linear layers (``MatMul`` or
    ``Gemm`` by a constant) become ``DynamicQuantizeMatMul`` (int8, per column) or
    ``MatMulNBits`` (int4), the embedding table a row-scaled int8 ``Gather`` or a 4-bit
    ``GatherBlockQuantized``. Transposes of weights are applied here, not in the graph."""
    from onnx import helper

    graph = model.graph
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, index))
    replaced: dict[int, list[Any]] = {}  # id(node) -> nodes in its place ([] removes it)
    initializers: list[Any] = []
    writer = _Writer(data)
    try:
        for graph_input in list(graph.input):
            name = graph_input.name
            if name not in sources:
                continue
            graph.input.remove(graph_input)
            value = sources[name]()
            tensor = name
            consumers = uses.get(name, [])
            if _is_transpose(consumers) and value.dim() == 2:
                replaced[id(consumers[0][0])] = []
                tensor = consumers[0][0].output[0]
                consumers = uses.get(tensor, [])
                value = value.t()
            nodes = _quantized(consumers, value, tensor, mode, writer, initializers)
            if nodes is None:
                initializers.append(writer.add(tensor, value.numpy()))
            else:
                replaced[id(consumers[0][0])] = nodes
            del value
    finally:
        writer.close()
    kept = []
    for node in graph.node:
        kept.extend(replaced.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    if any(n.domain == "com.microsoft" for n in kept):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _real_vocab(model: Any, vocab: int) -> None:
    """Undo the short tracing vocabulary in the graph's declared shapes: the logits get
    the real width, and the traced intermediate shapes are dropped (onnxruntime infers
    them again from the real initializers)."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        if output.name == "logits":
            output.type.tensor_type.shape.dim[-1].dim_value = vocab


def _is_transpose(consumers: list[tuple[Any, int]]) -> bool:
    if len(consumers) != 1 or consumers[0][0].op_type != "Transpose":
        return False
    perm = [list(a.ints) for a in consumers[0][0].attribute if a.name == "perm"]
    return not perm or perm[0] == [1, 0]


def _quantized(
    consumers: list[tuple[Any, int]],
    value: Any,
    tensor: str,
    mode: str,
    writer: _Writer,
    initializers: list[Any],
) -> list[Any] | None:
    """The nodes replacing the one consumer of weight ``value`` under ``mode``, their
    tensors written; None where it stays FP32 (``none``, vectors, other uses)."""
    import onnx
    from onnx import helper

    if mode == "none" or value.dim() != 2 or len(consumers) != 1:
        return None
    node, index = consumers[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bias = ""
    if node.op_type == "Gemm" and index == 1:
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            return None
        if attrs.get("transB", 0):
            value = value.t()
        bias = node.input[2] if len(node.input) > 2 else ""
    elif not (node.op_type == "MatMul" and index == 1) and not (
        node.op_type == "Gather" and index == 0 and attrs.get("axis", 0) == 0
    ):
        return None
    if node.op_type == "Gather":
        ids = node.input[1]
        if mode == "int4" and value.shape[1] % INT4_BLOCK == 0:
            packed, scales = _int4_blocks(value)
            initializers += [
                writer.add(f"{tensor}.q4", packed, onnx.TensorProto.INT4, value.shape),
                writer.add(f"{tensor}.scales", scales),
            ]
            return [
                helper.make_node(
                    "GatherBlockQuantized",
                    [f"{tensor}.q4", ids, f"{tensor}.scales"],
                    list(node.output),
                    domain="com.microsoft",
                    gather_axis=0,
                    quantize_axis=1,
                    block_size=INT4_BLOCK,
                    bits=4,
                )
            ]
        values, scales = _int8_columns(value.t())  # one scale per row of the table
        initializers += [
            writer.add(f"{tensor}.q8", values.T),
            writer.add(f"{tensor}.scales", scales.reshape(-1, 1)),
        ]
        out = node.output[0]
        return [
            helper.make_node("Gather", [f"{tensor}.q8", ids], [f"{out}.q8"]),
            helper.make_node("Gather", [f"{tensor}.scales", ids], [f"{out}.scale"]),
            helper.make_node("Cast", [f"{out}.q8"], [f"{out}.f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}.f", f"{out}.scale"], [out]),
        ]
    inputs = [node.input[0]]
    k, n = value.shape
    if mode == "int4":
        packed, scales = _int4_blocks(value.t(), 8)  # blocks run along K, per column
        initializers += [
            writer.add(f"{tensor}.q4", packed.reshape(n, -1, INT4_BLOCK // 2)),
            writer.add(f"{tensor}.scales", scales),
        ]
        inputs += [f"{tensor}.q4", f"{tensor}.scales"] + (["", "", bias] if bias else [])
        return [
            helper.make_node(
                "MatMulNBits",
                inputs,
                list(node.output),
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=INT4_BLOCK,
                accuracy_level=4,
            )
        ]
    values, scales = _int8_columns(value)
    initializers += [writer.add(f"{tensor}.q8", values), writer.add(f"{tensor}.scales", scales)]
    inputs += [f"{tensor}.q8", f"{tensor}.scales"] + (["", bias] if bias else [])
    return [
        helper.make_node("DynamicQuantizeMatMul", inputs, list(node.output), domain="com.microsoft")
    ]


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
    import onnx
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRProcessor
    from transformers import GenerationConfig

    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        say(f"converting {source} to ONNX ({quant}) in {target}")
        processor = Qwen3ASRProcessor.from_pretrained(str(source))
        model = _skeleton(source)
        checkpoint = _Checkpoint(source)
        thinker = model.thinker
        config = thinker.config
        modules = _modules(thinker)
        for part in GRAPHS:
            mode = part_quant(quant, part)
            say(f"exporting the {part} graph" + (f" ({mode})" if mode != "none" else ""))
            folder = work / part
            folder.mkdir()
            path = folder / f"{part}.onnx"
            graph = _export(torch, thinker, part, modules[part], path)
            data = path.with_name(path.name + ".data")
            _fill(graph, _sources(model, modules[part], checkpoint), mode, data)
            _real_vocab(graph, int(config.text_config.vocab_size))
            onnx.save_model(graph, str(path))
            del graph
        audio = config.audio_config
        text = config.text_config
        try:
            generation = GenerationConfig.from_pretrained(str(source))
        except OSError:  # no generation_config.json: the model class's defaults
            generation = model.generation_config
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
            "repetition_penalty": float(generation.repetition_penalty or 1.0),
            "source_name": source_name or source.name,
            "languages": list(getattr(model.config, "support_languages", None) or []),
            "prompt": _prompt_parts(processor),
        }
        del modules, thinker, model, checkpoint
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
