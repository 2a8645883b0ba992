"""SAEs from the Hugging Face hub or a local folder, in any format vlmsae reads.

:func:`load_pretrained` (``SAE.from_pretrained`` / ``SAE.load``) takes a local folder or a
hub repository id. A folder holds one of three formats, recognised by its files:

- vlmsae: ``config.json`` (with an ``sae`` section) + ``sae.safetensors``;
- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (see :mod:`vlmsae.formats.saelens`);
- dictionary_learning (the paper's release): ``ae.pt`` or ``checkpoints/ae_<step>.pt``
  next to its ``config.json`` (converted on load, read with ``weights_only=True``).

Hub downloads go through ``huggingface_hub.snapshot_download`` with only the SAE files of
the requested subfolder allowed, so the cache (``HF_HUB_CACHE`` / ``HF_HOME``), offline mode
(``HF_HUB_OFFLINE=1``) and tokens (``HF_TOKEN`` or ``hf auth login``) work as for any model.
:func:`push_to_hub` uploads a vlmsae checkpoint folder with ``upload_folder``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsae.core.errors import HubError
from vlmsae.sae.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from vlmsae.sae.model import load_sae

if TYPE_CHECKING:
    from vlmsae.sae.model import SAE

log = logging.getLogger(__name__)

SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
DL_WEIGHTS = "ae.pt"
# Files a folder of each format may hold; a download fetches these and nothing else.
SAE_PATTERNS = (CONFIG_FILE, WEIGHTS_FILE, *SAELENS_FILES, DL_WEIGHTS, "checkpoints/ae_*.pt")
# The files `push_to_hub` uploads from a vlmsae run folder (not its trainer state).
PUSH_PATTERNS = (CONFIG_FILE, WEIGHTS_FILE, "summary.json", "metrics.jsonl", "README.md")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def detect_format(folder: Path) -> str | None:
    """``"vlmsae"``, ``"saelens"``, ``"dictionary_learning"`` or None for a folder's files."""
    if (folder / WEIGHTS_FILE).is_file():
        return "vlmsae"
    if all((folder / f).is_file() for f in SAELENS_FILES):
        return "saelens"
    if dl_weights_file(folder) is not None:
        return "dictionary_learning"
    if (folder / CONFIG_FILE).is_file():
        return "vlmsae"  # config only: load_sae says what is missing
    return None


def dl_weights_file(folder: Path) -> Path | None:
    """``ae.pt``, else the last ``checkpoints/ae_<step>.pt`` (the paper's release has only
    those), else None."""
    if (folder / DL_WEIGHTS).is_file():
        return folder / DL_WEIGHTS
    steps = []
    for p in (folder / "checkpoints").glob("ae_*.pt"):
        m = re.fullmatch(r"ae_(\d+)\.pt", p.name)
        if m:
            steps.append((int(m.group(1)), p))
    return max(steps)[1] if steps else None


def looks_like_repo_id(text: str) -> bool:
    """``name`` or ``org/name`` with the characters the hub allows (not a path like ``./x``)."""
    return bool(_REPO_ID.match(text)) and ".." not in text and not text.endswith(".")


def check_revision(revision: str) -> str:
    """``revision`` if it can name a hub branch, tag or commit, else :class:`HubError`.

    Git's ref rules, narrowed to what the hub uses (``main``, ``v1.0``, ``refs/pr/3``, a commit
    hash): letters, digits, ``. _ - /``; no ``..``, no empty or dot-led component, no
    ``.lock`` ending. A revision becomes part of a cache path, so ``../x`` must never pass.
    """
    parts = revision.split("/")
    if (
        not _REVISION.match(revision)
        or ".." in revision
        or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
    ):
        raise HubError(
            f"{revision!r} is not a hub revision: give a branch, tag or commit hash (letters, "
            "digits, '.', '_', '-', '/'; no '..'), e.g. ORG/NAME@main or ORG/NAME@v1.0"
        )
    return revision


def parse_hub_ref(text: str) -> tuple[str, str | None, str | None] | None:
    """``ORG/NAME[/SUBFOLDER...][@REVISION]`` -> (repo id, subfolder, revision), or None
    when ``text`` cannot be a hub reference (the form the CLI's ``--sae`` accepts and
    ``SAE.path`` records)."""
    ref, _, revision = text.partition("@")
    parts = ref.split("/")
    if (
        len(parts) < 2
        or not looks_like_repo_id("/".join(parts[:2]))
        or not revision
        and "@" in text
    ):
        return None
    if any(p in ("", ".", "..") for p in parts[2:]):
        return None
    return (
        "/".join(parts[:2]),
        "/".join(parts[2:]) or None,
        check_revision(revision) if revision else None,
    )


def load_pretrained(
    id_or_path: str | Path,
    subfolder: str | None = None,
    revision: str | None = None,
    *,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Any:
    """An SAE from a local folder or a hub repository (``org/name``), in vlmsae, SAELens or
    dictionary_learning format (the latter two converted on load).

    Args:
        id_or_path: a folder, or a hub repository id (used when no such folder exists),
            optionally with the subfolder and revision in it: ``org/name/sub/dir@rev``.
        subfolder: folder inside the repository / local folder holding the SAE.
        revision: hub branch, tag or commit (default ``main``).
        device: torch device of the loaded SAE.
        cache_dir: hub cache (default: ``HF_HUB_CACHE``).
        token: hub token (default: ``HF_TOKEN`` or the saved login).

    The loaded SAE's ``path`` attribute records where it came from as given (the hub id or
    the path as typed, plus ``/subfolder`` and ``@revision``), never a resolved cache path.
    """
    given = str(id_or_path)
    local = Path(given)
    if local.exists():
        if revision is not None:
            raise HubError(f"revision={revision!r} applies to hub ids, but {given} is a folder")
        folder = local / subfolder if subfolder else local
        origin = "folder"
    elif (ref := parse_hub_ref(given)) is not None:
        repo_id, ref_sub, ref_rev = ref
        if ref_sub and subfolder:
            raise HubError(f"{given} names a subfolder already; do not pass subfolder= too")
        if ref_rev and revision and ref_rev != revision:
            raise HubError(f"{given} names revision {ref_rev!r} but revision={revision!r}")
        given, subfolder, revision = repo_id, subfolder or ref_sub, revision or ref_rev
        if revision is not None:
            check_revision(revision)
        folder = _download(given, subfolder, revision, cache_dir=cache_dir, token=token)
        origin = "hub"
    else:
        load_sae(local)  # raises the CheckpointError that names the missing folder
        raise AssertionError("unreachable")
    try:
        sae = _load_folder(folder, given, subfolder, origin, device)
    except _NoSAE as e:
        found = _hub_sae_folders(given, revision, token) if origin == "hub" else []
        hint = f"; SAE folders in the repository: {', '.join(found)}" if found else ""
        raise CheckpointError(f"{e}{hint}") from None
    sae.path = given + (f"/{subfolder}" if subfolder else "") + (f"@{revision}" if revision else "")
    sae.local_dir = folder  # where its files are (a hub snapshot in the cache, or the folder)
    return sae


def _load_folder(folder: Path, given: str, subfolder: str | None, origin: str, device: str):
    fmt = detect_format(folder) if folder.is_dir() else None
    if fmt == "vlmsae":
        return load_sae(folder, device=device)  # its errors say what is missing
    if fmt == "saelens":
        from vlmsae.formats.saelens import load_saelens

        return load_saelens(folder).to(device)
    if fmt == "dictionary_learning":
        from vlmsae.formats.dictionary_learning import convert_dictionary_learning

        ae_path = dl_weights_file(folder)
        log.info("reading dictionary_learning checkpoint %s", ae_path)
        return convert_dictionary_learning(ae_path).to(device)
    where = f"{given}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    local = origin == "folder"  # a hub snapshot holds only what was asked for: list it remotely
    found = _sae_folders(folder if folder.is_dir() else folder.parent) if local else []
    hint = f"; SAE folders found: {', '.join(found)}" if found else ""
    state = "holds no SAE" if folder.is_dir() or origin == "hub" else "does not exist"
    raise _NoSAE(
        f"{where} {state}: expected config.json + sae.safetensors (vlmsae), cfg.json + "
        f"sae_weights.safetensors (SAELens) or ae.pt + config.json (dictionary_learning); "
        f"pass subfolder= (CLI: ID/SUBFOLDER) naming the folder that has them, or run "
        f"`vlmsae convert` on a lone ae.pt{hint}"
    )


class _NoSAE(CheckpointError):
    """A folder holds none of the SAE formats (the caller may add where to look)."""


def _sae_folders(root: Path) -> list[str]:
    """Relative folders below ``root`` that hold an SAE (for error messages)."""
    if not root.is_dir():
        return []
    return _folders_of(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _folders_of(files: Any, limit: int = 8) -> list[str]:
    """The folders (``.`` for the top) holding SAE files among relative ``files``."""
    hits = set()
    for f in files:
        path = Path(f)
        if path.name in SAE_PATTERNS or re.fullmatch(r"ae_\d+\.pt", path.name):
            folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            hits.add(str(folder))
    ordered = sorted(hits)
    return ordered[:limit] + ([f"... ({len(ordered)} in all)"] if len(ordered) > limit else [])


def _hub_sae_folders(repo_id: str, revision: str | None, token: str | bool | None) -> list[str]:
    """SAE folders of a hub repository, from its file list (none when offline)."""
    from huggingface_hub import constants, list_repo_files
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return []
    try:
        return _folders_of(list_repo_files(repo_id, revision=revision, token=token))
    except (HfHubHTTPError, OSError, ValueError) as e:
        log.debug("could not list %s: %s", repo_id, e)
        return []


def _download(
    repo_id: str,
    subfolder: str | None,
    revision: str | None,
    *,
    cache_dir: str | Path | None,
    token: str | bool | None,
) -> Path:
    """Fetch only the SAE files of ``subfolder`` (through the cache); the local folder."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    what = f"{repo_id}" + (f"/{subfolder}" if subfolder else "") + f"@{revision or 'main'}"
    try:
        root = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=[prefix + p for p in SAE_PATTERNS],
        )
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id} has no revision {revision!r}: check the branch/tag") from e
    except GatedRepoError as e:
        raise HubError(
            f"{repo_id} is gated: accept its terms on the hub, then set HF_TOKEN (or run "
            "`hf auth login`)"
        ) from e
    except RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_id} is neither a local folder nor a hub repository you can read: check "
            "the path or id (a private repository needs HF_TOKEN or `hf auth login`)"
        ) from e
    except LocalEntryNotFoundError as e:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise HubError(
            f"{what} is neither a local folder nor in the hub cache, and the hub cannot be "
            f"reached{offline}: check the path, or download it once with network access"
        ) from e
    except HfHubHTTPError as e:
        raise HubError(f"downloading {what} failed: {e}") from e
    folder = Path(root) / prefix if prefix else Path(root)
    log.info("%s -> %s", what, folder)
    return folder


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it can name a hub repository to push to (``ORG/NAME``), else HubError."""
    if not looks_like_repo_id(repo_id) or "/" not in repo_id:
        raise HubError(
            f"{repo_id!r} is not a hub repository id: give it as ORG/NAME (your user name or "
            "organisation, a slash, the repository name)"
        )
    return repo_id


def push_to_hub(
    sae_or_dir: SAE | str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    path_in_repo: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an SAE (an :class:`~vlmsae.SAE` or a vlmsae checkpoint folder) to hub
    repository ``repo_id`` (created when missing); returns the commit URL.

    From a run folder only ``config.json``, ``sae.safetensors`` and the run's summary and
    metrics are uploaded, never the trainer state under ``checkpoints/``."""
    from huggingface_hub import create_repo, upload_folder
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
    message = commit_message or "Upload SAE with vlmsae"
    try:
        with tempfile.TemporaryDirectory(prefix="vlmsae-push-") as tmp:
            folder = Path(tmp)
            if isinstance(sae_or_dir, str | Path):
                folder = Path(sae_or_dir)
                load_sae(folder)  # refuse to upload something that does not load
            else:
                sae_or_dir.save(folder)
            create_repo(repo_id, private=private, token=token, exist_ok=True)
            info = upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                path_in_repo=path_in_repo,
                revision=revision,
                token=token,
                commit_message=message,
                allow_patterns=list(PUSH_PATTERNS),
            )
    except LocalTokenNotFoundError as e:
        raise HubError(
            f"pushing to {repo_id} needs a hub token: set HF_TOKEN or run `hf auth login`"
        ) from e
    except HfHubHTTPError as e:
        raise HubError(f"pushing to {repo_id} failed: {e}") from e
    except OSError as e:  # no network: httpx raises ConnectError, an OSError subclass or not
        raise HubError(f"pushing to {repo_id} failed: {e}") from e
    url = str(getattr(info, "commit_url", info))
    log.info("pushed to %s", url)
    return url
