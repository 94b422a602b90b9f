"""Data files bundled with cloome-hf (see PROVENANCE.md)."""

from __future__ import annotations

from importlib import resources


def example_site() -> dict[str, str]:
    """The bundled real Cell Painting site (Bray 2017, U2OS, five uint16 TIFFs of 520 x 696 px) as
    ``{channel: path}`` in the canonical channel order, ready for ``CloomeProcessor(images=[example_site()])``."""
    from ..channels import CHANNELS

    folder = resources.files("cloome_hf.resources").joinpath("example_site")
    site = {channel: str(folder.joinpath(f"{channel}.tif")) for channel in CHANNELS}
    missing = [path for channel, path in site.items() if not folder.joinpath(f"{channel}.tif").is_file()]
    if missing:
        raise FileNotFoundError(f"the bundled example site is incomplete: {missing[0]} is missing; reinstall cloome-hf")
    return site
