"""Finding a model: a local folder or a hub id, with one clear error when it is neither."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmsae.core.errors import UserError

_NOT_ON_HUB = ("RepositoryNotFoundError", "GatedRepoError", "HFValidationError")


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


def load_model_config(name: str | Path, revision: str | None = None, **kwargs: Any) -> Any:
    """The transformers config of a local model folder or hub id.

    Raises:
        UserError: the folder does not exist or holds no ``config.json``, the hub has no
            such model, or the model is not cached and the hub is unreachable.
    """
    from transformers import AutoConfig

    name = str(name)
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
    try:
        return AutoConfig.from_pretrained(name, revision=revision, **kwargs)
    except OSError as e:
        raise UserError(not_found_message(name, revision, e)) from e
