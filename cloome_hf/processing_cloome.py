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
from .featurization_cloome import MoleculeFeaturizer, SmilesFeaturizer, check_concentrations
from .featurization_graph import GraphFeaturizer
from .featurization_tokens import TOKENIZER_FOLDER, TokenFeaturizer
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
        featurizer: the molecule featuriser of the model's molecule tower, or its `to_dict()`: a
            `MoleculeFeaturizer` (`mlp`; default Morgan r=3, 1024 bits, chirality if None), a `GraphFeaturizer`
            (`gnn`) or a `TokenFeaturizer` (`transformers`; its tokenizer is saved in `molecule_tokenizer/`).
            `CloomeProcessor.for_model(config)` makes the one a config needs.

    Call: `processor(images=..., smiles=..., return_tensors="pt")` -> `BatchFeature` with `pixel_values`
    (N, C, H, W) float32 and/or the molecule tower's inputs: `fingerprints` (M, fingerprint_size) float32, or the
    graphs' `x`, `edge_index`, `edge_attr`, `batch`, or `input_ids` / `attention_mask`; ready for
    `CloomeModel(**batch)`. `concentrations=` (one dose in uM per SMILES) adds `concentrations` (M,) float32 for a
    dose-conditioned model.
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
        self._pending_tokenizer = None  # a transformers tower's settings, until from_pretrained reads its tokenizer
        if featurizer is None:
            featurizer = MoleculeFeaturizer()
        elif isinstance(featurizer, dict):
            if featurizer.get("tower") == TokenFeaturizer.tower:
                self._pending_tokenizer, featurizer = dict(featurizer), None
            else:
                featurizer = molecule_featurizer_from_dict(featurizer)
        elif not isinstance(featurizer, SmilesFeaturizer):
            raise ValueError(f"featurizer must be a MoleculeFeaturizer, GraphFeaturizer, TokenFeaturizer or a dict, "
                             f"got {type(featurizer).__name__}")
        self.featurizer = featurizer
        super().__init__(image_processor, **kwargs)

    @classmethod
    def for_model(cls, config: CloomeConfig, image_processor: CloomeImageProcessor | None = None,
                  **featurizer_options) -> "CloomeProcessor":
        """The processor of a model of ``config``: its molecule tower's featuriser (``featurizer_options``, e.g.
        ``fingerprint_kind="morgan"`` or ``tokenizer=...``; a transformers tower's tokenizer is read from
        ``molecule_config.transformers_model`` by default)."""
        from .molecule_tower_kinds import get_molecule_tower

        molecule = config.molecule_config
        featurizer = get_molecule_tower(molecule.encoder).featurizer(molecule, **featurizer_options)
        return cls(image_processor=image_processor, featurizer=featurizer)

    @property
    def model_input_names(self) -> list[str]:
        """What a call may return: pixels, the molecule tower's inputs, doses."""
        molecules = TokenFeaturizer.model_input_names if self.featurizer is None else self.featurizer.model_input_names
        return ["pixel_values", *molecules, "concentrations"]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # a plain object: ProcessorMixin cannot serialise it
        output["featurizer"] = self._pending_tokenizer or self._molecule_featurizer().to_dict()
        return output

    def _molecule_featurizer(self) -> SmilesFeaturizer:
        if self.featurizer is None:
            raise ValueError(f"this processor's transformers molecule tower has no tokenizer (it is read from "
                             f"{TOKENIZER_FOLDER}/ beside processor_config.json by CloomeProcessor.from_pretrained)")
        return self.featurizer

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``ProcessorMixin.save_pretrained``, plus a transformers tower's tokenizer in ``molecule_tokenizer/``."""
        featurizer = self._molecule_featurizer()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if isinstance(featurizer, TokenFeaturizer):
            featurizer.tokenizer.save_pretrained(os.path.join(os.fspath(save_directory), TOKENIZER_FOLDER))
        return result

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
        num_molecules = 0
        if smiles is not None:
            featurizer = self._molecule_featurizer()
            rows = featurizer(smiles)
            num_molecules = len(rows)
            data.update(featurizer.collate(rows))
        if concentrations is not None:
            data["concentrations"] = check_concentrations(concentrations, num_molecules).astype(np.float32)
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
        from .molecule_tower_kinds import featurizer_problems

        problems = featurizer_problems(self._molecule_featurizer(), config.molecule_config)
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
        if processor._pending_tokenizer is not None:
            processor.featurizer = TokenFeaturizer.from_dict(
                processor._pending_tokenizer, tokenizer=_load_tokenizer(pretrained_model_name_or_path, kwargs))
            processor._pending_tokenizer = None
        if config is not None:
            processor.check_model_compatibility(config)
        return processor


def molecule_featurizer_from_dict(settings: dict[str, Any]) -> SmilesFeaturizer:
    """The featuriser a ``processor_config.json`` records: ``tower`` names its kind (none: the fingerprints of
    processors saved before the molecule towers). A transformers tower's needs its tokenizer: see
    :meth:`CloomeProcessor.from_pretrained`."""
    tower = settings.get("tower", MoleculeFeaturizer.tower)
    if tower == GraphFeaturizer.tower:
        return GraphFeaturizer.from_dict(settings)
    if tower == MoleculeFeaturizer.tower:
        return MoleculeFeaturizer.from_dict({k: v for k, v in settings.items() if k != "tower"})
    raise ValueError(f"the processor's featurizer is for an unknown molecule tower {tower!r}")


def _load_tokenizer(path, kwargs: dict[str, Any]):
    """The tokenizer saved in ``molecule_tokenizer/`` beside a processor; ``ValueError`` naming it when absent."""
    from transformers import AutoTokenizer

    folder = os.path.join(os.fspath(path), TOKENIZER_FOLDER)
    if os.path.isdir(os.fspath(path)) and not os.path.isdir(folder):
        raise ValueError(f"the processor in {path} is for a transformers molecule tower but its tokenizer is missing: "
                         f"there is no {folder}")
    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    try:
        if os.path.isdir(folder):
            return AutoTokenizer.from_pretrained(folder)
        return AutoTokenizer.from_pretrained(os.fspath(path), subfolder=TOKENIZER_FOLDER, **hub)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the molecule tokenizer {TOKENIZER_FOLDER}/ of {path}: {err}") from err


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


__all__ = ["CloomeProcessor", "CloomeProcessorKwargs", "load_model_and_processor", "molecule_featurizer_from_dict"]
