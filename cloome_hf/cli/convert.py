"""``cloome convert``: a published CLOOME checkpoint (ml-jku/cloome, Hub ``anasanchezf/cloome``) -> a cloome-hf folder.

Example::

    cloome convert --checkpoint_path cloome-retrieval-zero-shot.pt --output_dir cloome-retrieval \
        --recipe retrieval [--push_to_hub you/cloome-retrieval]

The checkpoint is loaded with ``torch.load(weights_only=True)``; the folder gets ``config.json``,
``model.safetensors``, the processor configuration and a ``README.md`` model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..publish.convert import CHECKPOINT_RECIPES, convert_original_checkpoint
from .arguments import OutputArguments, arg, parse_command


@dataclass
class ConvertArguments:
    _argument_group_name = "conversion"

    checkpoint_path: str | None = arg(None, "upstream .pt checkpoint")
    recipe: str | None = arg(None, "processor settings and model card: retrieval (full 520x696 sites, Morgan+RDKit "
                                   "8192), zero-shot (same weights, 520x520 centre crop) or bioactivity (Morgan "
                                   "1024); default: inferred from the weights", choices=sorted(CHECKPOINT_RECIPES),
                             old=("--preset",))
    push_to_hub: str | None = arg(None, "also upload the folder to this Hub repo", metavar="REPO_ID")


ARGUMENTS = (ConvertArguments, OutputArguments)


def main(argv: list[str] | None = None) -> Path:
    args = parse_command("convert", ARGUMENTS, argv, required=("checkpoint_path", "output_dir"), description=__doc__)
    output_dir = convert_original_checkpoint(args.checkpoint_path, args.output_dir, args.recipe, args.push_to_hub)
    print(f"wrote {output_dir}")
    return output_dir
