"""``cloome serve``: a Gradio search page over an embedding store (see :mod:`cloome_hf.serve.app`)."""

from .app import SearchService, build_app

__all__ = ["SearchService", "build_app"]
