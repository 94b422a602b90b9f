"""``cloome space``: write a Hugging Face Space folder that serves the ``cloome serve`` page.

    cloome space --model me/cloome --embeddings me/cloome-embeddings --output_dir space/
    cd space && python app.py                      # the same page, locally; push the folder to a Gradio Space

Writes ``app.py``, ``requirements.txt`` and a ``README.md`` with the Space metadata (sdk gradio, its version,
app_file, the model and dataset ids). A Space reaches only Hub ids: give those for a Space you push.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .arguments import ModelSourceArguments, OutputArguments, PageStoreArguments, arg, parse_command

DESCRIPTION = "Write a Hugging Face Space folder (app.py, requirements.txt, README.md) serving the 'cloome serve' page."


@dataclass
class SpaceArguments:
    _argument_group_name = "space"

    title: str = arg("CLOOME search", "the Space's title")


ARGUMENTS = (ModelSourceArguments, PageStoreArguments, OutputArguments, SpaceArguments)


def parse_arguments(argv=None):
    return parse_command("space", ARGUMENTS, argv, required=("embeddings", "output_dir"), description=DESCRIPTION)


def main(argv=None) -> list[str]:
    args = parse_arguments(argv)
    from ..data.loading import refuse_missing_local_path
    from ..inference.store_location import hub_repo_id
    from ..serve.space import local_folders, write_space

    for name in ("embeddings", "molecules", "index", "model"):
        value = getattr(args, name)
        if value and not os.path.exists(value) and hub_repo_id(value) is None:
            refuse_missing_local_path(value, f"--{name}")
            raise ValueError(f"--{name} {value} is neither a folder here nor a Hub id (owner/name[@revision])")
    written = write_space(args.output_dir, embeddings=args.embeddings, model=args.model, molecules=args.molecules,
                          index=args.index, k=args.k, title=args.title)
    print(f"wrote {', '.join(written)}; run it with: cd {args.output_dir} && python app.py", file=sys.stderr)
    local = local_folders(args.model, args.embeddings, args.molecules, args.index)
    if local:
        print(f"note: {', '.join(local)} {'is a local folder' if len(local) == 1 else 'are local folders'}: the "
              "app runs here, but a pushed Space needs Hub ids (publish them with 'cloome push')", file=sys.stderr)
    return written
