"""Where an embedding store is: a folder here, or a Hub dataset id turned into one. The one owner of that rule.

A store location is

* a local folder (``embeddings/``, ``/data/store``): used as it is;
* a Hub dataset id, ``owner/name`` or ``owner/name@revision`` (a branch, tag or commit): its snapshot, downloaded
  into the Hugging Face cache by ``huggingface_hub.snapshot_download(repo_type="dataset")``, or found there (so
  ``HF_HUB_OFFLINE=1`` works for a dataset fetched before).

A location that looks local (``./x``, ``/x``, ``~/x``, or whose parent folder exists: see
:func:`~cloome_hf.data.loading.looks_local`) and is missing is reported as a missing path and never sent to the Hub:
a mistyped folder must not turn into a Hub lookup. ``cloome search --embeddings`` and ``--index``, ``cloome serve`` / ``cloome
space`` (``--embeddings``, ``--molecules``, ``--index``) and ``cloome train --image_features`` all open their
folders through :func:`store_folder`.
"""

from __future__ import annotations

import os


class StoreNotFoundError(FileNotFoundError):
    """A store location that is neither a folder here nor a Hub dataset that could be fetched; ``hint`` says what
    to do (the CLI prints it, see :func:`cloome_hf.cli.errors.hint_for`)."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


def hub_repo_id(location: str | os.PathLike | None) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``location`` names a Hub repository (``owner/name``, optionally
    ``@revision``) rather than a path here; ``None`` for an existing path, a local-looking one, or another form.
    (The rule for model ids too: ``cloome space`` writes Hub ids of either kind as ids, folders as paths.)"""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from ..data.loading import looks_local

    if location is None:
        return None
    text = os.fspath(location)
    if os.path.exists(text) or looks_local(text):
        return None
    repo_id, at, revision = text.partition("@")
    if repo_id.count("/") != 1 or (at and not revision):
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, revision or None


def store_folder(location: str | os.PathLike | None, what: str = "embedding store",
                 written_by: str = "cloome embed") -> str | None:
    """The local folder of the store at ``location`` (``None`` stays ``None``): the folder itself, or the snapshot
    of a Hub dataset id. ``FileNotFoundError`` naming ``location`` when it is a missing local path, a file, or a
    Hub id that cannot be fetched (offline and not cached, no such dataset, no connection).

    ``what`` names the folder in those errors and ``written_by`` the command that makes one (the hint for a file
    given instead): a saved search index (``cloome search --save_index``) is found by the same rule."""
    from ..data.loading import refuse_missing_local_path

    if location is None:
        return None
    path = os.fspath(location)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise StoreNotFoundError(f"{what} {path!r} is a file, not a folder",
                                 f"give the folder '{written_by}' wrote, not a file in it")
    scheme, sep, rest = path.partition("://")
    if sep and scheme.isalnum():  # a URL is neither: say which form of it this command reads
        raise StoreNotFoundError(f"{what} {path!r} is a {scheme}:// URL, not a folder here or a Hub "
                                 "dataset id (owner/name or owner/name@revision)",
                                 _url_hint(scheme.lower(), rest))
    refuse_missing_local_path(path, what)
    hub = hub_repo_id(path)
    if hub is None:
        raise StoreNotFoundError(f"{what} {path!r} is neither a folder here nor a Hub dataset id "
                                 "(owner/name or owner/name@revision)",
                                 f"check the path (relative paths are read from {os.getcwd()}) or the dataset id")
    return _snapshot(path, *hub, what)


def _url_hint(scheme: str, rest: str) -> str:
    if scheme == "file":
        return f"give the path itself: {rest or '/'}"
    if scheme == "hf" and rest.startswith("datasets/"):
        return f"give the dataset id itself: {rest[len('datasets/'):]}"
    return "copy it into a folder here first (for example 'aws s3 sync URL folder/'), and give that folder"


def beside_snapshot(folder: str, name: str) -> str | None:
    """For a store downloaded from the Hub (``<cache>/datasets--owner--name/snapshots/<commit>``), a folder for files
    derived from it, ``<cache>/datasets--owner--name/<name>/<commit>``: beside the snapshot, never in it, so the
    download stays as huggingface_hub wrote it (and ``hf cache delete`` removes both). ``None`` for a folder that
    is not a cached snapshot."""
    snapshots, commit = os.path.split(os.path.normpath(os.fspath(folder)))
    if os.path.basename(snapshots) != "snapshots" or not os.path.basename(os.path.dirname(snapshots)).startswith(
            "datasets--"):
        return None
    return os.path.join(os.path.dirname(snapshots), name, commit)


def _snapshot(location: str, repo_id: str, revision: str | None, what: str) -> str:
    """``snapshot_download`` of the dataset, its failures as one :class:`StoreNotFoundError` naming ``location``."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    lead = f"{what} {location!r} is not a local folder and could not be fetched from the Hub"
    try:
        return huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=revision)
    except IncompleteSnapshotError as err:
        raise StoreNotFoundError(f"{lead}, and its cached snapshot {err.snapshot_path} is incomplete",
                                 "fetch it again while online (unset HF_HUB_OFFLINE) to complete it") from err
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            raise StoreNotFoundError(
                f"{lead} (offline: HF_HUB_OFFLINE is set and the dataset is not in the cache {constants.HF_HUB_CACHE})",
                "fetch it once while online (unset HF_HUB_OFFLINE), or give the store's local folder") from err
        raise StoreNotFoundError(f"{lead} (no connection, and the dataset is not in the cache "
                                 f"{constants.HF_HUB_CACHE})",
                                 "check the network, or give the store's local folder") from err
    except RevisionNotFoundError as err:
        raise StoreNotFoundError(f"{lead} (the dataset has no revision {revision!r})",
                                 "give a branch, tag or commit the dataset has") from err
    except RepositoryNotFoundError as err:
        raise StoreNotFoundError(f"{lead} (no such dataset, or it is private: log in with 'hf auth login')",
                                 "check the dataset id, or give the store's local folder") from err
    except HfHubHTTPError as err:
        raise StoreNotFoundError(f"{lead} ({type(err).__name__}: {err})",
                                 "check the dataset id and your access to it ('hf auth login')") from err


__all__ = ["StoreNotFoundError", "beside_snapshot", "hub_repo_id", "store_folder"]
