"""Zero-shot neuron labels: each neuron's top images against a vocabulary, in CLIP space.

A neuron's *image direction* is the activation-weighted mean of the unit CLIP image
embeddings of its top images; its label is the vocabulary entry whose prompt's unit text
embedding has the highest cosine with that direction, and its *margin* the cosine gap to
the runner-up (a confidence). Vocabularies: ImageNet class names (shipped), any word list,
the dataset's class folder names, or a toy world's concept values (``toyworld``: the world
of the store's exported split, else the shapes world; ``toyworld:emoji`` names one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlmsae.core.errors import UserError

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
DEFAULT_TEMPLATE = "a photo of a {}."
VOCABULARIES = ("imagenet", "toyworld", "dataset")
"""Named vocabularies (also ``toyworld:WORLD``); anything else is read as a word-list file."""
TOYWORLD = "toyworld"
LABEL_FILES = ("labels.csv", "summary.json")
"""What ``vlmsae label`` writes."""


class Vocabulary(NamedTuple):
    words: list[str]
    """The labels."""
    prompts: list[str]
    """The text embedded for each label."""


class NeuronLabels(NamedTuple):
    """A label per neuron (None for neurons without top images)."""

    label: list[str | None]
    margin: np.ndarray
    """``float64 [S]`` cosine of the best label minus the runner-up's (NaN: no label)."""
    score: np.ndarray
    """``float64 [S]`` cosine of the best label (NaN: no label)."""


def _read_words(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]


def _class_name(path: str) -> str:
    """Class of an image from its folder name, without a leading class number."""
    name = Path(path).parent.name
    return re.sub(r"^\d+[_\-. ]+", "", name).replace("_", " ")


def toy_world_spec(spec: str, default: Any = None) -> Any:
    """The toy world a ``toyworld`` / ``toyworld:WORLD`` option names (``toyworld``:
    ``default``, else the shapes world), or None for any other value."""
    from vlmsae.toyworld.worlds import WORLDS, get_world

    if spec == TOYWORLD:
        return get_world(default)
    if spec.startswith(f"{TOYWORLD}:"):
        name = spec.split(":", 1)[1]
        if name not in WORLDS:
            worlds = ", ".join(WORLDS)
            raise UserError(f"{spec}: unknown toy world {name!r}; expected one of {worlds}")
        return get_world(name)
    return None


def load_vocabulary(
    spec: str,
    template: str = DEFAULT_TEMPLATE,
    images: Sequence[str] = (),
    world: Any = None,
    classes: Sequence[str] = (),
) -> Vocabulary:
    """The vocabulary named by ``spec``: ``imagenet``, ``toyworld`` (the concept values of
    ``world``, default the shapes world, with the prompts its CLIP was trained on),
    ``toyworld:WORLD``, ``dataset`` (``classes``, the class names a Hugging Face or
    WebDataset source recorded, else the class folders of ``images``) or a text file with
    one word per line (``#`` comments; ``word<TAB>prompt`` gives a prompt of its own)."""
    if "{}" not in template:
        raise UserError(f"--template {template!r} must contain {{}} where the word goes")
    toy = toy_world_spec(spec, world)
    if toy is not None:
        pairs = [
            (v, p)
            for a, prompts in toy.concept_prompts().items()
            for v, p in zip(toy.attributes[a], prompts, strict=True)
        ]
        return Vocabulary([w for w, _ in pairs], [p for _, p in pairs])
    if spec == "dataset":
        words = sorted(set(classes) if classes else {_class_name(p) for p in images})
        if len(words) < 2:
            raise UserError(
                "--vocab dataset needs images in at least two class folders; give --vocab "
                "imagenet or a word-list file"
            )
    elif spec == "imagenet":
        words = _read_words(VOCAB_DIR / "imagenet.txt")
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(
                f"--vocab {spec}: no such file; give {', '.join(VOCABULARIES)} or a text file "
                "with one word per line"
            )
        words = _read_words(path)
    pairs = [w.split("\t", 1) if "\t" in w else [w, template.format(w)] for w in words]
    if len(pairs) < 2:
        raise UserError(f"--vocab {spec} names {len(pairs)} word(s); a label needs at least two")
    return Vocabulary([p[0] for p in pairs], [p[1] for p in pairs])


def _unit(x: Any) -> np.ndarray:
    import torch

    x = x if isinstance(x, torch.Tensor) else x.pooler_output  # transformers 4.x vs 5.x
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def clip_embeddings(
    clip: str | Path, image_paths: list[str], texts: list[str], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Unit CLIP embeddings ``(images [I, E], texts [V, E])`` of a CLIP-family model."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from vlmsae.data.sources import load_rgb

    model = AutoModel.from_pretrained(str(clip)).eval()
    processor = AutoProcessor.from_pretrained(str(clip))
    if not hasattr(model, "get_text_features"):
        raise UserError(f"--clip {clip} has no text tower; give a CLIP or SigLIP model")
    img, txt = [], []
    with torch.inference_mode():
        for lo in range(0, len(image_paths), batch_size):
            pil = [load_rgb(p) for p in image_paths[lo : lo + batch_size]]
            pix = processor(images=pil, return_tensors="pt")["pixel_values"]
            img.append(_unit(model.get_image_features(pixel_values=pix)))
        n_positions = _text_positions(model, processor, texts)
        for lo in range(0, len(texts), 256):
            enc = processor(text=texts[lo : lo + 256], return_tensors="pt", padding=True,
                            truncation=True, max_length=n_positions)  # fmt: skip
            txt.append(_unit(model.get_text_features(**enc)))
    return np.concatenate(img), np.concatenate(txt)


def _text_positions(model: Any, processor: Any, texts: list[str]) -> int:
    """The text tower's positions; warns (once) when prompts are longer and will be cut."""
    import logging

    text_cfg = getattr(model.config, "text_config", model.config)
    n_positions = int(text_cfg.max_position_embeddings)
    tokenizer = getattr(processor, "tokenizer", processor)
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    long = [t for t, n in zip(texts, lengths, strict=True) if n > n_positions]
    if long:
        logging.getLogger(__name__).warning(
            "%d vocabulary prompt(s) are longer than the text tower's %d positions and are "
            "cut to them (the first: %.60r)", len(long), n_positions, long[0],
        )  # fmt: skip
    return n_positions


def assign_labels(
    top_SK: np.ndarray, weight_SK: np.ndarray, image_emb_IE: np.ndarray, text_VE: np.ndarray,
    words: list[str],
) -> NeuronLabels:  # fmt: skip
    """Labels from precomputed embeddings; ``top_SK`` indexes rows of ``image_emb_IE`` (-1
    pads; weights <= 0 are ignored)."""
    n_s = len(top_SK)
    w_SK = np.where((top_SK >= 0) & (weight_SK > 0), weight_SK, 0.0)
    dirs_SE = np.einsum("sk,ske->se", w_SK, image_emb_IE[np.maximum(top_SK, 0)])
    norm = np.linalg.norm(dirs_SE, axis=1)
    sims_SV = dirs_SE / np.maximum(norm, 1e-12)[:, None] @ text_VE.T
    order = np.argsort(-sims_SV, axis=1)[:, :2]
    best = sims_SV[np.arange(n_s), order[:, 0]]
    second = sims_SV[np.arange(n_s), order[:, 1]]
    has = norm > 0
    labels = [words[int(order[s, 0])] if has[s] else None for s in range(n_s)]
    return NeuronLabels(labels, np.where(has, best - second, np.nan), np.where(has, best, np.nan))


def label_neurons(
    clip: str | Path, image_paths: list[str], top_SK: np.ndarray, weight_SK: np.ndarray,
    vocab: Vocabulary,
) -> NeuronLabels:  # fmt: skip
    """Label every neuron from its top images (indices into ``image_paths``, best first,
    -1 pads) weighted by their activations ``weight_SK``, with the CLIP model ``clip``."""
    used = np.unique(top_SK[(top_SK >= 0) & (weight_SK > 0)])
    if not len(used):
        raise UserError("no neuron has an active top image: nothing to label (a dead SAE?)")
    img_IE, txt_VE = clip_embeddings(clip, [image_paths[i] for i in used], vocab.prompts)
    row_of = np.full(max(int(top_SK.max()) + 1, 1), -1, np.int64)
    row_of[used] = np.arange(len(used))
    top_rows = np.where(top_SK >= 0, row_of[np.maximum(top_SK, 0)], -1)
    return assign_labels(top_rows, weight_SK, img_IE, txt_VE, vocab.words)


def toy_accuracy(
    labels: NeuronLabels, top_SK: np.ndarray, truth: Any, ms_oracle: np.ndarray,
    min_ms: float = 0.8, share: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Share of neurons with oracle MS >= ``min_ms`` whose label is a true concept of theirs:
    every word of the label is a concept value held by at least ``share`` of their top
    images (labels of the dataset vocabulary name several values, e.g. "curved circle red");
    and the same share over every labelled neuron, each with its count and denominator
    (``n_correct`` of ``n_monosemantic``; ``n_correct_all_labelled`` of ``n_labelled``): the
    first alone flatters, a handful of high-MS neurons out of a thousand labelled.

    ``truth``: the :class:`~vlmsae.explore.truth.ToyTruth` of the images ``top_SK`` indexes.
    """
    from vlmsae.explore.truth import CONCEPT_SHARE, shared_values

    share = CONCEPT_SHARE if share is None else share

    def correct(s: int) -> bool:  # every word of the label (e.g. "curved circle red")
        words = (labels.label[s] or "").split()
        return bool(words) and set(words) <= shared_values(top_SK[s], truth, share)

    chosen = np.flatnonzero(np.nan_to_num(ms_oracle, nan=-1.0) >= min_ms)
    right = [correct(s) for s in chosen]
    right_all = [correct(s) for s, name in enumerate(labels.label) if name is not None]
    return {
        "min_oracle_ms": min_ms,
        "concept_share": share,
        "n_monosemantic": len(chosen),
        "n_correct": int(sum(right)),
        "accuracy": float(np.mean(right)) if right else None,
        "n_labelled": len(right_all),
        "n_correct_all_labelled": int(sum(right_all)),
        "accuracy_all_labelled": float(np.mean(right_all)) if right_all else None,
    }


def label_accuracy_text(t: dict[str, Any]) -> str:
    """The toy-world label accuracy of :func:`toy_accuracy` in words, both shares with their
    denominators: "labels name a true concept of 6 of 6 neurons with oracle MS >= 0.8
    (100%) and of 236 of 1,027 labelled neurons (23%)"."""

    def share(n: int, of: int, acc: float | None) -> str:
        return f"{n:,} of {of:,}" + ("" if acc is None else f" ({acc:.0%})")

    high = share(t["n_correct"], t["n_monosemantic"], t["accuracy"])
    every = share(t.get("n_correct_all_labelled", 0), t.get("n_labelled", 0),
                  t.get("accuracy_all_labelled"))  # fmt: skip
    return (
        f"labels name a true concept of {high} neurons with oracle MS >= "
        f"{t['min_oracle_ms']} and of {every} labelled neurons"
    )


def write_labels_csv(path: Path, labels: NeuronLabels) -> None:
    """``neuron,label,margin,score`` per neuron (empty fields for unlabelled neurons)."""
    from vlmsae.core.io import atomic_write_text, csv_text

    rows = [
        (s, "", "", "") if name is None else (s, name, f"{m:.6f}", f"{c:.6f}")
        for s, (name, m, c) in enumerate(
            zip(labels.label, labels.margin, labels.score, strict=True)
        )
    ]  # a label is vocabulary text: escaped against spreadsheet formulas
    atomic_write_text(path, csv_text(("neuron", "label", "margin", "score"), rows))


def label_sae(
    sae_dir: str | Path, activations: str | Path, out_dir: str | Path, *,
    clip: str | None = None, vocab: str = "imagenet", template: str = DEFAULT_TEMPLATE,
    top_k: int = 16, overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Label every neuron of an SAE from its top images over ``activations``; write
    ``labels.csv`` and ``summary.json`` into ``out_dir`` and return the summary (with the
    toy-world accuracy when the store's images are an exported toy-world split).

    ``clip``: a CLIP-family model (hub id or folder), ``"toyworld"`` for the shipped toy
    CLIP of the store's world (``"toyworld:WORLD"``: of that world), or None for the model
    the store was cached from. Everything is computed (and every input checked) before the
    first file is written; the two files are one output (:mod:`vlmsae.core.outputs`;
    ``overwrite``: into a folder of something else).
    """
    from vlmsae.core.outputs import check_out_free, writing_output
    from vlmsae.data.provenance import neuron_identity
    from vlmsae.data.store import ActivationStore
    from vlmsae.explore.build import check_fits
    from vlmsae.explore.neurons import encode_rows, per_image
    from vlmsae.explore.truth import toy_truth, toy_world
    from vlmsae.metrics._source import image_index_of
    from vlmsae.metrics.fit import sae_source
    from vlmsae.metrics.top_images import top_images
    from vlmsae.sae import SAE

    out_dir, inputs = Path(out_dir), (sae_dir, activations)
    check_out_free(out_dir, "label", owns=LABEL_FILES, inputs=inputs, overwrite=overwrite)
    sae, store = SAE.load(sae_dir), ActivationStore(activations)
    check_fits(sae, store)
    if not store.images:
        raise UserError(f"the store {activations} lists no images (images.jsonl): cannot label")
    if len(store) == 0 or len(store.images) < 2:
        raise UserError(f"the store {activations} holds {len(store.images)} image(s) and "
                        f"{len(store)} rows: labels need at least 2 images")  # fmt: skip
    world = toy_world(store)  # None: not an exported toy-world split
    clip_world = toy_world_spec(clip, world) if clip else None
    if clip_world is not None:
        from vlmsae.toyworld import clip_path

        clip = str(clip_path(world=clip_world.name))
    clip = clip or store.manifest.get("model")
    if not clip:
        raise UserError("the store names no model; give --clip MODEL (a CLIP-family model)")
    classes = (store.manifest.get("data_source") or {}).get("classes") or ()
    vocabulary = load_vocabulary(vocab, template, store.images, world, classes)
    codes_NS = per_image(encode_rows(sae, store), image_index_of(store))
    top = top_images(codes_NS, top_k)
    result = label_neurons(clip, store.images, top.indices, top.values, vocabulary)
    summary: dict[str, Any] = {
        "sae": str(sae_dir), "activations": str(activations), "clip": str(clip),
        "vocab": vocab, "world": None if world is None else world.name,
        "n_words": len(vocabulary.words), "template": template,
        "n_neurons": sae.cfg.d_sae, "n_labelled": int(sum(x is not None for x in result.label)),
        "neurons": neuron_identity(sae_source(sae_dir), sae.cfg.d_sae),
    }  # fmt: skip
    truth = toy_truth(store)
    if truth is not None:
        from vlmsae.metrics.ms import monosemanticity
        from vlmsae.toyworld.embeddings import oracle_embedding

        ms = monosemanticity(codes_NS, oracle_embedding(truth.records, truth.world)).ms
        valid = np.where(top.values > 0, top.indices, -1)
        summary["toyworld"] = toy_accuracy(result, valid, truth, ms)
    with writing_output(out_dir, "label", owns=LABEL_FILES, inputs=inputs, overwrite=overwrite,
                        meta={"artifact": "labels"}) as unit:  # fmt: skip
        write_labels_csv(out_dir / "labels.csv", result)
        unit.add("labels.csv")
        unit.write_json("summary.json", summary)
    return summary
