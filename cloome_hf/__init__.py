"""cloome-hf: CLOOME (contrastive learning of Cell Painting images and molecules) for the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from .configuration_cloome import CloomeConfig, CloomeMoleculeConfig, CloomeVisionConfig
from .modeling_cloome import CloomeModel, CloomeOutput, CloomePreTrainedModel

__version__ = "0.1.0"

AutoConfig.register("cloome", CloomeConfig)
AutoModel.register(CloomeConfig, CloomeModel)
# A saved folder then carries the code, so it also loads with trust_remote_code=True without this package.
CloomeConfig.register_for_auto_class()
CloomeModel.register_for_auto_class("AutoModel")

__all__ = ["CloomeConfig", "CloomeModel", "CloomeMoleculeConfig", "CloomeOutput", "CloomePreTrainedModel", "CloomeVisionConfig"]
