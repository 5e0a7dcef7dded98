"""Random-weight Qwen checkpoints built with the packages' own config classes.

Real Qwen weights cannot be downloaded on the test machines, so the tests and the GPU
benchmark build checkpoints here, save them with ``save_pretrained`` and load them back
through exactly the ``from_pretrained`` path real weights take. ``size="tiny"`` is for
tests (a few MB, CPU-fast); ``size="full"`` uses the real 0.6B architecture's values
for memory and speed measurements (the text it writes is noise either way).
"""

from __future__ import annotations

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
        # the rope_scaling dict with mrope_section is required (SPEC §4)
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


def build_qwen3_asr(
    path: Path, size: Size = "tiny", languages: tuple[str, ...] = ("Chinese", "English")
) -> Path:
    """Save a random Qwen3-ASR checkpoint (config, weights, tokenizer, processor) in ``path``."""
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
    torch.manual_seed(0)
    model = Qwen3ASRForConditionalGeneration(config)
    model.save_pretrained(path)
    return path
