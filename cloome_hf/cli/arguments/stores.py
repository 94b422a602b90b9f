"""The shared group *stores*: the embedding stores a search page reads (``serve``, ``space``).

``--embeddings`` names the store as ``cloome search --embeddings`` does (``--images`` is its old spelling here;
in ``cloome search`` ``--images`` are query files)."""

from __future__ import annotations

from dataclasses import dataclass

from .parser import arg


@dataclass
class PageStoreArguments:
    _argument_group_name = "stores"

    embeddings: str | None = arg(None, "the embedding store ('cloome embed' output folder or Hub dataset id), as "
                                       "'cloome search --embeddings' takes it: image embeddings, metadata, "
                                       "thumbnails, provenance, and the index unless --index is given",
                                 old=("--images",))
    molecules: str | None = arg(None, "molecule embedding store (default: the --embeddings store's molecules/, if "
                                      "it has one)")
    index: str | None = arg(None, "a saved index ('cloome search --save_index', e.g. IVF for 1M sites), loaded "
                                  "once at start")
    k: int = arg(5, "default number of hits shown")


__all__ = ["PageStoreArguments"]
