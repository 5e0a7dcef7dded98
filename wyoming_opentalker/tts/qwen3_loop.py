"""Our own Qwen3-TTS CustomVoice decode loop: prefill once, then per codec frame one
talker step and the 15 code-predictor steps, with preallocated KV caches.

Upstream's ``generate()`` runs the talker through Hugging Face ``generate()`` and, inside
every talker step, a second ``generate()`` of the code predictor: thousands of Python
calls and operator launches per 80 ms frame, which is what keeps small GPUs below real
time. This loop calls the same submodules (so norms, rotary tables and quantised linears
behave as upstream's), keeps K/V in tensors allocated once, and samples exactly as
upstream's defaults do (repetition penalty on the first codebook, ``min_new_tokens``,
the suppressed control range, temperature and top-k/top-p, EOS). With sampling off it
produces upstream's frames (tested on a tiny checkpoint).

On CUDA the talker step and the whole 15-step predictor loop (sampling included) are
captured as CUDA graphs over static buffers and replayed per frame; the talker's own
sampling stays eager, because reading its token back is the one host sync a frame needs
(to see EOS). Anything that fails to capture falls back to the eager loop.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

_LOGGER = logging.getLogger(__name__)

# Eager runs before a capture, so lazy initialisation (cuBLAS handles, workspaces)
# happens outside the graph.
GRAPH_WARMUP_STEPS = 3


@dataclass(frozen=True)
class Sampling:
    """One stage's sampling, as upstream's ``generate()`` configures it."""

    do_sample: bool
    top_k: int
    top_p: float
    temperature: float


@dataclass(frozen=True)
class Prompt:
    """What upstream's prompt builder hands its talker ``generate()``."""

    embeds: Any  # (1, L, hidden)
    trailing: Any  # (1, S, hidden): text still to feed, one position per frame
    pad: Any  # (1, 1, hidden): fed once the trailing text is used up
    talker: Sampling
    predictor: Sampling
    repetition_penalty: float
    min_new_tokens: int
    eos: int
    suppress: tuple[int, ...]

    @classmethod
    def from_generate_kwargs(cls, kwargs: dict[str, Any]) -> Prompt:
        """From the keyword arguments upstream passes ``talker.generate``."""
        return cls(
            embeds=kwargs["inputs_embeds"],
            trailing=kwargs["trailing_text_hidden"],
            pad=kwargs["tts_pad_embed"],
            talker=Sampling(
                bool(kwargs["do_sample"]),
                int(kwargs["top_k"] or 0),
                float(kwargs["top_p"]),
                float(kwargs["temperature"]),
            ),
            predictor=Sampling(
                bool(kwargs["subtalker_dosample"]),
                int(kwargs["subtalker_top_k"] or 0),
                float(kwargs["subtalker_top_p"]),
                float(kwargs["subtalker_temperature"]),
            ),
            repetition_penalty=float(kwargs["repetition_penalty"]),
            min_new_tokens=int(kwargs.get("min_new_tokens") or 0),
            eos=int(kwargs["eos_token_id"]),
            suppress=tuple(int(i) for i in kwargs.get("suppress_tokens") or ()),
        )


class Overflow(Exception):
    """The talker's or predictor's logits were not finite (an FP16 overflow); raised by
    both decode loops."""


def unsupported(talker: Any) -> str | None:
    """Why this talker cannot run in the lean loop (it then runs upstream's), or None."""
    for name, config in (
        ("talker", talker.config),
        ("code predictor", talker.code_predictor.config),
    ):
        if getattr(config, "sliding_window", None) is not None:
            return f"the {name} uses sliding-window attention"
    return None


def warp(scores: Any, sampling: Sampling) -> Any:
    """Temperature, top-k and top-p, in Hugging Face's order and with its tie rules;
    nothing when sampling is off (greedy decoding applies no warpers)."""
    import torch

    if not sampling.do_sample:
        return scores
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if sampling.top_p < 1.0:
        ordered, index = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(-1, index, drop), -math.inf)
    return scores


def pick(scores: Any, sampling: Sampling) -> Any:
    """One token per row: a draw from softmax(scores), or the argmax. The draw is the
    exponential race (argmax of p / Exp(1)), the same distribution as ``multinomial``
    with one sample, but with no host-side validity check, so it can be graph-captured."""
    import torch

    if not sampling.do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0)
    return (probs / race).argmax(dim=-1)


def _fast(module: Any) -> Callable[[Any], Any]:
    """A plain ``nn.Linear`` or RMSNorm as a direct functional call (no module hooks, no
    Python-level float32 round trip); anything else (a quantised linear) as itself."""
    import torch
    import torch.nn.functional as F

    if type(module) is torch.nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    eps = getattr(module, "variance_epsilon", None)
    if type(module).__name__.endswith("RMSNorm") and eps is not None:
        weight = module.weight
        shape = (int(weight.shape[0]),)
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return module  # type: ignore[no-any-return]


class _Layer:
    """One decoder layer's parts, resolved once."""

    def __init__(self, layer: Any) -> None:
        attention = layer.self_attn
        self.input_norm = _fast(layer.input_layernorm)
        self.q = _fast(attention.q_proj)
        self.k = _fast(attention.k_proj)
        self.v = _fast(attention.v_proj)
        self.o = _fast(attention.o_proj)
        self.q_norm = _fast(attention.q_norm)
        self.k_norm = _fast(attention.k_norm)
        self.post_norm = _fast(layer.post_attention_layernorm)
        mlp = layer.mlp
        self.gate = _fast(mlp.gate_proj)
        self.up = _fast(mlp.up_proj)
        self.down = _fast(mlp.down_proj)
        self.act = mlp.act_fn


class Stack:
    """A decoder stack (the talker's layers or the code predictor's) stepped over a
    preallocated KV cache, calling the layers' own submodules."""

    def __init__(self, model: Any, cos: Any, sin: Any, capacity: int, *, zeroed: bool) -> None:
        import torch
        from qwen_tts.core.models.modeling_qwen3_tts import rotate_half

        self._rotate_half = rotate_half  # upstream's, so the rotation is exactly its
        self.layers = [_Layer(layer) for layer in model.layers]
        self.norm = _fast(model.norm)
        attention = model.layers[0].self_attn
        config = attention.config
        self.head_dim = int(attention.head_dim)
        self.scaling = float(attention.scaling)
        kv_heads = int(config.num_key_value_heads)
        self.gqa = int(config.num_attention_heads) != kv_heads
        weight = model.layers[0].input_layernorm.weight
        shape = (len(self.layers), 1, kv_heads, capacity, self.head_dim)
        make = torch.zeros if zeroed else torch.empty  # masked attention reads every slot
        self.keys = make(shape, dtype=cos.dtype, device=weight.device)
        self.values = make(shape, dtype=cos.dtype, device=weight.device)
        self.cos = cos[:capacity]
        self.sin = sin[:capacity]
        self.slots = torch.arange(capacity, device=weight.device)

    def _attend(self, layer: _Layer, x: Any, cos: Any, sin: Any, store: Callable[..., Any]) -> Any:
        rotate_half = self._rotate_half
        length = x.shape[1]
        shape = (1, length, -1, self.head_dim)
        h = layer.input_norm(x)
        q = layer.q_norm(layer.q(h).view(shape)).transpose(1, 2)
        k = layer.k_norm(layer.k(h).view(shape)).transpose(1, 2)
        v = layer.v(h).view(shape).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = store(q, k, v)
        x = x + layer.o(out.transpose(1, 2).reshape(1, length, -1))
        h = layer.post_norm(x)
        return x + layer.down(layer.act(layer.gate(h)) * layer.up(h))

    def run(self, x: Any, start: int) -> Any:
        """Positions ``start`` .. ``start + len``: the prompt (from 0, causal) or one
        step. Attends over the filled slots only. Returns the final-norm hidden states."""
        import torch.nn.functional as F

        end = start + x.shape[1]
        cos = self.cos[start:end][None, None]
        sin = self.sin[start:end][None, None]
        causal = x.shape[1] > 1
        if causal and start:
            raise ValueError("a multi-position run starts at position 0")
        for index, layer in enumerate(self.layers):

            def store(q: Any, k: Any, v: Any, index: int = index) -> Any:
                self.keys[index, :, :, start:end] = k
                self.values[index, :, :, start:end] = v
                return F.scaled_dot_product_attention(
                    q,
                    self.keys[index, :, :, :end],
                    self.values[index, :, :, :end],
                    is_causal=causal,
                    scale=self.scaling,
                    enable_gqa=self.gqa,
                )

            x = self._attend(layer, x, cos, sin, store)
        return self.norm(x)

    def step(self, x: Any, position: Any) -> Any:
        """One position given as a one-element device tensor, attending over the whole
        capacity with a mask: no Python value depends on the position, so a CUDA graph
        of this replays for every frame."""
        import torch.nn.functional as F

        cos = self.cos.index_select(0, position)[None, None]
        sin = self.sin.index_select(0, position)[None, None]
        mask = (self.slots <= position)[None, None, None, :]
        for index, layer in enumerate(self.layers):

            def store(q: Any, k: Any, v: Any, index: int = index) -> Any:
                self.keys[index].index_copy_(2, position, k)
                self.values[index].index_copy_(2, position, v)
                return F.scaled_dot_product_attention(
                    q,
                    self.keys[index],
                    self.values[index],
                    attn_mask=mask,
                    scale=self.scaling,
                    enable_gqa=self.gqa,
                )

            x = self._attend(layer, x, cos, sin, store)
        return self.norm(x)


def rope_table(rotary: Any, length: int, dtype: Any, device: Any, streams: int) -> tuple[Any, Any]:
    """cos/sin for positions 0..length-1 from the model's own rotary module. The talker's
    multimodal rotary takes three position streams; for text they are equal, so every
    section of the combined table is the first stream's."""
    import torch

    positions = torch.arange(length, device=device)[None]
    if streams == 3:
        positions = positions[None].expand(3, 1, -1)
    probe = torch.zeros(1, dtype=dtype, device=device)
    cos, sin = rotary(probe, positions)
    if streams == 3:
        cos, sin = cos[0], sin[0]
    return cos[0], sin[0]


class LeanTalker:
    """The decode loop over one loaded ``Qwen3TTSForConditionalGeneration``."""

    def __init__(self, model: Any, *, graph_capacity: int = 0) -> None:
        """``graph_capacity`` > 0 (CUDA only) captures graphs for prompts plus frames up to
        that many positions; 0 runs eagerly with caches sized per request."""
        import torch

        self._torch = torch
        self.talker = model.talker
        self.predictor = model.talker.code_predictor
        self.groups = int(model.config.talker_config.num_code_groups)
        weight = self.talker.codec_head.weight
        self.device = weight.device
        self.dtype = self.talker.model.norm.weight.dtype
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[Any, Any]] = {}
        self._masks: dict[tuple[int, bool, tuple[int, ...], int], Any] = {}
        self._graphs: _Graphs | None = None
        if graph_capacity and self.device.type == "cuda":
            self.use_graphs(graph_capacity)

    def use_graphs(self, capacity: int) -> None:
        """Capture the talker step for ``capacity`` positions (the predictor loop is
        captured at its first use); on failure, stay eager."""
        try:
            with self._torch.inference_mode():
                self._graphs = _Graphs(self, capacity)
        except Exception as err:  # capture is an optimisation; eager is always right
            _LOGGER.warning("CUDA graphs unavailable for Qwen3-TTS (%s); running eagerly", err)
            self._graphs = None

    @property
    def graphed(self) -> bool:
        return self._graphs is not None

    def table(self, which: str, length: int) -> tuple[Any, Any]:
        """Rotary tables, grown on demand and kept."""
        have = self._tables.get(which)
        if have is None or have[0].shape[0] < length:
            size = max(length, 1024)
            module = self.talker.model if which == "talker" else self.predictor.model
            streams = 3 if which == "talker" else 1
            have = rope_table(module.rotary_emb, size, self.dtype, self.device, streams)
            self._tables[which] = have
        return have

    def talker_stack(self, capacity: int, *, zeroed: bool = False) -> Stack:
        cos, sin = self.table("talker", capacity)
        return Stack(self.talker.model, cos, sin, capacity, zeroed=zeroed)

    def predictor_stack(self, *, zeroed: bool = False) -> Stack:
        cos, sin = self.table("predictor", self.groups)
        return Stack(self.predictor.model, cos, sin, self.groups, zeroed=zeroed)

    def predict(self, stack: Stack, past: Any, first: Any, sampling: Sampling) -> tuple[Any, Any]:
        """Codebooks 1..15 for one frame from the talker's last hidden state and its
        first-codebook token (shape (1,)); also the sum of the frame's 16 codec
        embeddings, the talker's next input before the text part. All on the device."""
        torch = self._torch
        predictor = self.predictor
        embeddings = predictor.model.codec_embedding
        first_embed = self.talker.model.codec_embedding(first.view(1, 1))
        hidden = stack.run(predictor.small_to_mtp_projection(torch.cat((past, first_embed), 1)), 0)
        tokens = []
        parts = [first_embed]
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for group in range(self.groups - 1):
            logits = predictor.lm_head[group](hidden[:, -1]).float()
            bad = bad | ~torch.isfinite(logits).all()
            token = pick(warp(logits, sampling), sampling)
            tokens.append(token)
            embed = embeddings[group](token.view(1, 1))
            parts.append(embed)
            if group < self.groups - 2:
                hidden = stack.run(predictor.small_to_mtp_projection(embed), group + 2)
        summed = torch.cat(parts, dim=1).sum(1, keepdim=True)
        return torch.cat((*tokens, bad.view(1).long())), summed

    def first_token_scores(self, logits: Any, prompt: Prompt, seen: Any, produced: int) -> Any:
        """Upstream's logits processors on the talker's scores: repetition penalty over the
        first codebook so far, EOS barred before ``min_new_tokens``, the control range
        suppressed; then the warpers."""
        torch = self._torch
        scores = logits.float()
        if prompt.repetition_penalty != 1.0:
            penalised = torch.where(
                scores < 0, scores * prompt.repetition_penalty, scores / prompt.repetition_penalty
            )
            scores = torch.where(seen, penalised, scores)
        barred = self._barred(prompt, scores.shape[-1], produced < prompt.min_new_tokens)
        scores = scores.masked_fill(barred, -math.inf)
        return warp(scores, prompt.talker)

    def _barred(self, prompt: Prompt, vocab: int, eos_too: bool) -> Any:
        """The suppressed tokens (and EOS, early on) as a mask, built once."""
        key = (vocab, eos_too, prompt.suppress, prompt.eos)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._torch.zeros(vocab, dtype=self._torch.bool, device=self.device)
            mask[list(prompt.suppress)] = True
            if eos_too:
                mask[prompt.eos] = True
            self._masks[key] = mask
        return mask

    def frames(self, prompt: Prompt, cap: int) -> Generator[Any, None, None]:
        """Frames (groups codes each, on the device) until EOS or ``cap`` tokens, like
        upstream's ``max_new_tokens`` (the token sampled at the cap gets no frame), each
        as soon as it exists; generation pauses while the caller uses a frame, and ends
        when the caller stops iterating. Raises ``Overflow`` when logits stop being
        finite (checked at the one read-back per frame, so at most one frame late)."""
        with self._lock:
            graphs = self._graphs
            length = int(prompt.embeds.shape[1])
            if graphs is not None and length + cap > graphs.capacity:
                graphs = None  # longer than the captured capacity: eager, sized for it
            try:
                yield from self._frames(prompt, cap, graphs)
            except Overflow:
                if graphs is not None:  # masked slots must stay finite for later requests
                    graphs.clear()
                raise

    def _frames(
        self, prompt: Prompt, cap: int, graphs: _Graphs | None
    ) -> Generator[Any, None, None]:
        """The loop; inference mode is entered per step, never held across a yield."""
        torch = self._torch
        inference = torch.inference_mode
        length = int(prompt.embeds.shape[1])
        with inference():
            talker_stack = graphs.talker if graphs else self.talker_stack(length + cap)
            predictor_stack = graphs.predictor if graphs else self.predictor_stack()
            hidden = talker_stack.run(prompt.embeds.to(self.dtype), 0)[:, -1:]
            logits = self.talker.codec_head(hidden)[:, -1]
            seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=self.device)
            predictor_bad = torch.zeros((), dtype=torch.long, device=self.device)
        for produced in range(cap):
            with inference():
                bad = (~torch.isfinite(logits).all()).long() | predictor_bad
                scores = self.first_token_scores(logits, prompt, seen, produced)
                token = pick(scores, prompt.talker)
                value, overflow = torch.stack((token[0], bad)).tolist()  # the frame's one sync
                if overflow:
                    raise Overflow
                if value == prompt.eos or produced == cap - 1:
                    return
                seen[value] = True
                if graphs is not None:
                    codes, summed = graphs.predict(hidden, token, prompt.predictor)
                else:
                    codes, summed = self.predict(predictor_stack, hidden, token, prompt.predictor)
                predictor_bad = codes[-1]
                frame = torch.cat((token, codes[:-1]))
            yield frame
            with inference():
                if produced < prompt.trailing.shape[1]:
                    text = prompt.trailing[:, produced : produced + 1]
                else:
                    text = prompt.pad
                step_input = (summed + text).to(self.dtype)
                if graphs is not None:
                    hidden = graphs.talker_step(step_input, length + produced)
                else:
                    hidden = talker_stack.run(step_input, length + produced)
                logits = self.talker.codec_head(hidden)[:, -1]


def capture(fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
    """Run ``fn`` a few times on a side stream, then record it as a CUDA graph. Returns the
    replay and ``fn``'s outputs, which every replay overwrites in place."""
    import torch

    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(GRAPH_WARMUP_STEPS):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


class _Graphs:
    """CUDA graphs of the talker step and of the predictor loop over static buffers."""

    def __init__(self, lean: LeanTalker, capacity: int) -> None:
        import torch

        self.capacity = capacity
        self.talker = lean.talker_stack(capacity, zeroed=True)
        self.predictor = lean.predictor_stack(zeroed=True)
        hidden = int(lean.talker.config.hidden_size)
        device, dtype = lean.device, lean.dtype
        self._hidden_in = torch.zeros(1, 1, hidden, dtype=dtype, device=device)
        self._token_in = torch.zeros(1, dtype=torch.long, device=device)
        self._step_in = torch.zeros(1, 1, hidden, dtype=dtype, device=device)
        self._position = torch.zeros(1, dtype=torch.long, device=device)
        self._lean = lean
        self._predict: dict[Sampling, tuple[Callable[[], None], Any, Any] | None] = {}
        self._talker_replay, self._hidden_out = capture(
            lambda: self.talker.step(self._step_in, self._position)
        )
        self.clear()

    def clear(self) -> None:
        """Zero the static caches: the masked step reads every slot."""
        for stack in (self.talker, self.predictor):
            stack.keys.zero_()
            stack.values.zero_()

    def talker_step(self, step_input: Any, position: int) -> Any:
        self._step_in.copy_(step_input)
        self._position.fill_(position)
        self._talker_replay()
        return self._hidden_out

    def predict(self, hidden: Any, token: Any, sampling: Sampling) -> tuple[Any, Any]:
        """The predictor loop for ``sampling``, captured on first use (upstream's settings
        do not change between requests, so this is one graph in practice); if that
        capture fails, the loop runs eagerly."""
        lean = self._lean
        if sampling not in self._predict:
            try:
                replay, (codes, summed) = capture(
                    lambda: lean.predict(self.predictor, self._hidden_in, self._token_in, sampling)
                )
                self._predict[sampling] = (replay, codes, summed)
            except Exception as err:
                _LOGGER.warning("CUDA graph of the code predictor failed (%s); eager", err)
                self._predict[sampling] = None
        captured = self._predict[sampling]
        if captured is None:
            return lean.predict(self.predictor, hidden, token, sampling)
        replay, codes, summed = captured
        self._hidden_in.copy_(hidden)
        self._token_in.copy_(token)
        replay()
        return codes.clone(), summed
