"""The toy world's word-level tokenizer, built with ``tokenizers``.

One token per lower-cased word or punctuation mark of the world's captions, questions
and prompt template, plus the special tokens. It is wrapped in a
``PreTrainedTokenizerFast`` so that ``CLIPProcessor`` / ``LlavaProcessor`` save and load
it like any hub tokenizer (``tokenizer.json``).
"""

from __future__ import annotations

from typing import Any

from vlmsae.toyworld.worlds import World, get_world

PAD, BOS, UNK, EOS, IMAGE = "<pad>", "<s>", "<unk>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, UNK, EOS, IMAGE)
"""Special tokens, ids 0..4. CLIP pools its text at ``EOS`` (id 3: CLIP treats
``eos_token_id == 2`` as a legacy value, so id 2 is avoided)."""
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}</s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""LLaVA-1.5 style: ``USER: <image>\\n{question} ASSISTANT: {answer}</s>``."""


def llava_prompt(question: str) -> str:
    """The LLaVA-1.5 prompt for one image and one question."""
    return f"USER: <image>\n{question} ASSISTANT:"


def vocabulary(world: str | World | None = None) -> list[str]:
    """All tokens of ``world``'s tokenizer, specials first, in a fixed order (the words of
    ``world.vocabulary_texts()``; default: the default world)."""
    import re

    words: list[str] = []
    for text in get_world(world).vocabulary_texts():
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            if w not in words:
                words.append(w)
    return [*SPECIAL_TOKENS, *words]


def make_tokenizer(add_eos: bool = True, world: str | World | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` over :func:`vocabulary`.

    Args:
        world: the toy world whose words the tokenizer knows.
        add_eos: append ``</s>`` to every encoded text (CLIP pools its text tower there).
            The LLaVA tokenizer adds only ``<s>`` in front, like Llama's.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    bos, eos = vocab[BOS], vocab[EOS]
    single = f"$A {EOS}" if add_eos else f"{BOS} $A"
    special = [(EOS, eos)] if add_eos else [(BOS, bos)]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE} if not add_eos else None,
        model_max_length=128,
        padding_side="right" if add_eos else "left",
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    return fast
