"""Emoji-world models for tests that must not depend on how good the models are: the
shipped ones when they exist, else a tiny random emoji CLIP and LLaVA built here (the real
constructors, processors and tokenizer of the emoji world, untrained weights)."""

from __future__ import annotations

from pathlib import Path


def shipped_emoji_models() -> Path | None:
    """The shipped emoji models folder (``clip/`` and ``llava/``), or None."""
    from vlmsae.toyworld import clip_path, llava_path

    try:
        clip_path(world="emoji")
        return llava_path(world="emoji").parent
    except FileNotFoundError:
        return None


def tiny_emoji_models(out: Path) -> Path:
    """A random emoji CLIP (2 vision blocks of width 32) and a LLaVA around its tower
    (1 Llama block) saved as ``out/clip`` and ``out/llava``; returns ``out``."""
    from vlmsae.toyworld.clip import ClipTrainConfig, make_clip, make_clip_processor
    from vlmsae.toyworld.llava import LlavaTrainConfig, make_llava, make_llava_processor

    cfg = ClipTrainConfig(width=32, layers=2, text_layers=1, projection_dim=16, steps=1)
    clip = make_clip(cfg, world="emoji").eval()
    clip.save_pretrained(out / "clip")
    make_clip_processor("emoji").save_pretrained(out / "clip")
    llava = make_llava(clip, LlavaTrainConfig(lm_width=32, lm_layers=1), world="emoji").eval()
    llava.save_pretrained(out / "llava")
    make_llava_processor(cfg.patch_size, "emoji").save_pretrained(out / "llava")
    return out


def emoji_models(tmp_path_factory) -> Path:
    """The shipped emoji models, else tiny random ones in a temporary folder."""
    return shipped_emoji_models() or tiny_emoji_models(tmp_path_factory.mktemp("emoji-models"))
