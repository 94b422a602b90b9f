"""``python -m cloome_hf.cli COMMAND ...`` (and ``accelerate launch -m cloome_hf.cli COMMAND ...``)."""

import sys

from . import main

sys.exit(main())
