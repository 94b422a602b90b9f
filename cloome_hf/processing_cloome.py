"""`CloomeProcessor`: images -> `pixel_values`, SMILES -> `fingerprints`, in one `BatchFeature` for `CloomeModel`.

The processor bundles a `CloomeImageProcessor` (a transformers sub-processor, saved under `image_processor` in
`processor_config.json`) and a `MoleculeFeaturizer` (a plain settings object, saved under `featurizer` in the same
file). `save_pretrained` / `from_pretrained` / `AutoProcessor.from_pretrained` round-trip every setting.

Compatibility with a model is checked in two places:

- `processor.check_model_compatibility(config)` raises a `ValueError` when the fingerprint size or the channel
  count disagrees with a `CloomeConfig`;
- `CloomeProcessor.from_pretrained(path)` (and hence `AutoProcessor.from_pretrained`) runs that check
  automatically when `path` also holds a CLOOME `config.json`, i.e. when model and processor were saved
  together; `load_model_and_processor(path)` loads both and checks them against each other.
"""


import os
from typing import Any

import numpy as np
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoImageProcessor, AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.utils import CONFIG_NAME, TensorType, cached_file

from .configuration_cloome import CloomeConfig
from .featurization_cloome import MoleculeFeaturizer, check_concentrations
from .image_processing_cloome import CloomeImageProcessor, CloomeImageProcessorKwargs
from .safe_io import read_json

_MODALITY_KWARGS = ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs")


class CloomeImagesKwargs(CloomeImageProcessorKwargs, total=False):
    """The image processor's call-time settings, plus the output tensor type."""

    return_tensors: str | TensorType | None


class CloomeProcessorKwargs(ProcessingKwargs, total=False):
    """`processor(..., images_kwargs={...})`, or the same names flat; `return_tensors` flat or in `common_kwargs`."""

    images_kwargs: CloomeImagesKwargs


class CloomeProcessor(ProcessorMixin):
    """Processor for CLOOME: `CloomeImageProcessor` for images plus `MoleculeFeaturizer` for molecules.

    Args:
        image_processor: a `CloomeImageProcessor` (default settings if None).
        featurizer: a `MoleculeFeaturizer` or its `to_dict()` (default Morgan r=3, 1024 bits, chirality if None).

    Call: `processor(images=..., smiles=..., return_tensors="pt")` -> `BatchFeature` with `pixel_values`
    (N, C, H, W) float32 and/or `fingerprints` (M, fingerprint_size) float32, ready for `CloomeModel(**batch)`;
    `concentrations=` (one dose in uM per SMILES) adds `concentrations` (M,) float32 for a dose-conditioned model.
    """

    valid_processor_kwargs = CloomeProcessorKwargs

    def __init__(
        self,
        image_processor: CloomeImageProcessor | None = None,
        featurizer: MoleculeFeaturizer | dict[str, Any] | None = None,
        **kwargs,
    ):
        if image_processor is None:
            image_processor = CloomeImageProcessor()
        if featurizer is None:
            featurizer = MoleculeFeaturizer()
        elif isinstance(featurizer, dict):
            featurizer = MoleculeFeaturizer.from_dict(featurizer)
        elif not isinstance(featurizer, MoleculeFeaturizer):
            raise ValueError(f"featurizer must be a MoleculeFeaturizer or a dict, got {type(featurizer).__name__}")
        self.featurizer = featurizer
        super().__init__(image_processor, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "fingerprints", "concentrations"]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["featurizer"] = self.featurizer.to_dict()  # a plain object: ProcessorMixin cannot serialise it
        return output

    def __call__(self, images: Any = None, smiles: Any = None, concentrations: Any = None,
                 **kwargs: Unpack[CloomeProcessorKwargs]) -> BatchFeature:
        """Process images and/or molecules.

        Args:
            images: anything `CloomeImageProcessor` accepts (one site or a batch).
            smiles: one SMILES/InChI string or a list of them.
            concentrations: the dose of each molecule in uM (one number for one SMILES, else one per SMILES; NaN or
                None: unknown), for a model with `molecule_config.concentration_encoding`; a negative, infinite or
                non-numeric dose, or a count that differs from the SMILES', is a ValueError.
            return_tensors: "pt", "np" or None (numpy).
            images_kwargs: call-time overrides for the image processor (e.g. `{"crop_size": ...}`); the same names
                are also accepted flat (`crop_size=...`), as transformers' processors do. Passing one twice, or a
                name no sub-processor knows, raises a ValueError.
        """
        if concentrations is not None and smiles is None:
            raise ValueError("concentrations are the doses of molecules: pass them with smiles")
        if images is None and smiles is None:
            raise ValueError("CloomeProcessor needs images, smiles or both")
        try:
            merged = self._merge_kwargs(CloomeProcessorKwargs, **self._checked_kwargs(kwargs))
        except StrictDataclassFieldValidationError as err:  # a wrongly typed option: a ValueError like the rest
            raise ValueError(f"CloomeProcessor: {err}") from err
        images_kwargs = merged["images_kwargs"]
        return_tensors = images_kwargs.pop("return_tensors", None)
        data: dict[str, np.ndarray] = {}
        if images is not None:
            data["pixel_values"] = self.image_processor(images, **images_kwargs)["pixel_values"]
        elif images_kwargs:
            raise ValueError(f"image options {sorted(images_kwargs)} given without images")
        if smiles is not None:
            data["fingerprints"] = self.featurizer(smiles)
        if concentrations is not None:
            data["concentrations"] = check_concentrations(concentrations, len(data["fingerprints"])).astype(np.float32)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _checked_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
        """Refuse what `_merge_kwargs` would only warn about: names no part of this processor knows, and options
        for the modalities it has no sub-processor for (text, video, audio)."""
        image_names = set(CloomeImagesKwargs.__annotations__)
        known = image_names | set(CloomeProcessorKwargs.__annotations__) | {"common_kwargs"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"Unknown CloomeProcessor argument(s): {unknown}; image options are {sorted(image_names)}")
        for name in _MODALITY_KWARGS:
            if name == "images_kwargs" or not kwargs.get(name):
                continue
            options = sorted(set(kwargs[name]) - {"return_tensors"})
            if options:
                raise ValueError(f"CloomeProcessor has no {name.split('_')[0]} sub-processor; got {name} {options}")
        unknown = sorted(set(kwargs.get("images_kwargs") or {}) - image_names)
        if unknown:
            raise ValueError(f"Unknown images_kwargs for CloomeImageProcessor: {unknown}")
        return kwargs

    def check_model_compatibility(self, config: CloomeConfig) -> None:
        """Raise a ValueError if this processor does not produce what a model with `config` expects."""
        problems = []
        fingerprint_size = config.molecule_config.fingerprint_size
        if self.featurizer.fingerprint_size != fingerprint_size:
            problems.append(
                f"the featurizer makes {self.featurizer.fingerprint_size}-dimensional '{self.featurizer.kind}' "
                f"fingerprints but the model's molecule encoder expects fingerprint_size={fingerprint_size}"
            )
        num_channels = config.vision_config.num_channels
        channel_order = self.image_processor.channel_order
        if len(channel_order) != num_channels:
            problems.append(
                f"the image processor produces {len(channel_order)} channels {channel_order} but the model's "
                f"vision encoder expects num_channels={num_channels}"
            )
        if problems:
            raise ValueError("Processor and model are incompatible: " + "; ".join(problems))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "CloomeProcessor":
        """Load a processor; if the same location holds a CLOOME model config, check that they match."""
        config = _load_cloome_config(pretrained_model_name_or_path, **kwargs)  # first: a damaged one is named
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if config is not None:
            processor.check_model_compatibility(config)
        return processor


def _load_cloome_config(path, **kwargs) -> CloomeConfig | None:
    """The CLOOME config saved next to a processor, or None when there is none."""
    hub_keys = ("cache_dir", "revision", "token", "local_files_only", "subfolder")
    hub_kwargs = {k: kwargs[k] for k in hub_keys if k in kwargs}
    try:
        config_file = cached_file(str(path), CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    except (OSError, ValueError):
        return None
    if config_file is None:
        return None
    config_dict = read_json(config_file, "model config")
    if config_dict.get("model_type") != CloomeConfig.model_type:
        return None
    return CloomeConfig.from_dict(config_dict)


def load_model_and_processor(
    pretrained_model_name_or_path: str | os.PathLike, revision: str | None = None, **model_kwargs
):
    """Load a `CloomeModel` (eval mode) and the `CloomeProcessor` saved with it, refusing a mismatched pair.

    Args:
        pretrained_model_name_or_path: a folder or Hub id holding both.
        revision: Hub revision, used for the model and the processor alike.
        model_kwargs: passed on to `CloomeModel.from_pretrained` (e.g. `dtype`).

    Returns:
        (model, processor). Raises ValueError naming the disagreeing setting(s).
    """
    from .modeling_cloome import CloomeModel

    hub = {"revision": revision} if revision else {}
    model = CloomeModel.from_pretrained(pretrained_model_name_or_path, **hub, **model_kwargs).eval()
    processor = CloomeProcessor.from_pretrained(pretrained_model_name_or_path, **hub)
    processor.check_model_compatibility(model.config)
    return model, processor


# Auto classes: `AutoImageProcessor` / `AutoProcessor.from_pretrained` find these classes by name once this module
# is imported (`import cloome_hf` does it).
AutoImageProcessor.register(
    CloomeConfig, image_processor_classes={"torchvision": CloomeImageProcessor, "pil": CloomeImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(CloomeConfig, CloomeProcessor, exist_ok=True)


__all__ = ["CloomeProcessor", "CloomeProcessorKwargs", "load_model_and_processor"]
