"""``cloome serve``: a search page (Gradio) over an embedding store.

    cloome serve --model model/ --images embeddings/ [--molecules library_embeddings/] [--index index/] [--port 7860]

Molecule -> sites, site -> molecules, site -> similar sites and the store's provenance, answered by the code path
of ``cloome search``. Stores are folders or Hub dataset ids. The page binds 127.0.0.1 and makes no public share
link unless ``--share`` is given; it serves no file of the disk.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome serve", description=(
        "Serve a CLOOME search page: SMILES -> sites, site -> molecules and site -> similar sites over a "
        "'cloome embed' store."))
    p.add_argument("--model", default=None,
                   help="model encoding the queries (default: the one, at the revision, that made the embeddings)")
    p.add_argument("--images", required=True,
                   help="image embedding store ('cloome embed' output folder or Hub dataset id): metadata, "
                        "thumbnails, provenance, and the index unless --index is given")
    p.add_argument("--molecules", default=None,
                   help="molecule embedding store (default: the image store's molecules/, if it has one)")
    p.add_argument("--index", default=None,
                   help="a saved index ('cloome search --save_index', e.g. IVF for 1M sites), loaded once at start")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--k", type=int, default=5, help="default number of hits shown")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ValueError(f"cloome serve needs gradio ({err}); install it with: pip install 'cloome-hf[serve]'") from err
    from ..serve import SearchService, build_app, launch

    service = SearchService.from_stores(args.images, args.molecules, model=args.model, index=args.index)
    launch(build_app(service, default_k=args.k), host=args.host, port=args.port, share=args.share)
    return None
