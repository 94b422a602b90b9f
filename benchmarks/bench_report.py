"""How every benchmark here hands over its figures: the JSON on stdout, and with ``--output`` the same JSON
written atomically (``cloome_hf.safe_io.atomic_write_json``, the package's one writer of JSON), so a cut-short
run never leaves half a report where a complete one was."""

from __future__ import annotations

import json
from typing import Any, Mapping


def finish(results: Mapping[str, Any], output=None, *, echo: bool = True) -> Mapping[str, Any]:
    """Print ``results`` as JSON (unless ``echo`` is false) and write them to ``output`` when given."""
    from cloome_hf.safe_io import atomic_write_json

    if echo:
        print(json.dumps(results, indent=1))
    if output:
        atomic_write_json(output, results)
    return results
