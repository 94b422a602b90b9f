"""Convert the published CLOOME checkpoints (ml-jku/cloome, Hub repo ``anasanchezf/cloome``) to cloome-hf.

The upstream checkpoints are PyTorch pickles ``{"epoch", "name", "state_dict", "optimizer", "scheduler"}``
whose ``state_dict`` holds a ``CLIPGeneral`` saved from DDP (keys prefixed with ``module.``):

* ``visual.*`` - the 5-channel anti-aliased ResNet (``conv1``, ``bn1``, ``layer{1..4}.{block}.conv{1,2,3}`` /
  ``bn{1,2,3}``, ``layer{s}.0.downsample.0`` (1x1 conv) / ``downsample.1`` (BN)) and ``fc`` (2048 -> 512);
* ``transformer.layers.{i}.0`` (Linear) / ``.1`` (BatchNorm1d) - the molecule MLP, despite the name -
  and ``transformer.layers.{last}.0``, the final Linear to the embedding space;
* ``logit_inv_tau`` - the scalar ``ln(1/tau)``.

:func:`convert_state_dict` renames every tensor to the :class:`~cloome_hf.CloomeModel` parameter names and
infers the architecture from the tensor shapes; it refuses to guess: any source tensor it cannot place and
any model tensor it cannot fill is an error that lists all of them. :func:`convert_original_checkpoint` loads
a checkpoint with ``torch.load(weights_only=True)`` (so no arbitrary objects are unpickled), converts it,
and writes a Hub-ready folder: ``config.json``, ``model.safetensors``, the processor configuration for the
chosen recipe and a rendered ``README.md`` model card.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch

from ..channels import SITE_SIZE
from ..configuration_cloome import CLOOME_RESNET50, CloomeConfig
from ..recipes import get_recipe, recipe_names, recipe_processor
from ..recipes import processor_settings as recipe_processor_settings

HUB_REPO_ID = "anasanchezf/cloome"
#: The recipes of the published checkpoints: the names a conversion takes.
CHECKPOINT_RECIPES: tuple[str, ...] = tuple(n for n in recipe_names() if get_recipe(n).checkpoint is not None)
CHECKPOINTS = {n: get_recipe(n).checkpoint for n in CHECKPOINT_RECIPES}
#: The old name of :data:`CHECKPOINT_RECIPES` (recipes were called presets until 0.1); goes in the next release.
PRESETS = CHECKPOINT_RECIPES

# Recipes with a published checkpoint (see cloome_hf.recipes): retrieval (full 520 x 696 sites, Morgan+RDKit
# count fingerprints of length 8192), zero-shot (the same weights with a 520 x 520 centre crop) and bioactivity
# (full sites, 1024-bit Morgan). The fingerprint *size* is always taken from the weights; ``loss`` and
# ``hopfield_beta`` only matter for further training. Without a recipe the upstream default method, CLOOB, is
# assumed.
DEFAULT_LOSS = "infoloob"


def converted_recipe(name: str):
    """The recipe of a published checkpoint; ``ValueError`` for an unknown one or one without a checkpoint."""
    recipe = get_recipe(name)
    if recipe.checkpoint is None:
        raise ValueError(f"recipe {name!r} has no published checkpoint; choose one of {sorted(CHECKPOINT_RECIPES)}")
    return recipe


def _recipe_keyword(recipe: str | None, preset: str | None, function: str) -> str | None:
    """``recipe``, or the value of ``function``'s deprecated ``preset=`` keyword (its name until 0.1) with a
    ``FutureWarning``; both given is a ``ValueError`` naming both."""
    if preset is None:
        return recipe
    if recipe is not None:
        raise ValueError(f"{function}() got both recipe={recipe!r} and preset={preset!r}; give recipe= only "
                         "(preset= is its old name)")
    warnings.warn(f"{function}(preset=...) is now {function}(recipe=...); the old keyword goes in the next release",
                  FutureWarning, stacklevel=3)
    return preset


_VISUAL_RE = re.compile(
    r"^visual\.layer(?P<stage>[1-4])\.(?P<block>\d+)\."
    r"(?:(?P<conv>conv[123])\.weight|(?P<bn>bn[123])\.(?P<bnp>\w+)|downsample\.(?P<ds>[01])\.(?P<dsp>\w+))$"
)
_MOLECULE_RE = re.compile(r"^transformer\.layers\.(?P<layer>\d+)\.(?P<sub>[01])\.(?P<param>\w+)$")
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ConversionError(ValueError):
    """The checkpoint does not match the CLOOME layout; the message lists every offending key."""


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix DistributedDataParallel adds; keys without it pass unchanged."""
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in stripped:
            raise ConversionError(f"checkpoint holds {name!r} both with and without the 'module.' prefix")
        stripped[name] = value
    return stripped


def _rename(key: str, final_molecule_layer: int) -> str | None:
    """Map one (prefix-free) upstream key to its CloomeModel name, or ``None`` if it has no place."""
    if key == "logit_inv_tau":
        return "logit_scale"
    if key == "visual.conv1.weight":
        return "vision_model.conv1.weight"
    if key.startswith("visual.bn1.") and key.split(".", 2)[2] in _BN_PARAMS:
        return "vision_model." + key[len("visual.") :]
    if key in ("visual.fc.weight", "visual.fc.bias"):
        return "visual_projection." + key.rsplit(".", 1)[1]
    m = _VISUAL_RE.match(key)
    if m:
        base = f"vision_model.layer{m['stage']}.{m['block']}."
        if m["conv"]:
            return base + f"{m['conv']}.weight"
        if m["bn"]:
            return base + f"{m['bn']}.{m['bnp']}" if m["bnp"] in _BN_PARAMS else None
        if m["ds"] == "0":
            return base + "downsample.conv.weight" if m["dsp"] == "weight" else None
        return base + f"downsample.bn.{m['dsp']}" if m["dsp"] in _BN_PARAMS else None
    m = _MOLECULE_RE.match(key)
    if m:
        layer, sub, param = int(m["layer"]), m["sub"], m["param"]
        if layer == final_molecule_layer:
            return f"molecule_projection.{param}" if sub == "0" and param in ("weight", "bias") else None
        if sub == "0":
            return f"molecule_model.layers.{layer}.dense.{param}" if param in ("weight", "bias") else None
        return f"molecule_model.layers.{layer}.norm.{param}" if param in _BN_PARAMS else None
    return None


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"checkpoint has no {key!r}: not a CLOOME state dict (keys: {sorted(state_dict)[:8]}...)")
    return state_dict[key]


def infer_config(state_dict: Mapping[str, torch.Tensor], recipe: str | None = None) -> CloomeConfig:
    """Read the architecture off the tensor shapes of a prefix-free upstream state dict.

    Fingerprint size and hidden size come from ``transformer.layers.0.0.weight`` ``(hidden, F)``, the number
    of hidden layers from the ``transformer.layers.{i}`` indices (the last is the projection), the blocks per ResNet stage from the
    ``visual.layer{s}.{b}`` indices, the projection dimension from ``visual.fc.weight`` ``(d, 2048)`` and the
    logit scale from ``logit_inv_tau``; the stem width (64 published) from ``visual.conv1.weight``.
    """
    conv1 = _require(state_dict, "visual.conv1.weight")
    fc = _require(state_dict, "visual.fc.weight")
    first = _require(state_dict, "transformer.layers.0.0.weight")
    logit = _require(state_dict, "logit_inv_tau")

    blocks: dict[int, set[int]] = defaultdict(set)
    for key in state_dict:
        m = re.match(r"^visual\.layer([1-4])\.(\d+)\.", key)
        if m:
            blocks[int(m[1])].add(int(m[2]))
    layers = []
    for stage in range(1, 5):
        found = sorted(blocks.get(stage, ()))
        if not found or found != list(range(len(found))):
            raise ConversionError(f"visual.layer{stage} has blocks {found}; expected 0..n-1 with n >= 1")
        layers.append(len(found))

    molecule_layers = sorted({int(m[1]) for k in state_dict if (m := re.match(r"^transformer\.layers\.(\d+)\.", k))})
    if molecule_layers != list(range(len(molecule_layers))) or len(molecule_layers) < 2:
        raise ConversionError(f"transformer.layers has indices {molecule_layers}; expected 0..n with n >= 1")
    num_hidden_layers = len(molecule_layers) - 1

    logit_scale = float(logit.reshape(()).item())
    if not math.isfinite(logit_scale) or not 0.0 <= logit_scale <= math.log(100.0):
        raise ConversionError(f"logit_inv_tau = {logit_scale!r} lies outside [0, ln 100]")
    model = converted_recipe(recipe).model if recipe is not None else {}
    return CloomeConfig(
        vision_config={
            "backbone": CLOOME_RESNET50,
            "num_channels": int(conv1.shape[1]),
            "base_width": int(conv1.shape[0]),
            "head_pool_size": 7,
            "layers": layers,
            "image_size": list(SITE_SIZE),
            "timm_pretrained": False,
        },
        molecule_config={
            "fingerprint_size": int(first.shape[1]),
            "hidden_size": int(first.shape[0]),
            "num_hidden_layers": num_hidden_layers,
        },
        projection_dim=int(fc.shape[0]),
        logit_scale_init_value=logit_scale,
        learnable_logit_scale=True,
        loss=model.get("loss", DEFAULT_LOSS),
        hopfield_beta=model.get("hopfield_beta", 22.0),
    )


def convert_state_dict(
    upstream_state_dict: Mapping[str, torch.Tensor], recipe: str | None = None, *, preset: str | None = None
) -> tuple[CloomeConfig, dict[str, torch.Tensor]]:
    """Rename an upstream ``CLIPGeneral`` state dict to CloomeModel names.

    Args:
        upstream_state_dict: the ``state_dict`` entry of an upstream checkpoint, with or without ``module.``.
        recipe: optional name in :data:`CHECKPOINT_RECIPES`; only sets training-only config fields (``loss``,
            ``hopfield_beta``).
        preset: the old name of ``recipe`` (deprecated: a ``FutureWarning``).

    Returns:
        ``(config, state_dict)`` where ``CloomeModel(config).load_state_dict(state_dict, strict=True)`` works.
        Floating tensors are cast to float32 (upstream may store half precision).

    Raises:
        ConversionError: listing every source key that has no place in the model, every model tensor no
            source key fills, and every shape mismatch.
    """
    recipe = _recipe_keyword(recipe, preset, "convert_state_dict")
    if recipe is not None:
        converted_recipe(recipe)
    source = strip_ddp_prefix(upstream_state_dict)
    bad_values = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise ConversionError(f"state dict entries that are not tensors: {bad_values}")
    config = infer_config(source, recipe)
    final_layer = config.molecule_config.num_hidden_layers

    from ..modeling_cloome import CloomeModel

    # The meta device gives names and shapes without allocating or initialising ~30M parameters.
    with torch.device("meta"):
        target = CloomeModel(config).state_dict()

    converted: dict[str, torch.Tensor] = {}
    unmatched, mismatched = [], []
    for key, tensor in source.items():
        name = _rename(key, final_layer)
        if name is None or name not in target or name in converted:
            unmatched.append(key)
            continue
        expected = target[name]
        if name == "logit_scale":
            tensor = tensor.reshape(expected.shape)
        if tuple(tensor.shape) != tuple(expected.shape):
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {name} {tuple(expected.shape)}")
            continue
        converted[name] = tensor.to(expected.dtype) if tensor.is_floating_point() else tensor.clone()
    unfilled = sorted(set(target) - set(converted))
    if unmatched or unfilled or mismatched:
        lines = []
        if unmatched:
            lines.append(f"source keys with no place in CloomeModel: {sorted(unmatched)}")
        if unfilled:
            lines.append(f"CloomeModel tensors no source key fills: {unfilled}")
        if mismatched:
            lines.append(f"shape mismatches: {mismatched}")
        raise ConversionError("cannot convert checkpoint:\n" + "\n".join(lines))
    return config, converted


def load_upstream_checkpoint(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """Load an upstream checkpoint safely (``weights_only=True``) and return its state dict.

    Accepts ``{"state_dict": {...}, ...}`` (the upstream training layout) or a bare state dict.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{str(path)!r} contains objects other than tensors and plain containers; refusing to unpickle "
            f"it (torch.load weights_only=True): {err}"
        ) from err
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises EOFError, RuntimeError, ...
        raise ValueError(f"cannot read the checkpoint {str(path)!r}: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{str(path)!r} holds a {type(checkpoint).__name__}, not a dict")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{str(path)!r}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
    return state_dict


def _processor_values(recipe: str | None, fingerprint_size: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """The recipe values and crop of a converted model: the fingerprint size always follows the weights; the kind
    follows the recipe, or, without one, the size (8192 -> ``morgan_rdkit_max`` as for the retrieval model,
    otherwise ``morgan``). A centre crop to the full 520 x 696 site leaves Bray 2017 sites untouched and cuts
    larger fields of view (e.g. JUMP) to the size the model was trained on."""
    if recipe is None:
        kind, crop = ("morgan_rdkit_max" if fingerprint_size == 8192 else "morgan"), SITE_SIZE
    else:
        published = converted_recipe(recipe)
        kind, crop = published.model["fingerprint_kind"], published.inference_crop
    return {"fingerprint_kind": kind, "fingerprint_size": int(fingerprint_size)}, crop


def processor_settings(recipe: str | None, fingerprint_size: int) -> dict[str, Any]:
    """Image-processor and featuriser keyword arguments for a recipe (:func:`cloome_hf.recipes.processor_settings`)."""
    return recipe_processor_settings(*_processor_values(recipe, fingerprint_size))


def build_processor(recipe: str | None, fingerprint_size: int):
    """The :class:`~cloome_hf.processing_cloome.CloomeProcessor` matching :func:`processor_settings`
    (:func:`cloome_hf.recipes.recipe_processor`)."""
    return recipe_processor(*_processor_values(recipe, fingerprint_size))


def convert_original_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    recipe: str | None = None,
    push_to_hub: str | None = None,
    *,
    preset: str | None = None,
) -> Path:
    """Convert an upstream checkpoint into a Hub-ready folder and optionally upload it.

    Args:
        checkpoint_path: ``cloome-retrieval-zero-shot.pt`` or ``cloome-bioactivity.pt`` (or any checkpoint
            in the same layout).
        output_dir: folder to write ``config.json``, ``model.safetensors``, the processor files and
            ``README.md`` into (created if missing).
        recipe: ``"retrieval"``, ``"zero-shot"`` or ``"bioactivity"`` (processor settings and model card);
            ``None`` infers the featuriser from the fingerprint size.
        push_to_hub: a Hub repository id to upload the folder to with ``huggingface_hub``.
        preset: the old name of ``recipe`` (deprecated: a ``FutureWarning``; both given is a ``ValueError``).

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.
    """
    from ..modeling_cloome import CloomeModel
    from .model_folder import write_model_folder

    recipe = _recipe_keyword(recipe, preset, "convert_original_checkpoint")
    if recipe is not None:
        converted_recipe(recipe)
    output_dir = Path(output_dir)
    config, state_dict = convert_state_dict(load_upstream_checkpoint(checkpoint_path), recipe)
    if recipe is not None:
        config.vision_config.image_size = list(converted_recipe(recipe).inference_crop)

    model = CloomeModel(config)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    processor = build_processor(recipe, config.molecule_config.fingerprint_size)
    # Only the files written here are uploaded: nothing else in output_dir (a `.env`, notes, an older
    # conversion's extras) ever reaches the Hub.
    written = write_model_folder(output_dir, model, processor, model_id=push_to_hub or output_dir.name,
                                 source="converted", recipe=recipe, checkpoint=Path(checkpoint_path).name)
    if push_to_hub:
        upload_files(output_dir, written, push_to_hub,
                     commit_message=f"Convert {Path(checkpoint_path).name} to cloome-hf")
    return output_dir


def upload_files(folder: str | Path, files: list[str], repo_id: str, commit_message: str, api=None) -> Any:
    """Commit exactly ``files`` (paths relative to ``folder``) to ``repo_id``'s root in one commit
    (:func:`~cloome_hf.publish.commit.commit_files`); nothing else in ``folder`` is uploaded."""
    from .commit import commit_files

    return commit_files(repo_id, folder, files, commit_message=commit_message, api=api)


__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_RECIPES",
    "HUB_REPO_ID",
    "PRESETS",  # the old name of CHECKPOINT_RECIPES
    "ConversionError",
    "build_processor",
    "convert_original_checkpoint",
    "convert_state_dict",
    "infer_config",
    "load_upstream_checkpoint",
    "processor_settings",
    "strip_ddp_prefix",
    "upload_files",
]
