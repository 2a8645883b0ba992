"""Finding a model: an alias, a local folder or a hub id, with one clear error when it is
none of them.

Aliases (one table for every ``--model``, ``--clip``, ``--llava`` and the library calls behind
them): ``toyworld`` names the shipped toy models of the shapes world, ``toyworld:WORLD`` those
of another world, and ``/clip``, ``/llava`` or ``/dino`` picks one of them (default: the kind
of model the option asks for). An alias never reaches the hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vlmsae.core.errors import UserError

_NOT_ON_HUB = ("RepositoryNotFoundError", "GatedRepoError", "HFValidationError")
# The toy worlds' shipped model folders (the layout `vlmsae toyworld build` writes): data,
# found by path so that this room need not import the toy world's code.
TOY_MODELS_DIR = Path(__file__).resolve().parents[1] / "toyworld" / "models"
TOY_WORLD_DIRS = {"shapes": "", "emoji": "emoji"}
TOY_MODELS = ("clip", "llava", "dino")
_TOY_ALIAS = re.compile(r"^toyworld(?::(?P<world>[^/]*))?(?:/(?P<model>.*))?$")


def resolve_alias(name: str | Path, kind: str = "clip") -> str:
    """The folder an alias names (``toyworld[:WORLD][/clip|llava|dino]``, ``kind`` when no
    model is named), or ``name`` unchanged when it is not an alias.

    Raises:
        UserError: ``toyworld:...`` with an unknown world or model.
    """
    text = str(name)
    match = _TOY_ALIAS.match(text)
    if match is None or Path(text).exists():
        return text
    world = "shapes" if match["world"] is None else match["world"]
    model = kind if match["model"] is None else match["model"]
    if world not in TOY_WORLD_DIRS or model not in TOY_MODELS:
        raise UserError(
            f"{text!r} is not a toy-world model alias: use toyworld[:WORLD][/MODEL] with WORLD "
            f"one of {', '.join(TOY_WORLD_DIRS)} and MODEL one of {', '.join(TOY_MODELS)}"
        )
    return str(TOY_MODELS_DIR / TOY_WORLD_DIRS[world] / model)


def _check_hub_id(name: str) -> None:
    """Refuse at once a name that is no folder and cannot be a hub id (no network call)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(
            f"model {name!r} is neither a local folder nor a valid hub id (ORG/NAME); check the "
            "path, or use an alias such as toyworld or toyworld:emoji"
        ) from None


def _looks_like_path(name: str) -> bool:
    """A folder the user meant (``./m``, ``/abs/m``, ``~/m``, ``a/b/c``), not a hub id."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in name


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def not_found_message(name: str, revision: str | None, exc: BaseException) -> str:
    """Why loading ``name`` failed: no such folder, no such hub model or revision, or a
    hub id that is not cached while the hub cannot be reached (offline)."""
    kinds = {type(e).__name__ for e in _chain(exc)}
    if "RevisionNotFoundError" in kinds or "is not a valid git identifier" in str(exc):
        return f"model {name!r} has no revision {revision!r} on the hub; check --revision"
    if kinds & set(_NOT_ON_HUB) or "is not a valid model identifier" in str(exc):
        return (
            f"model {name!r} is neither a local folder nor a model on the hub; check the id "
            "(e.g. openai/clip-vit-large-patch14-336) or pass a local folder"
        )
    return f"model {name!r} not found locally and the hub is unreachable; pass a local folder"


def load_model_config(
    name: str | Path, revision: str | None = None, *, kind: str = "clip", **kwargs: Any
) -> Any:
    """The transformers config of an alias (see :func:`resolve_alias`; ``kind``: the model
    an alias without one names), a local model folder or a hub id.

    Raises:
        UserError: the folder does not exist or holds no ``config.json``, the hub has no
            such model, or the model is not cached and the hub is unreachable.
    """
    from transformers import AutoConfig

    name = resolve_alias(name, kind)
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        if not path.is_dir():
            raise UserError(f"model folder {name} does not exist; pass a model folder or hub id")
        if not (path / "config.json").is_file():
            raise UserError(
                f"{name} is not a model folder: it has no config.json (a folder written by "
                "save_pretrained, or a hub id, is expected)"
            )
    if path.is_dir():
        try:
            return AutoConfig.from_pretrained(str(path), revision=revision, **kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read the model config in {name}: {first}") from e
    _check_hub_id(name)
    try:
        return AutoConfig.from_pretrained(name, revision=revision, **kwargs)
    except OSError as e:
        raise UserError(not_found_message(name, revision, e)) from e
