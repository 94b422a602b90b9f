"""The shared group *synthetic data*: the embedded generator behind ``--dataset synthetic``
(:func:`~cloome_hf.data.synthetic.make_synthetic_dataset`), for ``train``, ``evaluate`` and
``python -m cloome_hf.data synthetic``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .parser import arg, image_size_pair


@dataclass
class SyntheticDataArguments:
    _argument_group_name = "synthetic data (--dataset synthetic)"

    synthetic_molecules: int = arg(200, "number of molecules")
    synthetic_sites_per_molecule: int = arg(4, "sites per molecule")
    synthetic_plates: int = arg(4, "plates the sites are spread over")
    synthetic_image_size: list[int] = arg([64], "site size H [W] in pixels (one value = square)", metavar="SIZE")


def synthetic_options(args, seed: int) -> dict[str, Any]:
    """The keyword arguments of ``make_synthetic_dataset`` (``load_cell_painting(synthetic=...)``) of parsed
    arguments."""
    return {"num_molecules": args.synthetic_molecules, "sites_per_molecule": args.synthetic_sites_per_molecule,
            "num_plates": args.synthetic_plates,
            "image_size": image_size_pair(args.synthetic_image_size, "--synthetic_image_size"), "seed": seed}


__all__ = ["SyntheticDataArguments", "synthetic_options"]
