"""cloome-hf: CLOOME (contrastive learning of Cell Painting images and molecules) for the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from .configuration_cloome import CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig
from .modeling_cloome import CloomeModel, CloomeOutput, CloomePreTrainedModel
from .featurization_cloome import MoleculeFeaturizer
from .image_processing_cloome import CloomeImageProcessor
from .processing_cloome import CloomeProcessor, load_model_and_processor  # registers AutoProcessor
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
    "load_model_and_processor",
]
