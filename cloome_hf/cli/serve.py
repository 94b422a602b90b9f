"""``cloome serve``: a search page (Gradio) over an embedding store.

    cloome serve --model model/ --embeddings embeddings/ [--molecules library_embeddings/] [--index index/] [--port 7860]

Molecule -> sites, site -> molecules, site -> similar sites and the store's provenance, answered by the code path
of ``cloome search``. Stores are folders or Hub dataset ids. The page binds 127.0.0.1 and makes no public share
link unless ``--share`` is given; it serves no file of the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arguments import ModelSourceArguments, PageStoreArguments, arg, parse_command

DESCRIPTION = ("Serve a CLOOME search page: SMILES -> sites, site -> molecules and site -> similar sites over a "
               "'cloome embed' store.")


@dataclass
class ServeArguments:
    _argument_group_name = "server"

    host: str = arg("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = arg(7860, "port to listen on")
    share: bool = arg(False, "also open a public gradio.live share link")


#: --model encodes the queries; by default it is the model (at the revision) that made the embeddings.
ARGUMENTS = (ModelSourceArguments, PageStoreArguments, ServeArguments)


def parse_arguments(argv=None):
    return parse_command("serve", ARGUMENTS, argv, required=("embeddings",), description=DESCRIPTION)


def main(argv=None):
    args = parse_arguments(argv)
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ValueError(f"cloome serve needs gradio ({err}); install it with: pip install 'cloome-hf[serve]'") from err
    from ..serve import SearchService, build_app, launch

    service = SearchService.from_stores(args.embeddings, args.molecules, model=args.model, index=args.index)
    launch(build_app(service, default_k=args.k), host=args.host, port=args.port, share=args.share)
    return None


__all__ = ["ARGUMENTS", "ServeArguments", "main", "parse_arguments"]
