"""Weight-only quantisation of a loaded model's ``nn.Linear`` layers.

Two modes, each through the library that runs it on both 4 GB target cards:

* ``int8``: torchao's ``Int8WeightOnlyConfig`` (int8 weights, a float32 scale per
  output row, or per 128 inputs in FP16). Its eager path is plain PyTorch (cast, matmul,
  scale), so it runs on the CPU and on every CUDA GPU PyTorch supports, Pascal included,
  without ``torch.compile`` (which refuses GPUs below sm_70). Per row, it multiplies the
  activations by the *unscaled* int8 values and scales afterwards: in FP16 a 3000-valued
  activation channel makes that intermediate overflow to ``inf`` while the unquantised
  FP16 layer stays finite, so FP16 weights take 128-wide groups, whose path dequantises
  the weight first (1.04 instead of 1.00 bytes per weight).
* ``nf4``: bitsandbytes' ``Linear4bit`` (NF4, double-quantised block scales: 0.52 bytes
  per weight). Its CUDA kernels ship for sm_60 and up in the CUDA 11.8-12.6 builds
  (sm_70 in 12.8, sm_75 in 13.x) and it has a CPU backend. bitsandbytes' 8-bit matmul is
  not used: it needs int8 tensor cores (sm_75), which Pascal lacks.

Only ``nn.Linear`` layers are converted. Embeddings, norms and convolutions stay as they
are, and so does a linear whose weight is shared with another module (a tied
``lm_head``): quantising it would either break the embedding or store it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .device import Device, Precision

_LOGGER = logging.getLogger(__name__)

QuantMode = Literal["none", "int8", "nf4"]
QUANT_MODES: tuple[QuantMode, ...] = get_args(QuantMode)
SkipFn = Callable[[str, Any], bool]

TORCHAO_VERSION = "0.18.0"
BITSANDBYTES_VERSION = "0.50.2"
# FP16 int8 weights are scaled per group of inputs (see the module docstring): 128 wide
# (every Qwen3 0.6B linear), else the widest of these that divides the input size.
INT8_FP16_GROUPS = (128, 64, 32)
# torchao stores a float32 scale and an int8 zero point (always 0: symmetric) per group.
INT8_SCALE_BYTES = 5
# bitsandbytes NF4: 64 weights per block; block scales are themselves quantised to
# uint8 in groups of 256 with one float32 scale each, plus two small code tables.
NF4_BLOCK = 64
NF4_SCALE_GROUP = 256
NF4_TABLE_BYTES = 16 * 4 + 256 * 4 + 4
_ITEMSIZE = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}


class QuantUnavailable(RuntimeError):
    """The requested mode cannot run here; the message is one line saying why."""


@dataclass(frozen=True)
class QuantReport:
    """What ``quantize_linears`` did: weights only (biases are left as they were)."""

    mode: QuantMode
    converted: int
    skipped: int
    bytes_before: int
    bytes_after: int
    library: str = ""

    def summary(self) -> str:
        if self.mode == "none" or not self.converted:
            return f"weights not quantised ({self.mode})"
        return (
            f"{self.converted} linear layers in {self.mode} via {self.library} "
            f"({self.skipped} left unquantised): {self.bytes_before / 2**20:.0f} MiB -> "
            f"{self.bytes_after / 2**20:.0f} MiB"
        )


# torchao warns at import about its CUDA-only extensions (sm_90 and MX kernels, never
# used by int8 weight-only), and torch about torchao's enum registration. transformers
# imports torchao whenever it is installed, so these reach every Qwen start-up log.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_warnings() -> None:
    """Keep torchao's import-time warnings (see above) out of the log: call before
    importing transformers, qwen_asr or qwen_tts. Errors still show."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _import(name: str) -> tuple[Any, str | None]:
    """The library module, or ``None`` and why it cannot be imported."""
    import importlib

    quiet = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [logger.level for logger in quiet]
    quiet_import_warnings()
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # missing, or a native library that fails to load
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def nf4_min_capability(cuda_version: str | None) -> tuple[int, int]:
    """Oldest GPU bitsandbytes 0.50.2's NF4 kernels run on, by the CUDA build of torch
    (read from the cubins its wheel ships for each CUDA version)."""
    if cuda_version is None:
        return (6, 0)
    major, minor = (int(part) for part in cuda_version.split(".")[:2])
    if major >= 13:
        return (7, 5)
    if (major, minor) >= (12, 8):
        return (7, 0)
    return (6, 0)


def quant_available(
    mode: QuantMode,
    device: str,
    capability: tuple[int, int] | None = None,
    cuda_version: str | None = None,
) -> str | None:
    """``None`` if ``mode`` can run on ``device``, otherwise a one-line reason.

    ``capability`` and ``cuda_version`` (torch's CUDA build) default to the real GPU and
    torch; passing them answers for hardware this machine does not have."""
    if mode not in QUANT_MODES:
        return f"unknown quantisation {mode!r} (choose one of {', '.join(QUANT_MODES)})"
    if mode == "none":
        return None
    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        return f"{mode} quantisation runs on the CPU or a CUDA GPU, not on {device!r}"
    real_gpu = kind == "cuda" and capability is None
    if real_gpu:
        import torch

        if not torch.cuda.is_available():
            return f"{mode} quantisation on {device} needs a CUDA GPU, and torch sees none"
        major, minor = torch.cuda.get_device_capability(device)
        capability = (int(major), int(minor))
        cuda_version = torch.version.cuda
    if mode == "int8":
        _, error = _import("torchao")
        if error is not None:
            return f"int8 quantisation needs torchao=={TORCHAO_VERSION} ({error})"
        return None  # plain PyTorch ops: any CPU, any CUDA GPU torch itself runs on
    bnb, error = _import("bitsandbytes")
    if error is not None:
        return f"nf4 quantisation needs bitsandbytes=={BITSANDBYTES_VERSION} ({error})"
    if kind == "cuda" and capability is not None:
        if cuda_version is None:
            import torch

            cuda_version = torch.version.cuda
        need = nf4_min_capability(cuda_version)
        if capability < need:
            return (
                f"nf4 quantisation needs compute capability {need[0]}.{need[1]} with this "
                f"torch (CUDA {cuda_version}); this GPU is {capability[0]}.{capability[1]}"
            )
        if real_gpu and not getattr(bnb.cextension.lib, "compiled_with_cuda", False):
            return f"bitsandbytes has no native library for CUDA {cuda_version}"
    return None


def _precision(dtype: Any) -> Precision:
    return Precision(str(dtype).removeprefix("torch."))


def _int8_group(in_features: int, precision: Precision) -> int:
    """Inputs per int8 scale: 0 means one scale per output row, -1 no usable group."""
    if precision is not Precision.FP16:
        return 0
    return next((group for group in INT8_FP16_GROUPS if in_features % group == 0), -1)


def convertible(mode: QuantMode, in_features: int, dtype: Any) -> bool:
    """Whether ``mode`` takes a linear of this shape and dtype (others stay unquantised)."""
    if mode == "none":
        return False
    if mode == "int8":
        return _int8_group(in_features, _precision(dtype)) >= 0
    return True


def quantized_weight_bytes(shapes: Iterable[tuple[int, int]], mode: QuantMode, dtype: Any) -> int:
    """Bytes the weights of linears of these ``(out_features, in_features)`` shapes hold
    once quantised in ``mode`` from ``dtype`` (a torch dtype or ``Precision``); a shape
    the mode does not take is counted unquantised. For the start-up memory plan: shapes
    only, no weights loaded."""
    precision = _precision(dtype)
    total = 0
    for out_features, in_features in shapes:
        weights = out_features * in_features
        if not convertible(mode, in_features, precision):
            total += weights * _ITEMSIZE[precision]
        elif mode == "int8":
            group = _int8_group(in_features, precision)
            scales = out_features * (in_features // group if group else 1)
            total += weights + INT8_SCALE_BYTES * scales
        else:  # nf4
            blocks = -(-weights // NF4_BLOCK)
            total += -(-weights // 2) + blocks + 4 * -(-blocks // NF4_SCALE_GROUP)
            total += NF4_TABLE_BYTES
    return total


def _tied(module: Any) -> set[int]:
    """Identities of parameters that more than one module holds (tied weights)."""
    owners: dict[int, int] = {}
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {key for key, count in owners.items() if count > 1}


def _candidates(module: Any, mode: QuantMode, skip: SkipFn | None) -> tuple[list[Any], int]:
    """``(name, parent, attribute, linear)`` for every linear to convert, and how many
    linears are left as they are."""
    from torch import nn

    tied = _tied(module)
    chosen: list[Any] = []
    skipped = 0
    for name, sub in module.named_modules():
        for attr, child in sub.named_children():
            if type(child) is not nn.Linear:  # subclasses (bitsandbytes', ...) are not ours
                continue
            full = f"{name}.{attr}" if name else attr
            weight = child.weight
            if (
                (skip is not None and skip(full, child))
                or id(weight) in tied
                or not weight.dtype.is_floating_point
                or type(weight) is not nn.Parameter
                or not convertible(mode, child.in_features, weight.dtype)
            ):
                skipped += 1
                continue
            chosen.append((full, sub, attr, child))
    return chosen, skipped


def linear_shapes(module: Any, mode: QuantMode = "int8") -> list[tuple[int, int]]:
    """``(out_features, in_features)`` of the linears ``quantize_linears`` would convert;
    works on a model built on the meta device (no weights)."""
    chosen, _ = _candidates(module, mode, None)
    return [(linear.out_features, linear.in_features) for _, _, _, linear in chosen]


def stored_bytes(tensor: Any) -> int:
    """Bytes a (possibly quantised) weight really holds: every inner tensor, once."""
    import torch

    parts: list[Any] = []

    def collect(value: Any) -> None:
        if value is None:
            return
        flatten = getattr(value, "__tensor_flatten__", None)
        if flatten is not None and type(value) not in (torch.Tensor, torch.nn.Parameter):
            names, _ = flatten()
            for name in names:
                collect(getattr(value, name))
            return
        parts.append(value)
        state = getattr(value, "quant_state", None)  # bitsandbytes keeps its scales here
        if state is not None:
            collect(state.absmax)
            collect(state.code)
            collect(getattr(state, "offset", None))
            nested = getattr(state, "state2", None)
            if nested is not None:
                collect(nested.absmax)
                collect(nested.code)

    collect(tensor)
    seen: set[tuple[int, int]] = set()
    total = 0
    for part in parts:
        size = part.numel() * part.element_size()
        key = (part.data_ptr(), size)
        if key not in seen:
            seen.add(key)
            total += size
    return total


def weight_bytes(*modules: Any) -> int:
    """Memory held by torch modules' parameters and buffers, at what they really hold:
    quantised weights at their packed size (``numel() * element_size()`` reports a
    quantised torchao weight at full size); the codec's codebooks are buffers, most of
    its size."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += stored_bytes(tensor)
    return total


def _library(name: str) -> Any:
    module, error = _import(name)
    if module is None:
        raise QuantUnavailable(f"{name} cannot be imported: {error}")
    return module


def _to_int8(linear: Any, device: str) -> Any:
    ao = _library("torchao.quantization")
    group = _int8_group(linear.in_features, _precision(linear.weight.dtype))
    config = ao.Int8WeightOnlyConfig(
        granularity=ao.PerGroup(group) if group else ao.PerRow(), set_inductor_config=False
    )
    ao.quantize_(linear, config, device=device)
    return linear


def _to_nf4(linear: Any, device: str) -> Any:
    import torch

    bnb = _library("bitsandbytes")
    weight = linear.weight.detach()
    replacement = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=weight.dtype,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    replacement.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=True, quant_type="nf4", module=replacement
    )
    if linear.bias is not None:
        replacement.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
    replacement._forward_hooks.update(linear._forward_hooks)
    replacement._forward_pre_hooks.update(linear._forward_pre_hooks)
    replacement.train(linear.training)
    replacement = replacement.to(device)  # bitsandbytes quantises on this move
    # On CPUs with AVX512-BF16, bitsandbytes 0.50.2 repacks the weights at the first call
    # for a bfloat16 kernel, and the repack fails for a width that is not a whole number
    # of 64-blocks (the tiny test checkpoints' 32). Its plain path handles any width.
    replacement.support_avx512bf16_for_cpu = False
    return replacement


def configured_mode(setting: str) -> QuantMode:
    """A ``*_QUANT`` setting as the engine applies it. ``auto`` is made concrete by the
    start-up planner before an engine is built, so here it can only mean none."""
    mode: QuantMode = "none" if setting == "auto" else setting  # type: ignore[assignment]
    return mode


def auto_modes(setting: str, device: Device) -> list[QuantMode]:
    """The modes the planner tries for a ``*_QUANT`` setting, most preferred first: the
    one configured, or for ``auto`` none, then int8 where it runs. nf4 is never picked
    for the user (about 9% output error per layer measured on random weights, its effect
    on real speech unmeasured); it is offered as a fix."""
    if setting != "auto":
        return [configured_mode(setting)]
    if not device.is_cuda or device.gpu is None:
        return ["none"]
    capability = device.gpu.capability
    int8: list[QuantMode] = ["int8"]
    return ["none", *(m for m in int8 if quant_available(m, device.name, capability) is None)]


def quantize_linears(
    module: Any, mode: QuantMode, device: str, *, skip: SkipFn | None = None
) -> QuantReport:
    """Replace ``module``'s ``nn.Linear`` weights by ``mode``'s, placed on ``device``.

    Each linear is quantised on ``device`` and its 16-bit weight dropped before the next,
    so a model loaded on the CPU and quantised for ``"cuda"`` never holds its 16-bit
    linears on the GPU (the caller moves the remaining modules afterwards).
    ``skip(name, linear)`` returning True keeps a linear as it is (e.g. a head or the
    codec); tied weights are always kept. Raises ``QuantUnavailable`` with the reason."""
    if mode == "none":
        return QuantReport(mode, 0, 0, 0, 0)
    reason = quant_available(mode, device)
    if reason is not None:
        raise QuantUnavailable(reason)
    chosen, skipped = _candidates(module, mode, skip)
    name, convert = ("torchao", _to_int8) if mode == "int8" else ("bitsandbytes", _to_nf4)
    library = f"{name} {getattr(_import(name)[0], '__version__', '?')}"
    before = after = 0
    for _, parent, attr, linear in chosen:
        if linear.weight.device.type == "meta":
            raise QuantUnavailable("cannot quantise weights that are not loaded (meta device)")
        before += linear.weight.numel() * linear.weight.element_size()
        replacement = convert(linear, device)
        setattr(parent, attr, replacement)
        after += stored_bytes(replacement.weight)
    report = QuantReport(mode, len(chosen), skipped, before, after, library)
    _LOGGER.debug("%s", report.summary())
    return report
