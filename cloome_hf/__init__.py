"""cloome-hf: CLOOME (contrastive learning of Cell Painting images and molecules) for the Hugging Face stack."""

# First, before anything imports torch: a `cloome` command's process settings (see cloome_hf/runtime.py).
from .runtime import prepare_command_process

prepare_command_process()

from transformers import AutoConfig, AutoModel  # noqa: E402

from .configuration_cloome import CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig  # noqa: E402
from .modeling_cloome import CloomeModel, CloomeOutput, CloomePreTrainedModel  # noqa: E402
from .featurization_cloome import MoleculeFeaturizer  # noqa: E402
from .image_processing_cloome import CloomeImageProcessor  # noqa: E402
from .processing_cloome import CloomeProcessor, load_model_and_processor  # noqa: E402  registers AutoProcessor
from .resources import example_site  # noqa: E402
from . import pipelines  # noqa: E402,F401  registers the "cell-painting-feature-extraction" and retrieval tasks

__version__ = "0.1.0"

AutoConfig.register("cloome", CloomeConfig)
AutoModel.register(CloomeConfig, CloomeModel)
# A saved folder then carries the code, so it also loads with trust_remote_code=True without this package.
CloomeConfig.register_for_auto_class()
CloomeModel.register_for_auto_class("AutoModel")

__all__ = [
    "CloomeConfig",
    "CloomeImageProcessor",
    "CloomeModel",
    "CloomeMoleculeConfig",
    "CloomeOutput",
    "CloomePreTrainedModel",
    "CloomeProcessor",
    "CloomeVisionConfig",
    "MoleculeFeaturizer",
    "example_site",
    "load_model_and_processor",
]
