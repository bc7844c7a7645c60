"""Prompting as Kiss3DGen does it: a fixed CLIP prompt and a T5 prompt carrying the caption."""

from __future__ import annotations

#: The fixed sentence the Kiss3DGen LoRA was trained with; the whole CLIP prompt.
BUNDLE_SENTENCE = "A grid of 2x4 multi-view image, elevation 5. White background."


def clip_prompt(caption: str) -> str:
    """The CLIP (``prompt``) text: always :data:`BUNDLE_SENTENCE`, whatever the caption."""
    del caption  # CLIP sees only the layout sentence; the caption goes to T5
    return BUNDLE_SENTENCE


def t5_prompt(caption: str) -> str:
    """The T5 (``prompt_2``) text: :data:`BUNDLE_SENTENCE`, one space, the stripped caption."""
    caption = " ".join(caption.split())
    if not caption:
        raise ValueError("caption is empty")
    return f"{BUNDLE_SENTENCE} {caption}"


def bundle_prompts(captions: list[str]) -> tuple[list[str], list[str]]:
    """``(clip_prompts, t5_prompts)``, one of each per caption."""
    return [clip_prompt(c) for c in captions], [t5_prompt(c) for c in captions]
