"""Training entry point of cloome-hf (``cloome train``), apart from the library, as open_clip_train is.

* :mod:`.params` - the arguments, filled in from a recipe of :mod:`cloome_hf.recipes`;
* :mod:`.data` - train / validation sites and the training loader (the one input path);
* :mod:`.optim` - AdamW groups and the warm-up + cosine-with-restarts schedule;
* :mod:`.checkpoint` - atomic, pickle-free checkpoints; :mod:`.guard` - the device-side non-finite guard;
* :mod:`.state` - what a run holds; :mod:`.setup` - building (or resuming) a run;
* :mod:`.loop` - the ``accelerate`` loop: one step, validation, checkpoints; :mod:`.outputs` - what a run leaves.
"""

from .loop import TrainingStopped, main, run_training

__all__ = ["TrainingStopped", "main", "run_training"]
