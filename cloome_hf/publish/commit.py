"""The one way this package commits to the Hugging Face Hub: create the repo if needed, then commit exactly the
files it is given, in one commit.

    commit_files("me/cloome-demo", folder, ["README.md", "config.json", ...], commit_message="Upload CLOOME model")
    commit_files("me/emb", contents={"README.md": card.encode()}, repo_type="dataset", commit_message="Add card")

``cloome push`` (model and dataset card), ``cloome convert --push_to_hub`` and :func:`~cloome_hf.publish.hub.
push_model` go through it, so nothing that lies next to the files in a folder (a ``.env``, notes, an older
layout's extras) ever reaches the Hub. (Only the embedding shards go up by ``datasets``' own ``push_to_hub``, which
also keeps the card's ``dataset_info`` metadata in step.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence


def commit_files(repo_id: str, folder: str | os.PathLike | None = None, files: Sequence[str] = (), *,
                 contents: Mapping[str, bytes] | None = None, deletions: Sequence[str] = (), commit_message: str, repo_type: str = "model",
                 private: bool = False, token: str | None = None, revision: str | None = None, api=None) -> Any:
    """Create ``repo_id`` (``exist_ok``) and commit ``files`` (paths relative to ``folder``) plus ``contents``
    (repo path -> bytes) to its root in one commit, removing the repo paths ``deletions`` in the same commit (files
    an earlier layout owned); returns ``create_commit``'s result.

    ``api``: an ``HfApi`` (default: one made with ``token``)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if files and folder is None:
        raise ValueError(f"commit_files: the files {list(files)[:3]}... need the folder they are relative to")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name.replace(os.sep, "/"), path_or_fileobj=str(Path(folder) / name))
                  for name in files]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in (contents or {}).items()]
    operations += [CommitOperationDelete(path_in_repo=name) for name in deletions]
    if not operations:
        raise ValueError(f"nothing to commit to {repo_id}: no files and no contents given")
    return api.create_commit(repo_id=repo_id, operations=operations, repo_type=repo_type, revision=revision,
                             commit_message=commit_message)


def repo_files(repo_id: str, repo_type: str = "model", token: str | None = None, api=None) -> list[str]:
    """The files ``repo_id`` holds now (what a new layout may have to remove); ``[]`` when it does not exist yet."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return (api or HfApi(token=token)).list_repo_files(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return []


__all__ = ["commit_files", "repo_files"]
