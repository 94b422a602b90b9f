"""A Hugging Face Space folder serving the ``cloome serve`` page: ``app.py``, ``requirements.txt``, ``README.md``.

Pushing the folder to a Gradio Space gives the same page as ``cloome serve`` with the same arguments: ``app.py``
opens the stores through :meth:`SearchService.from_stores` and lays out :func:`build_app`. It binds what the
Space sets (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``), else 127.0.0.1:7860. A Space reaches only Hub ids;
a local folder is written as its absolute path, which serves here but not from a pushed Space.
"""

from __future__ import annotations

import os

from ..safe_io import atomic_write_text

SPACE_FILES = ("app.py", "requirements.txt", "README.md")

_APP = '''"""CLOOME search page (written by `cloome space`): molecule -> sites, site -> molecules, site -> similar sites."""

import os

from cloome_hf.serve import SearchService, build_app, launch

MODEL = {model!r}
EMBEDDINGS = {embeddings!r}
MOLECULES = {molecules!r}
INDEX = {index!r}

service = SearchService.from_stores(EMBEDDINGS, MOLECULES, model=MODEL, index=INDEX)
demo = build_app(service, default_k={k})

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''

_README = '''---
title: {title}
emoji: 🔬
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: mit
{hub_links}---

# {title}

Query Cell Painting sites with a molecule (SMILES), or molecules and similar sites with a site, using the
CLOOME model `{model}` over the embedding store `{embeddings}`. Written by `cloome space`; the same page runs
locally with

```
cloome serve {serve_args}
```
'''


def _hub_id(value: str | None) -> str | None:
    """The repository id when ``value`` names a Hub repo (``owner/name[@revision]``, not a path here), else ``None``."""
    from ..inference.store_location import hub_repo_id

    hub = hub_repo_id(value)
    return hub[0] if hub else None


def _where(value: str | None) -> str | None:
    return None if value is None else (value if _hub_id(value) else os.path.abspath(value))


def write_space(output_dir: str, *, embeddings: str, model: str | None = None, molecules: str | None = None,
                index: str | None = None, k: int = 5, title: str = "CLOOME search") -> list[str]:
    """Write the Space folder; returns the paths written. Refuses a folder holding other files than these."""
    import gradio

    import cloome_hf

    os.makedirs(output_dir, exist_ok=True)
    others = sorted(set(os.listdir(output_dir)) - set(SPACE_FILES) - {".git", ".gitattributes"})
    if others:
        raise ValueError(f"{output_dir} holds other files than a Space's ({', '.join(others[:5])}); "
                         "write the Space into a new or empty --output_dir")
    model, embeddings, molecules, index = _where(model), _where(embeddings), _where(molecules), _where(index)
    links = [f"{kind}:\n- {_hub_id(v)}\n" for kind, v in (("models", model), ("datasets", embeddings)) if _hub_id(v)]
    serve_args = " ".join(f"--{name} {value}" for name, value in (("model", model), ("embeddings", embeddings),
                                                                  ("molecules", molecules), ("index", index)) if value)
    version = cloome_hf.__version__
    files = {
        "app.py": _APP.format(model=model, embeddings=embeddings, molecules=molecules, index=index, k=int(k)),
        "requirements.txt": f"cloome-hf[serve]=={version}\ngradio=={gradio.__version__}\n",
        "README.md": _README.format(title=title, gradio_version=gradio.__version__, hub_links="".join(links),
                                    model=model or "(the store's)", embeddings=embeddings, serve_args=serve_args),
    }
    written = []
    for name, text in files.items():
        atomic_write_text(os.path.join(output_dir, name), text)
        written.append(os.path.join(output_dir, name))
    return written


def local_folders(*values: str | None) -> list[str]:
    """The values that are folders here (which a pushed Space cannot reach)."""
    return [v for v in values if v and os.path.exists(v)]


__all__ = ["SPACE_FILES", "local_folders", "write_space"]
