"""``cloome convert``: a published CLOOME checkpoint (ml-jku/cloome, Hub ``anasanchezf/cloome``) -> a cloome-hf folder.

Example::

    cloome convert --checkpoint_path cloome-retrieval-zero-shot.pt --output_dir cloome-retrieval \
        --preset retrieval [--push_to_hub you/cloome-retrieval]

The checkpoint is loaded with ``torch.load(weights_only=True)``; the folder gets ``config.json``,
``model.safetensors``, the processor configuration and a ``README.md`` model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from ..publish.convert import PRESETS, convert_original_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloome convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, type=Path, help="upstream .pt checkpoint")
    parser.add_argument("--output_dir", required=True, type=Path, help="folder to write the converted model to")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="processor settings and model card: retrieval (full 520x696 sites, Morgan+RDKit 8192), zero-shot "
        "(same weights, 520x520 centre crop) or bioactivity (Morgan 1024); default: inferred from the weights",
    )
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload the folder to this Hub repo")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    output_dir = convert_original_checkpoint(args.checkpoint_path, args.output_dir, args.preset, args.push_to_hub)
    print(f"wrote {output_dir}")
    return output_dir

