"""Adapters that run HF vision models and expose named hook points.

One class, :class:`Encoder`, covers CLIP (``CLIPVisionModelWithProjection``,
``CLIPVisionModel``, ``CLIPModel``), SigLIP (``SiglipVisionModel``, ``SiglipModel``),
DINOv2 (``Dinov2Model``) and the CLIP vision tower inside
``LlavaForConditionalGeneration``. Transformer blocks are found by module name, not by a
fixed attribute path (it moved between transformers releases); see :func:`find_blocks`.

Hook points (DESIGN.md): ``post_mlp_residual`` at block ``L`` is the block output (the
residual stream after the MLP), equal to ``hidden_states[L + 1]``; ``post_projection`` is
the model's image embedding (CLIP ``image_embeds``, SigLIP / DINOv2 pooled output).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SUPPORTED = (
    "clip",
    "clip_vision_model",
    "siglip",
    "siglip_vision_model",
    "dinov2",
    "dinov2_with_registers",
    "llava",
)
_BLOCK_LIST_NAMES = ("layers", "layer", "blocks")


class _StopForward(Exception):
    """Raised from a hook after the deepest block needed: ends the forward early."""


def find_blocks(root: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks of a vision model, found by name.

    Looks for ``nn.ModuleList`` children named ``layers``, ``layer`` or ``blocks`` below
    ``root``; text towers (names containing ``text`` or ``language``) are ignored. Returns
    ``(qualified name, module list)``.
    """
    found = [
        (name, mod)
        for name, mod in root.named_modules()
        if isinstance(mod, nn.ModuleList)
        and name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES
        and not any(w in name for w in ("text", "language"))
        and len(mod) > 0
    ]
    if not found:
        raise ValueError(
            f"found no transformer blocks in {type(root).__name__}: expected an nn.ModuleList "
            f"named one of {_BLOCK_LIST_NAMES}"
        )
    found.sort(key=lambda item: (-len(item[1]), item[0].count(".")))
    return found[0]


def _find_named(root: nn.Module, last: str) -> nn.Module | None:
    """The shallowest submodule whose name ends with ``last`` (None if there is none)."""
    hits = [(n, m) for n, m in root.named_modules() if n.rsplit(".", 1)[-1] == last]
    return min(hits, key=lambda nm: nm[0].count("."))[1] if hits else None


class Encoder:
    """A vision model with hook points; build with :meth:`from_pretrained` or wrap a model.

    Args:
        model: an HF model instance (see module docstring for the supported classes).
        processor: the model's image processor (``*ImageProcessorPil``); needed by
            :meth:`preprocess`.
        name: model id or path, recorded in store manifests.
        revision: hub revision, recorded in manifests.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any = None,
        *,
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.revision = revision
        self.model_type = str(getattr(model.config, "model_type", ""))
        if self.model_type not in SUPPORTED:
            raise ValueError(
                f"unsupported model {type(model).__name__} (model_type {self.model_type!r}); "
                f"vlmsae supports model types {', '.join(SUPPORTED)}"
            )
        self.family = self.model_type.split("_")[0]  # clip | siglip | dinov2 | llava
        self.vision = self._vision_module()
        self.blocks_name, self.blocks = find_blocks(self.vision)
        self.vision_config = getattr(self.vision, "config", model.config)
        self.has_cls = self.family != "siglip"
        self.n_registers = int(getattr(self.vision_config, "num_register_tokens", 0) or 0)
        """Register tokens after the CLS token (DINOv2 with registers): no image content;
        :meth:`image_tokens` drops them before token selection."""

    def _vision_module(self) -> nn.Module:
        if self.family == "llava":
            found = _find_named(self.model, "vision_tower")
        else:  # CLIP / SigLIP keep their transformer in `vision_model`; DINOv2 is one
            found = _find_named(self.model, "vision_model")
            found = self.model if found is None else found
        if found is None:
            raise ValueError(f"found no vision tower in {type(self.model).__name__}")
        return found

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> Encoder:
        """Load a model and its image processor by hub id or local folder.

        ``kwargs`` go to the model's ``from_pretrained`` (``cache_dir``, ``local_files_only``,
        ...). The class is chosen from the checkpoint's config (``model_type`` and
        ``architectures``), so a folder written with ``save_pretrained`` loads exactly like
        a hub model.
        """
        import transformers
        from transformers import AutoImageProcessor

        from vlmsae.encoders.hub import load_model_config, resolve_alias

        name = resolve_alias(name_or_path)
        config = load_model_config(name, revision)  # a UserError when there is no such model
        model_cls = getattr(transformers, _model_class_name(config))
        model = model_cls.from_pretrained(name, revision=revision, dtype=dtype, **kwargs)
        processor = AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil")
        return cls(model.to(device), processor, name=name, revision=revision)

    # -- properties --------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of a block output."""
        return int(self.vision_config.hidden_size)

    @property
    def d_embed(self) -> int:
        """Width of ``post_projection``."""
        if self.family == "clip" and hasattr(self._projection(), "out_features"):
            return int(self._projection().out_features)
        return self.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.model.to(device=device, dtype=dtype)
        return self

    def layer_index(self, layer: int) -> int:
        """0-based block index of ``layer`` (negative counts from the end)."""
        n = self.n_layers
        if not -n <= layer < n:
            raise ValueError(
                f"layer {layer} is out of range: {self.name} has {n} blocks (0..{n - 1})"
            )
        return layer % n

    def check_tokens(self, selection: Any) -> None:
        """Raise if a token selection does not apply to this model (``cls`` on SigLIP)."""
        if str(selection) == "cls" and not self.has_cls:
            raise ValueError(
                f"{self.name} ({self.family}) has no CLS token; "
                "choose --tokens mean, all or random:N"
            )

    def image_tokens(self, hidden_BTD: torch.Tensor) -> torch.Tensor:
        """A block output without its register tokens (``[B, T - n_registers, D]``: the CLS
        token, then the patches in grid order, as in a model without registers), which is
        what ``--tokens`` selects from; unchanged for models without registers."""
        if not self.n_registers:
            return hidden_BTD
        return torch.cat([hidden_BTD[:, :1], hidden_BTD[:, 1 + self.n_registers :]], dim=1)

    # -- LLaVA ---------------------------------------------------------------------------
    @property
    def read_layers(self) -> tuple[int, ...] | None:
        """Block indices whose output the surrounding model reads (LLaVA's
        ``vision_feature_layer``), or None for a standalone encoder (it reads its last block)."""
        if self.family != "llava":
            return None
        feature = self.model.config.vision_feature_layer
        feature = [feature] if isinstance(feature, int) else list(feature)
        # hidden_states[i] is the output of block i - 1; hidden_states[0] is the embedding.
        n_states = self.n_layers + 1
        return tuple(sorted((f % n_states) - 1 for f in feature))

    def affects_output(self, layer: int) -> bool:
        """Whether editing block ``layer`` can change what the surrounding model computes.

        For LLaVA: only blocks up to the deepest one it reads (editing block 23 of a
        24-block tower does nothing when ``vision_feature_layer = -2``)."""
        read = self.read_layers
        return True if read is None else self.layer_index(layer) <= max(read)

    # -- running -----------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """``pixel_values [B, C, H, W]`` from PIL images with the model's image processor."""
        if self.processor is None:
            raise ValueError("this Encoder has no image processor; pass processor= when wrapping")
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def _projection(self) -> nn.Module | None:
        return _find_named(self.model, "visual_projection")

    def _vision_forward(self, pixel_values: torch.Tensor) -> Any:
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.vision(pixel_values=pixel_values)

    def _embed(self, out: Any) -> torch.Tensor:
        if getattr(out, "image_embeds", None) is not None:
            return out.image_embeds
        if self.family == "llava":
            raise ValueError("post_projection is not defined for the vision tower inside LLaVA")
        pooled = out.pooler_output
        projection = self._projection() if self.family == "clip" else None
        return projection(pooled) if projection is not None else pooled

    @torch.inference_mode()
    def capture(
        self,
        pixel_values: torch.Tensor,
        layers: Sequence[int] = (),
        *,
        post_projection: bool = False,
    ) -> dict[int | str, torch.Tensor]:
        """Run the model once and return the requested hook points.

        Returns ``{block index: [B, T, D] block output, "post_projection": [B, E]}``. Without
        ``post_projection`` the forward stops right after the deepest block requested.
        """
        wanted = sorted({self.layer_index(layer) for layer in layers})
        if not wanted and not post_projection:
            raise ValueError("nothing to capture: ask for at least one layer or post_projection")
        captured: dict[int | str, torch.Tensor] = {}
        stop_at = None if post_projection else wanted[-1]
        handles = [
            self.blocks[i].register_forward_hook(_capture_hook(captured, i, i == stop_at))
            for i in wanted
        ]
        try:
            out = self._vision_forward(pixel_values)
            if post_projection:
                captured["post_projection"] = self._embed(out)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [i for i in wanted if i not in captured]
        assert not missing, f"blocks {missing} never ran: is {self.blocks_name} the block list?"
        return captured

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` image embeddings (``post_projection``)."""
        return self.capture(pixel_values, post_projection=True)["post_projection"]


def block_output(output: Any) -> torch.Tensor:
    """The hidden state in a block's output (a tensor, or a tuple whose first item is one)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _capture_hook(store: dict[int | str, torch.Tensor], index: int, stop: bool):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store[index] = block_output(output).detach()
        if stop:
            raise _StopForward

    return hook


def _model_class_name(config: Any) -> str:
    """The transformers class that loads a checkpoint with this config."""
    model_type = getattr(config, "model_type", "")
    archs = list(getattr(config, "architectures", None) or [])
    by_type = {
        "clip": "CLIPModel",
        "clip_vision_model": "CLIPVisionModelWithProjection",
        "siglip": "SiglipModel",
        "siglip_vision_model": "SiglipVisionModel",
        "dinov2": "Dinov2Model",
        "dinov2_with_registers": "Dinov2WithRegistersModel",
        "llava": "LlavaForConditionalGeneration",
    }
    if model_type not in by_type:
        raise ValueError(
            f"unsupported model type {model_type!r}; vlmsae supports {', '.join(SUPPORTED)}"
        )
    if model_type == "clip_vision_model" and "CLIPVisionModel" in archs:
        return "CLIPVisionModel"
    if model_type == "clip" and "CLIPVisionModelWithProjection" in archs:
        return "CLIPVisionModelWithProjection"
    return by_type[model_type]
