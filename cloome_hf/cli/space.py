"""``cloome space``: write a Hugging Face Space folder that serves the ``cloome serve`` page.

    cloome space --model me/cloome --images me/cloome-embeddings --output_dir space/
    cd space && python app.py                      # the same page, locally; push the folder to a Gradio Space

Writes ``app.py``, ``requirements.txt`` and a ``README.md`` with the Space metadata (sdk gradio, its version,
app_file, the model and dataset ids). A Space reaches only Hub ids: give those for a Space you push.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome space", description=(
        "Write a Hugging Face Space folder (app.py, requirements.txt, README.md) serving the 'cloome serve' page."))
    p.add_argument("--model", default=None,
                   help="model encoding the queries, a Hub id or folder (default: the one that made the store)")
    p.add_argument("--images", required=True, help="image embedding store: Hub dataset id or 'cloome embed' folder")
    p.add_argument("--molecules", default=None, help="molecule embedding store (default: the image store's)")
    p.add_argument("--index", default=None, help="a saved index folder ('cloome search --save_index')")
    p.add_argument("--output_dir", required=True, help="the Space folder to write (new or empty)")
    p.add_argument("--k", type=int, default=5, help="default number of hits shown")
    p.add_argument("--title", default="CLOOME search", help="the Space's title")
    return p


def main(argv=None) -> list[str]:
    args = build_parser().parse_args(argv)
    from ..data.loading import refuse_missing_local_path
    from ..inference.store_location import hub_repo_id
    from ..serve.space import local_folders, write_space

    for name in ("images", "molecules", "index", "model"):
        value = getattr(args, name)
        if value and not os.path.exists(value) and hub_repo_id(value) is None:
            refuse_missing_local_path(value, f"--{name}")
            raise ValueError(f"--{name} {value} is neither a folder here nor a Hub id (owner/name[@revision])")
    written = write_space(args.output_dir, images=args.images, model=args.model, molecules=args.molecules,
                          index=args.index, k=args.k, title=args.title)
    print(f"wrote {', '.join(written)}; run it with: cd {args.output_dir} && python app.py", file=sys.stderr)
    local = local_folders(args.model, args.images, args.molecules, args.index)
    if local:
        print(f"note: {', '.join(local)} {'is a local folder' if len(local) == 1 else 'are local folders'}: the "
              "app runs here, but a pushed Space needs Hub ids (publish them with 'cloome push')", file=sys.stderr)
    return written
