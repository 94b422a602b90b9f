"""Small site pictures kept in an embedding store, so a search page need not open the raw images.

``cloome embed --thumbnails`` writes, beside each image shard, ``thumbnails/shard-NNNNN.parquet``: one row per
site of that shard, in the same order, with ``sample_key`` and ``thumbnail`` (the WebP bytes, lossy at quality
:data:`THUMBNAIL_QUALITY`, of :func:`~cloome_hf.inference.site_picture.site_picture`, fitted into ``size`` x
``size`` pixels: ~1 KB a site at 128 px where PNG takes ~25 KB, so a 1 M-site store carries ~1 GB of pictures).
Row groups are small so that one hit reads one group, not the shard. A thumbnail shard is written before its image shard, so a
finished image shard always has its thumbnails (a resume recomputes both).
"""

from __future__ import annotations

import bisect
import functools
import io
import os
from collections.abc import Sequence

import numpy as np

from ..safe_io import temporary_name
from .site_picture import site_picture

THUMBNAILS = "thumbnails"
#: Longest side of a thumbnail, in pixels.
DEFAULT_THUMBNAIL_SIZE = 128
#: WebP quality of the thumbnails (a picture to recognise a site by, not to measure it).
THUMBNAIL_QUALITY = 85
_ROW_GROUP = 64


def thumbnail_bytes(site: np.ndarray, channel_names: Sequence[str], size: int = DEFAULT_THUMBNAIL_SIZE) -> bytes:
    """A ``(C, H, W)`` site -> WebP bytes of its composite picture, its longest side ``size`` pixels at most."""
    from PIL import Image

    picture = Image.fromarray(site_picture(site, channel_names))
    picture.thumbnail((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def write_thumbnail_shard(path: str, sample_keys: Sequence[str], sites, channel_names: Sequence[str],
                          size: int = DEFAULT_THUMBNAIL_SIZE) -> None:
    """Write one thumbnail shard atomically: ``sites`` is an iterable of ``(C, H, W)`` arrays, one a key."""
    write_thumbnail_table(path, sample_keys, [thumbnail_bytes(site, channel_names, size) for site in sites])


def write_thumbnail_table(path: str, sample_keys: Sequence[str], pictures: Sequence[bytes]) -> None:
    """Write one thumbnail shard of ready picture bytes (:func:`thumbnail_bytes`), one a key, atomically, in the
    layout :class:`ThumbnailStore` reads (small row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(pictures) != len(sample_keys):
        raise ValueError(f"{len(pictures)} thumbnails for {len(sample_keys)} sample keys in {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    pq.write_table(pa.table({"sample_key": pa.array(list(sample_keys), pa.string()),
                             "thumbnail": pa.array(list(pictures), pa.binary())}), tmp, row_group_size=_ROW_GROUP)
    os.replace(tmp, path)


def thumbnail_files(store: str | os.PathLike) -> list[str]:
    """The thumbnail shards of ``store``, in row order (the names sort as the image shards do, in a store folder
    and in a pushed dataset repo alike); ``[]`` when it has none."""
    folder = os.path.join(os.fspath(store), THUMBNAILS)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".parquet")]


def thumbnail_column(store: str | os.PathLike, sample_keys: Sequence[str]):
    """The thumbnails of ``sample_keys``, looked up by key in ``store``'s thumbnail shards: a ``pyarrow`` binary
    array of WebP bytes, one per key in their order, null where the store holds no picture of that site.
    ``None`` when the store has no thumbnails at all."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = thumbnail_files(store)
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f, columns=["sample_key", "thumbnail"]) for f in files])
    where = pc.index_in(pa.array(list(sample_keys), pa.string()), value_set=table.column("sample_key").combine_chunks())
    return table.column("thumbnail").combine_chunks().take(where)  # a null index takes a null


class ThumbnailStore:
    """The thumbnails of a store, addressed by the global row of a hit (as :meth:`EmbeddingIndex.search_table`
    returns it in ``row``) and checked against its ``sample_key``. Only the shards' footers are read up front."""

    def __init__(self, store: str | os.PathLike):
        import pyarrow.parquet as pq

        self.files = [pq.ParquetFile(f) for f in thumbnail_files(store)]
        self.starts, total = [], 0
        for f in self.files:
            self.starts.append(total)
            total += f.metadata.num_rows
        self.num_rows = total

    def __len__(self) -> int:
        return self.num_rows

    @functools.lru_cache(maxsize=256)
    def _group(self, shard: int, group: int):
        table = self.files[shard].read_row_group(group)
        return table.column("sample_key").to_pylist(), table.column("thumbnail").to_pylist()

    def picture_bytes(self, row: int, sample_key: str | None = None) -> bytes | None:
        """The encoded picture of global ``row``; ``None`` when the store has none there, or when it holds another
        site than ``sample_key`` (thumbnails of another embedding run)."""
        if not 0 <= int(row) < self.num_rows:
            return None
        shard = bisect.bisect_right(self.starts, int(row)) - 1
        offset = int(row) - self.starts[shard]
        group, within = divmod(offset, self.files[shard].metadata.row_group(0).num_rows)
        keys, pictures = self._group(shard, group)
        if sample_key is not None and keys[within] != sample_key:
            return None
        return pictures[within]

    def picture(self, row: int, sample_key: str | None = None) -> np.ndarray | None:
        """The thumbnail of global ``row`` as an ``(h, w, 3)`` uint8 array (see :meth:`picture_bytes`)."""
        from PIL import Image

        data = self.picture_bytes(row, sample_key)
        return None if data is None else np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


__all__ = ["DEFAULT_THUMBNAIL_SIZE", "THUMBNAILS", "THUMBNAIL_QUALITY", "ThumbnailStore", "thumbnail_bytes",
           "thumbnail_column", "thumbnail_files", "write_thumbnail_shard", "write_thumbnail_table"]
