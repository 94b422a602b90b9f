"""Training entry point of cloome-hf (``cloome train``), apart from the library, as open_clip_train is.

* :mod:`.params` - the arguments, filled in from a recipe of :mod:`cloome_hf.recipes`;
* :mod:`.data` - train / validation sites and the training loader (the one input path);
* :mod:`.optim` - AdamW groups and the warm-up + cosine-with-restarts schedule;
* :mod:`.checkpoint` - atomic checkpoints;
* :mod:`.loop` - the ``accelerate`` loop: set-up, one step, validation, outputs.
"""

from .loop import TrainingStopped, main, run_training

__all__ = ["TrainingStopped", "main", "run_training"]
