"""Test helper: build a tiny, randomly initialised Stable Diffusion pipeline offline.

No weights can be downloaded on the project's machines, so the diffusers backend is tested
against a pipeline assembled from configs: the same classes as Stable Diffusion 1.x (UNet,
VAE, CLIP text encoder, CLIP tokenizer, DDIM scheduler), only very small. It makes noise,
not pictures, but it exercises everything the backend does: loading a folder written by
`save_pretrained`, seeding, batching, sizes and dtype handling.

The tokenizer is the one trap. In transformers 5, `CLIPTokenizer(vocab_file=...,
merges_file=...)` silently ignores the files, so the vocabulary is written as local files
(`vocab.json`, `merges.txt`) and loaded with `CLIPTokenizer.from_pretrained(folder)`.
The vocabulary is byte-level: the 256 printable stand-ins of GPT-2/CLIP's byte-to-unicode
table, each alone and with the end-of-word marker `</w>`, plus the two special tokens.
With no merges, every word is tokenised one byte at a time, which is all a test needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pipeline  # noqa: F401  (torchvision shim before diffusers/transformers)

TEXT_HIDDEN = 32
MAX_TOKENS = 77


def byte_level_symbols() -> list[str]:
    """The 256 unicode stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP convention).

    Printable latin-1 bytes stand for themselves; the others are shifted to code points
    from 256 upwards so that every byte has a visible, non-whitespace symbol.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_byte_level_tokenizer(folder: Path) -> Path:
    """Write vocab.json + merges.txt (version line only) + tokenizer config into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for symbol in byte_level_symbols():
        tokens += [symbol, symbol + "</w>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_tiny_pipeline(work_dir: Path):
    """Assemble a tiny StableDiffusionPipeline (random weights, seeded) entirely offline."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    tokenizer = CLIPTokenizer.from_pretrained(write_byte_level_tokenizer(work_dir / "tokenizer-src"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: Path) -> Path:
    """Build the tiny pipeline and `save_pretrained` it into `folder/model`; returns that folder.

    The VAE downsamples by 2 (two blocks), so the model's default image size is
    unet.sample_size * 2 = 64 px.
    """
    folder = Path(folder)
    model_dir = folder / "model"
    build_tiny_pipeline(folder).save_pretrained(model_dir, safe_serialization=True)
    return model_dir
