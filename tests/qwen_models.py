"""Random-weight Qwen checkpoints built with the packages' own config classes.

Real Qwen weights cannot be downloaded on the test machines, so the tests and the GPU
benchmark build checkpoints here, save them with ``save_pretrained`` and load them back
through exactly the ``from_pretrained`` path real weights take. ``size="tiny"`` is for
tests (a few MB, CPU-fast); ``size="full"`` uses the real 0.6B architecture's values
for memory and speed measurements (the text it writes is noise either way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Size = Literal["tiny", "full"]

ASR_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<asr_text>",
]
# The prompt layout Qwen3-ASR's processor expects: system context, then the audio.
ASR_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "language English<asr_text>go forward ten meters, turn on the kitchen light",
    "language Chinese<asr_text>你好，今天天气很好。打开客厅的灯。",
    "system user assistant language Cantonese Japanese Korean",
]

# Qwen3-ASR-0.6B architecture (config.json of the released checkpoint).
ASR_FULL: dict[str, Any] = {
    "audio": {
        "num_mel_bins": 128,
        "encoder_layers": 18,
        "encoder_attention_heads": 14,
        "encoder_ffn_dim": 3584,
        "d_model": 896,
        "output_dim": 1024,
        "downsample_hidden_size": 480,
        "max_source_positions": 1500,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
    },
    "text": {
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 65536,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "rope_scaling": {"mrope_section": [24, 20, 20], "mrope_interleaved": True},
    },
}
ASR_TINY: dict[str, Any] = {
    "audio": {
        "num_mel_bins": 128,
        "encoder_layers": 1,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "output_dim": 32,
        "downsample_hidden_size": 16,
        "max_source_positions": 1500,
        "n_window": 50,
        "n_window_infer": 800,
    },
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        # the rope_scaling dict with mrope_section is required
        "rope_scaling": {"mrope_section": [4, 2, 2], "mrope_interleaved": True},
        # large random weights make the noise vary with the input instead of one token
        "initializer_range": 0.5,
    },
}


def _byte_level_tokenizer(special: list[str], vocab_size: int = 400) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return tokenizer


def save_header_only(model: Any, path: Path, config: Any) -> None:
    """Write ``config.json`` and a ``model.safetensors`` whose header lists every tensor of
    ``model`` (built on the meta device) with no data: the memory planner reads headers
    only, so the released shapes are checked without writing gigabytes."""
    import struct

    dtypes = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}
    header: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        dtype = dtypes.get(str(tensor.dtype), "I64" if not tensor.is_floating_point() else "F32")
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [0, 0]}
    data = json.dumps(header).encode()
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(data)) + data)
    config.save_pretrained(path)


def build_qwen3_asr(
    path: Path,
    size: Size = "tiny",
    languages: tuple[str, ...] = ("Chinese", "English"),
    *,
    header_only: bool = False,
) -> Path:
    """Save a random Qwen3-ASR checkpoint (config, weights, tokenizer, processor) in ``path``;
    ``header_only`` writes the tensors' shapes but no data (for the memory planner)."""
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )
    from transformers import Qwen2TokenizerFast, WhisperFeatureExtractor

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_byte_level_tokenizer(ASR_SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )
    processor = Qwen3ASRProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000),
        tokenizer=tokenizer,
        chat_template=ASR_CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)

    spec = ASR_FULL if size == "full" else ASR_TINY
    text = dict(spec["text"])
    text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
    config = Qwen3ASRConfig(
        thinker_config={
            "audio_config": dict(spec["audio"]),
            "text_config": text,
            "audio_token_id": tokenizer.convert_tokens_to_ids("<|audio_pad|>"),
            "audio_start_token_id": tokenizer.convert_tokens_to_ids("<|audio_start|>"),
            "initializer_range": text.get("initializer_range", 0.02),
        },
        support_languages=list(languages),
    )
    config.architectures = ["Qwen3ASRForConditionalGeneration"]
    if header_only:
        with torch.device("meta"):
            save_header_only(Qwen3ASRForConditionalGeneration(config), path, config)
        return path
    torch.manual_seed(0)
    model = Qwen3ASRForConditionalGeneration(config)
    model.save_pretrained(path)
    return path


# --- Qwen3-TTS (12 Hz CustomVoice)

TTS_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
]
# The released CustomVoice checkpoint's speaker and language token ids.
TTS_SPEAKERS = {
    "serena": 3066,
    "vivian": 3065,
    "uncle_fu": 3010,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
    "eric": 2875,
    "dylan": 2878,
}
TTS_DIALECTS = {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}
TTS_LANGUAGES = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}
_TTS_CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
# Qwen3-TTS-12Hz-0.6B-CustomVoice architecture (config.json, speech_tokenizer/config.json).
TTS_FULL: dict[str, Any] = {
    "groups": 16,
    "talker": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": {
            "mrope_section": [24, 20, 20],
            "interleaved": True,
            "rope_type": "default",
        },
        "text_hidden_size": 2048,
        "text_vocab_size": 151936,
    },
    "predictor": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 5,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 65536,
        "rope_theta": 1000000.0,
    },
    "codec_encoder": {
        "num_filters": 64,
        "upsampling_ratios": [8, 6, 5, 4],
        "hidden_size": 512,
        "upsample_groups": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 2048,
        "sliding_window": 250,
        "num_quantizers": 32,
        "codebook_size": 2048,
        "codebook_dim": 256,
        "vector_quantization_hidden_dimension": 256,
    },
    "codec_decoder": {
        "latent_dim": 1024,
        "codebook_dim": 512,
        "codebook_size": 2048,
        "decoder_dim": 1536,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "head_dim": 64,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_hidden_layers": 8,
        "sliding_window": 72,
    },
}
TTS_TINY: dict[str, Any] = {
    "groups": 4,
    "talker": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [4, 2, 2], "interleaved": True, "rope_type": "default"},
        "text_hidden_size": 32,
    },
    "predictor": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rope_theta": 1000000.0,
    },
    "codec_encoder": {
        "num_filters": 4,
        "upsampling_ratios": [8, 6, 5, 4],
        "hidden_size": 32,
        "upsample_groups": 32,  # must match hidden_size
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 64,
        "codebook_size": 2048,
        "codebook_dim": 32,
    },
    "codec_decoder": {
        "latent_dim": 32,
        "codebook_dim": 32,
        "codebook_size": 2048,
        "decoder_dim": 32,
        "hidden_size": 32,
        "intermediate_size": 64,
        "head_dim": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "sliding_window": 72,
        # large enough random weights that the decoder's output is audible, not ~1e-8
        "initializer_range": 0.12,
    },
}


def build_qwen3_tts(
    path: Path,
    size: Size = "tiny",
    max_new_tokens: int = 2048,
    *,
    header_only: bool = False,
    sampling: bool = True,
) -> Path:
    """Save a random Qwen3-TTS CustomVoice checkpoint with its ``speech_tokenizer/``;
    ``header_only`` writes the tensors' shapes but no data (for the memory planner);
    ``sampling=False`` makes its generation config greedy (for exact comparisons)."""
    import torch
    from transformers import EncodecFeatureExtractor, Qwen2TokenizerFast

    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import (
        Qwen3TTSConfig,
        Qwen3TTSForConditionalGeneration,
        Qwen3TTSProcessor,
    )

    spec = TTS_FULL if size == "full" else TTS_TINY
    groups = int(spec["groups"])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_byte_level_tokenizer(TTS_SPECIAL_TOKENS, vocab_size=500),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TTS_SPECIAL_TOKENS}

    talker = dict(spec["talker"])
    talker.setdefault("text_vocab_size", len(tokenizer))
    talker.update(
        _TTS_CODEC_IDS,
        vocab_size=3072,
        num_code_groups=groups,
        spk_id=dict(TTS_SPEAKERS),
        spk_is_dialect={name: TTS_DIALECTS.get(name, False) for name in TTS_SPEAKERS},
        codec_language_id=dict(TTS_LANGUAGES),
        code_predictor_config={**spec["predictor"], "vocab_size": 2048, "num_code_groups": groups},
    )
    text_ids = (
        {"tts_pad_token_id": 151671, "tts_bos_token_id": 151672, "tts_eos_token_id": 151673}
        if size == "full"
        else {
            "tts_pad_token_id": ids["<tts_pad>"],
            "tts_bos_token_id": ids["<tts_text_bos>"],
            "tts_eos_token_id": ids["<tts_text_eod>"],
        }
    )
    config = Qwen3TTSConfig(
        talker_config=talker,
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="0b6",
        tts_model_type="custom_voice",
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        **text_ids,
    )
    config.architectures = ["Qwen3TTSForConditionalGeneration"]
    torch.manual_seed(0)
    if header_only:
        with torch.device("meta"):
            save_header_only(Qwen3TTSForConditionalGeneration(config), path, config)
    else:
        Qwen3TTSForConditionalGeneration(config).save_pretrained(path)
    # The saved speaker_encoder_config carries a model_type that breaks loading.
    config_file = path / "config.json"
    saved = json.loads(config_file.read_text())
    saved.get("speaker_encoder_config", {}).pop("model_type", None)
    config_file.write_text(json.dumps(saved, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": sampling,
                "subtalker_dosample": sampling,
                "top_k": 50,
                "repetition_penalty": 1.05,
                "max_new_tokens": max_new_tokens,
            }
        )
    )

    codec_path = path / "speech_tokenizer"
    codec_config = Qwen3TTSTokenizerV2Config(
        encoder_config={**spec["codec_encoder"], "frame_rate": 12.5, "sampling_rate": 24000},
        decoder_config={**spec["codec_decoder"], "num_quantizers": groups},
        encoder_valid_num_quantizers=groups,
    )
    codec_config.architectures = ["Qwen3TTSTokenizerV2Model"]
    if header_only:
        with torch.device("meta"):
            save_header_only(Qwen3TTSTokenizerV2Model(codec_config), codec_path, codec_config)
        return path
    codec = Qwen3TTSTokenizerV2Model(codec_config)
    with torch.no_grad():  # the EMA codebooks start at zero, which would decode to silence
        for name, tensor in [*codec.named_parameters(), *codec.named_buffers()]:
            if name.endswith("embedding_sum"):
                tensor.normal_(0.0, 1.0)
            elif name.endswith("cluster_usage"):
                tensor.fill_(1.0)
    codec.save_pretrained(codec_path)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000).save_pretrained(codec_path)
    return path
