"""The paper's steering score: does the steered answer move toward the neuron's concept?

For neuron ``k`` the concept is the mean CLIP image embedding of its top-16 images. LLaVA
answers "What is shown in this image? Use exactly one word!" for a set of images without
steering and with ``k`` clamped to α; each answer is embedded with the CLIP text encoder
and compared (cosine) with the concept. Reported: the mean similarity without steering,
with steering, and the shuffled-label baseline (steered answers of neuron ``k`` against
the concept of another neuron, a derangement of the neurons).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from vlmsae.steer.llava import Llava, generate
from vlmsae.steer.steering import steer_sae

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

SHAPE_QUESTION = "What is shown in this image? Use exactly one word!"


class ClipEmbedder:
    """Unit-norm CLIP text and image embeddings from an HF ``CLIPModel`` (id or folder)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any) -> None:
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> ClipEmbedder:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        from vlmsae.encoders.hub import resolve_alias

        name = resolve_alias(name_or_path)
        return cls(
            CLIPModel.from_pretrained(name, **kwargs),
            AutoTokenizer.from_pretrained(name),
            AutoImageProcessor.from_pretrained(name, backend="pil"),
        )

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[n, E]`` float32 unit-norm text embeddings (long texts are truncated)."""
        # the tokenizer's model_max_length may exceed the text tower's positions (the toy
        # CLIP's says 128 for 16): truncate to what the model can embed
        max_length = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        )
        return _unit(out)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """``[n, E]`` float32 unit-norm image embeddings."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return _unit(self.model.get_image_features(pixel_values=pixels))


def _unit(out: Any) -> np.ndarray:
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()


class SteeringScore(NamedTuple):
    """Mean cosine similarity between answers and neuron concepts."""

    none: float
    """Unsteered answers vs the neuron's concept."""
    steered: float
    """Steered answers vs the neuron's concept."""
    shuffled: float
    """Steered answers vs another neuron's concept (NaN with one neuron)."""
    n_neurons: int
    n_images: int


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def steering_scores(
    none_NE: np.ndarray, steered_KNE: np.ndarray, concept_KE: np.ndarray, seed: int = 0
) -> SteeringScore:
    """The score from unit-norm embeddings (a pure function).

    Args:
        none_NE: unsteered answer embeddings, one per image.
        steered_KNE: steered answer embeddings per neuron and image.
        concept_KE: each neuron's concept embedding (need not be unit-norm).
    """
    concept = concept_KE / np.linalg.norm(concept_KE, axis=-1, keepdims=True).clip(1e-12)
    k, n, _ = steered_KNE.shape
    none = float(np.einsum("ne,ke->kn", none_NE, concept).mean())
    steered = float(np.einsum("kne,ke->kn", steered_KNE, concept).mean())
    shuffled = float("nan")
    if k >= 2:
        shuffled = float(np.einsum("kne,ke->kn", steered_KNE, concept[derangement(k, seed)]).mean())
    return SteeringScore(none, steered, shuffled, k, n)


def steering_score(
    llava: Llava,
    sae: SAE,
    layer: int,
    top_images: Mapping[int, Sequence[Any]],
    images: Sequence[Any],
    embedder: Any,
    *,
    alpha: float = 100.0,
    mode: str = "replace",
    question: str = SHAPE_QUESTION,
    max_new_tokens: int = 3,
    batch_size: int = 16,
) -> tuple[SteeringScore, dict[str, Any]]:
    """Run the score for neurons ``top_images.keys()`` over ``images``.

    Args:
        top_images: ``{neuron: its top images (the paper used 16)}``.
        images: images to answer about, with and without steering.
        embedder: has ``embed_texts`` and ``embed_images`` (e.g. :class:`ClipEmbedder`).

    Returns the score and the answers (``{"none": [...], "steered": {neuron: [...]}}``).
    """
    neurons = list(top_images)
    if not neurons or not images:
        raise ValueError("need at least one neuron and one image")
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    none = generate(llava, images, question, **gen)
    steered: dict[int, list[str]] = {}
    for k in neurons:
        with steer_sae(llava.encoder, sae, layer, {k: alpha}, mode=mode):
            steered[k] = generate(llava, images, question, **gen)
    concept_KE = np.stack([embedder.embed_images(list(top_images[k])).mean(0) for k in neurons])
    steered_KNE = np.stack([embedder.embed_texts(steered[k]) for k in neurons])
    score = steering_scores(embedder.embed_texts(none), steered_KNE, concept_KE)
    return score, {"none": none, "steered": steered}
