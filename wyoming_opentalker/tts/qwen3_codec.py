"""Streaming decode of Qwen3-TTS's 12 Hz codec that gives the audio a whole decode gives.

The codec decoder is causal end to end: a 3-frame causal convolution, an 8-layer
transformer with a 72-frame causal sliding window, then causal transposed and dilated
convolutions up to 24 kHz. Cutting the frames into windows with a fixed left context
(upstream's chunked decoder and our first streaming decoder used 25 frames) truncates
the transformer's reach, which grows by 72 frames per layer, so each window's audio
departs from a whole decode at its edges.

Here every stage carries its state from one window to the next instead: the transformer
its KV cache, each causal convolution the input samples its kernel reaches back to, each
overlapping transposed convolution the tail it adds to the next window's start. A window
costs what its frames cost in a whole decode, and its audio matches a whole decode to
float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class _ConvState:
    """The streamed state of the upsampling stack, by module."""

    def __init__(self) -> None:
        self.carry: dict[int, Any] = {}

    def run(self, module: Any, x: Any) -> Any:
        from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as codec

        if isinstance(module, codec.Qwen3TTSTokenizerV2CausalConvNet):
            return self._conv(module, x)
        if isinstance(module, codec.Qwen3TTSTokenizerV2CausalTransConvNet):
            return self._transposed(module, x)
        if isinstance(module, codec.Qwen3TTSTokenizerV2ConvNeXtBlock):
            h = self._conv(module.dwconv, x).permute(0, 2, 1)
            h = module.pwconv2(module.act(module.pwconv1(module.norm(h))))
            return x + (module.gamma * h).permute(0, 2, 1)
        if isinstance(module, codec.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit):
            h = self._conv(module.conv1, module.act1(x))
            return x + self._conv(module.conv2, module.act2(h))
        if isinstance(module, codec.Qwen3TTSTokenizerV2DecoderDecoderBlock):
            for block in module.block:
                x = self.run(block, x)
            return x
        return module(x)  # pointwise (SnakeBeta)

    def _conv(self, module: Any, x: Any) -> Any:
        """A causal convolution (stride 1): the previous window's last inputs stand in
        for the zero padding a whole decode has only at the very start."""
        import torch
        import torch.nn.functional as F

        if module.stride != 1:
            raise ValueError("streaming expects stride-1 causal convolutions")
        reach = module.padding
        if not reach:
            return module.conv(x)
        previous = self.carry.get(id(module))
        joined = F.pad(x, (reach, 0)) if previous is None else torch.cat((previous, x), dim=-1)
        self.carry[id(module)] = joined[..., -reach:]
        return module.conv(joined)

    def _transposed(self, module: Any, x: Any) -> Any:
        """A transposed convolution whose kernel overlaps the next frame: its output past
        this window's end belongs to the next window's start (bias counted once)."""
        y = module.conv(x)
        tail = module.right_pad
        if not tail:
            return y
        previous = self.carry.get(id(module))
        if previous is not None:
            bias = module.conv.bias
            overlap = previous if bias is None else previous - bias[None, :, None]
            y = y.clone()
            y[..., :tail] += overlap
        self.carry[id(module)] = y[..., -tail:]
        return y[..., :-tail]


class StreamingCodec:
    """One utterance's incremental decode: ``push`` frames, get their audio."""

    def __init__(self, decoder: Any) -> None:
        from transformers import DynamicCache

        self._decoder = decoder
        self._pre_context = int(decoder.pre_conv.kernel_size) - 1
        self._cache = DynamicCache(config=decoder.pre_transformer.config)
        self._convs = _ConvState()
        self._codes: Any = None  # the last frames, for the first convolution's reach
        self.frames = 0

    def push(self, codes: Any) -> np.ndarray:
        """Audio (float32, 24 kHz) of ``codes`` (frames x groups), which follow the frames
        pushed before."""
        import torch

        decoder = self._decoder
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            codes = codes.to(decoder.pre_conv.conv.weight.device).clamp(min=0)
            joined = codes if self._codes is None else torch.cat((self._codes, codes))
            lead = len(joined) - len(codes)
            latent = decoder.quantizer.decode(joined.transpose(0, 1).unsqueeze(0))
            latent = decoder.pre_conv(latent)[..., lead:].transpose(1, 2)
            wav = decoder.pre_transformer(
                inputs_embeds=latent, past_key_values=self._cache, use_cache=True
            ).last_hidden_state.permute(0, 2, 1)
            for blocks in decoder.upsample:
                for block in blocks:
                    wav = self._convs.run(block, wav)
            for block in decoder.decoder:
                wav = self._convs.run(block, wav)
            audio = wav[0, 0].clamp(min=-1, max=1)
            self._codes = joined[-self._pre_context :] if self._pre_context else None
            self.frames += len(codes)
            return np.asarray(audio.float().cpu().numpy(), dtype=np.float32)
