"""Every command's arguments: dataclasses through transformers' ``HfArgumentParser`` (see :mod:`.parser` for
how a command declares them). The groups several commands share live here, one module each:

* :mod:`.model`: ``--model``, ``--revision``;
* :mod:`.data`: ``--dataset`` (``--split``, ``--max_sites``) and the site-table options (``--root``,
  ``--compounds``, ``--wells``, ...);
* :mod:`.synthetic`: ``--synthetic_molecules``, ``--synthetic_sites_per_molecule``, ``--synthetic_plates``,
  ``--synthetic_image_size``;
* :mod:`.output`: ``--output_dir`` (and ``--overwrite_output_dir`` where a command resumes);
* :mod:`.stores`: the stores a search page reads (``--embeddings``, ``--molecules``, ``--index``, ``--k``).

A new shared group is a new module here with one dataclass; a command adds it to its tuple of groups.
"""

from .data import DatasetArguments, DatasetSplitArguments, SiteTableArguments, table_arguments
from .model import ModelSourceArguments
from .output import OutputArguments, ResumableOutputArguments
from .parser import CommandParser, arg, command_error, image_size_pair, parse_command
from .stores import PageStoreArguments
from .synthetic import SyntheticDataArguments, synthetic_options

__all__ = ["CommandParser", "DatasetArguments", "DatasetSplitArguments", "ModelSourceArguments",
           "OutputArguments", "PageStoreArguments", "ResumableOutputArguments", "SiteTableArguments", "SyntheticDataArguments", "arg", "command_error",
           "image_size_pair", "parse_command", "synthetic_options", "table_arguments"]
