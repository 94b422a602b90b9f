"""``cloome serve``: a Gradio search page over an embedding store (layout :mod:`cloome_hf.serve.app`, answers
:mod:`cloome_hf.serve.service`, uploads :mod:`cloome_hf.serve.uploads`, Hub Space folder :mod:`cloome_hf.serve.space`)."""

from .app import build_app, launch
from .service import SearchService

__all__ = ["SearchService", "build_app", "launch"]
