"""transformers' own common tests, run against CloomeConfig, CloomeModel, CloomeImageProcessor and CloomeProcessor.

The mixins come from the sdist of the installed transformers (see ``transformers_common_suite``). They are plugged
in the way transformers' ``tests/models/clip/test_modeling_clip.py`` plugs CLIP in: a model tester with a tiny
config, and overrides where a test reads outputs through a layout CLOOME does not have (hidden states live in the
two towers' outputs, as for ``CLIPModel``; images are 5 named fluorescence channels, not RGB). Skips are limited to
what cannot apply to a CNN + MLP: attention, SDPA, tokenizers/chat templates, embedding resizing, RGB conversion.
If the mixins cannot be fetched, ``test_transformers_common_tests_were_fetched`` fails; nothing is skipped.
"""

import io
import shutil
import tarfile
import unittest
from types import MappingProxyType

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import set_seed
from transformers.testing_utils import set_config_for_less_flaky_test, set_model_for_less_flaky_test

import transformers_common_suite
from conftest import TINY_CHEM_LM, TINY_GNN, TINY_MOLECULE, TINY_VISION

from cloome_hf import CloomeConfig, CloomeModel, CloomeProcessor
from cloome_hf.channels import CHANNELS
from cloome_hf.image_processing_cloome import CloomeImageProcessor

try:
    SUITE = transformers_common_suite.load()
    LOAD_ERROR = None
except transformers_common_suite.SuiteUnavailable as err:  # no skip: the test below fails loudly
    SUITE, LOAD_ERROR = None, err

CROP = {"height": 64, "width": 64}
SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]
# The molecules of the gnn / transformers towers' batches: different atom and token counts, so that a graph batch's
# rows (atoms) are not a multiple of its molecules and the token batch is padded.
TOWER_SMILES = [*SMILES, "CCO", "Oc1ccccc1"]


def test_transformers_common_tests_were_fetched():
    if LOAD_ERROR is not None:
        pytest.fail(f"transformers' common tests are unavailable: {LOAD_ERROR}", pytrace=False)
    assert SUITE.folder.name == transformers_common_suite.installed_version()


def test_suite_cache_refuses_damaged_archives_and_edited_files(tmp_path):
    version = "0.0.0"
    package = tmp_path / "package"
    package.mkdir()
    (tmp_path / "damaged.tar.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(transformers_common_suite.SuiteUnavailable, match="damaged.tar.gz: damaged transformers sdist"):
        transformers_common_suite._unpack_mixins(tmp_path / "damaged.tar.gz", version, package)
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(partial, "w:gz") as tar:
        member = tarfile.TarInfo(f"transformers-{version}/tests/test_modeling_common.py")
        tar.addfile(member, io.BytesIO(b""))
    with pytest.raises(transformers_common_suite.SuiteUnavailable, match="has no transformers-0.0.0/tests/test_config"):
        transformers_common_suite._unpack_mixins(partial, version, package)
    if SUITE is not None:  # an edited cached file no longer matches its manifest, so it would be fetched again
        assert transformers_common_suite._is_complete(SUITE.folder, SUITE.folder.name)
        copy = tmp_path / "copy"
        shutil.copytree(SUITE.folder, copy)
        (copy / transformers_common_suite.PACKAGE / "test_modeling_common.py").write_text("# edited\n")
        assert not transformers_common_suite._is_complete(copy, SUITE.folder.name)


def skip_inherited(test_class, reasons):
    """Skip inherited mixin tests (and their parameterized expansions ``name_0``, ``name_1``...) with a reason each.

    Used for tests that cannot apply and would otherwise pass vacuously, looping over nothing; a name that matches
    no test fails here, so a renamed mixin test cannot slip through unnoticed."""
    for name, reason in reasons.items():
        # (parameterized leaves the expanded test's own name bound to None)
        matches = [n for n in dir(test_class) if callable(getattr(test_class, n))
                   and (n == name or (n.startswith(f"{name}_") and n[len(name) + 1:].isdigit()))]
        if not matches:
            raise AssertionError(f"{test_class.__name__} inherits no test named {name}")
        for match in matches:
            setattr(test_class, match, unittest.skip(reason)(getattr(test_class, match)))
    return test_class


def random_site(rng, height, width, dtype=np.uint16):
    """(C, H, W) raw intensities."""
    return rng.integers(0, np.iinfo(dtype).max, size=(len(CHANNELS), height, width), dtype=dtype)


def multipage_pil(site):
    """A site as one multi-page PIL image, a page per channel (how a multi-page TIFF opens)."""
    buffer = io.BytesIO()
    pages = [Image.fromarray(channel) for channel in site]
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    buffer.seek(0)
    return Image.open(buffer)


if SUITE is not None:
    ConfigTester = SUITE.test_configuration_common.ConfigTester
    common = SUITE.test_modeling_common
    ImageProcessingTester = SUITE.test_image_processing_common.ImageProcessingTester
    ImageProcessingTestMixin = SUITE.test_image_processing_common.ImageProcessingTestMixin
    ProcessorTesterMixin = SUITE.test_processing_common.ProcessorTesterMixin

    class CloomeModelTester:
        """The InfoNCE objective: its loss is defined for one pair, so test_batching_equivalence can run with
        return_loss=True (InfoLOOB's refusal of one pair is tested in test_modeling.py). The published molecule
        tower (``mlp``) over random binary fingerprints; the other towers' testers below override the molecule
        config, inputs and hidden-state shapes."""

        molecule_config = TINY_MOLECULE

        def __init__(self, parent, batch_size=4):
            self.parent = parent
            self.batch_size = batch_size
            self.is_training = True
            self.image_size = TINY_VISION["image_size"][0]
            self.num_channels = TINY_VISION["num_channels"]
            self.fingerprint_size = TINY_MOLECULE["fingerprint_size"]
            self.expected_num_hidden_layers = 5  # stem + 4 stages, transformers' ResNetModel layout
            self.num_hidden_layers = TINY_MOLECULE["num_hidden_layers"]  # the MLP's depth, for test_num_layers_is_small

        def get_config(self):
            return CloomeConfig(vision_config=dict(TINY_VISION), molecule_config=dict(self.molecule_config),
                                projection_dim=16, loss="infonce")

        def pixel_values(self, batch_size=None):
            return common.floats_tensor([batch_size or self.batch_size, self.num_channels, self.image_size,
                                         self.image_size])

        def prepare_config_and_inputs_for_common(self):
            fingerprints = (common.floats_tensor([self.batch_size, self.fingerprint_size]) > 0.7).float()
            inputs = {"pixel_values": self.pixel_values(), "fingerprints": fingerprints, "return_loss": True}
            return self.get_config(), inputs

        def molecule_hidden_shapes(self, config, inputs):
            """The MLP's input, then one (N, hidden_size) state per layer."""
            molecule, n = config.molecule_config, self.batch_size
            return [(n, molecule.fingerprint_size)] + [(n, molecule.hidden_size)] * molecule.num_hidden_layers

    class ProcessedMoleculesTester(CloomeModelTester):
        """A molecule tower whose inputs the model's own ``CloomeProcessor`` makes from SMILES (as users make them)."""

        def __init__(self, parent, batch_size=4):
            super().__init__(parent, batch_size)
            self.num_hidden_layers = self.get_config().molecule_config.num_hidden_layers
            self._processor = None

        def molecule_inputs(self, smiles):
            if self._processor is None:
                self._processor = CloomeProcessor.for_model(self.get_config())
            return dict(self._processor(smiles=smiles, return_tensors="pt"))

        def prepare_config_and_inputs_for_common(self):
            inputs = {"pixel_values": self.pixel_values(), **self.molecule_inputs(TOWER_SMILES[:self.batch_size]),
                      "return_loss": True}
            return self.get_config(), inputs

    class GraphTowerModelTester(ProcessedMoleculesTester):
        """The ``gnn`` tower (GINE, attention readout) over the processor's graph batch."""

        molecule_config = MappingProxyType({**TINY_GNN, "gnn_layer": "gine", "gnn_readout": "attention"})

        def molecule_hidden_shapes(self, config, inputs):
            """Atom states: after the embedding, then after each message-passing layer, (atoms, hidden_size)."""
            molecule = config.molecule_config
            return [(inputs["x"].shape[0], molecule.hidden_size)] * (molecule.num_hidden_layers + 1)

    class LanguageTowerModelTester(ProcessedMoleculesTester):
        """The ``transformers`` tower: the tiny RoBERTa of ``tiny_chem_lm_folder``, its tokenizer's ``input_ids``."""

        def __init__(self, parent, batch_size=4):
            self.molecule_config = {"encoder": "transformers", "transformers_model": parent.lm_folder,
                                    "token_pooling": "mean"}
            super().__init__(parent, batch_size)
            self.num_hidden_layers = TINY_CHEM_LM["num_hidden_layers"]  # the LM's depth (num_hidden_layers: unused)

        def molecule_hidden_shapes(self, config, inputs):
            """The LM's embeddings and each layer's output: (N, tokens, hidden_size)."""
            n, tokens = inputs["input_ids"].shape
            return [(n, tokens, TINY_CHEM_LM["hidden_size"])] * (TINY_CHEM_LM["num_hidden_layers"] + 1)

    class CloomeModelTest(common.ModelTesterMixin, unittest.TestCase):
        all_model_classes = (CloomeModel,)
        test_resize_embeddings = False
        test_mismatched_shapes = False  # those tests load classification heads (num_labels); CLOOME has none
        has_attentions = False
        _is_composite = True
        # get_image_features' last_hidden_state is a (N, C, h, w) feature map: its last axis is a width, not the
        # hidden size the generic shape check looks for. The hidden-state tests below check the shapes.
        skip_test_image_features_output_shape = True

        model_tester_class = CloomeModelTester

        def setUp(self):
            self.model_tester = self.model_tester_class(self)
            self.config_tester = ConfigTester(
                self, config_class=CloomeConfig, has_text_modality=False,
                common_properties=["projection_dim", "logit_scale_init_value"],
            )

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_tower_configs(self):
            config = self.model_tester.get_config()
            for tower, properties in ((config.vision_config, ["num_channels", "image_size", "layers"]),
                                      (config.molecule_config, ["hidden_size", "num_hidden_layers"])):
                ConfigTester(self, config_class=type(tower), has_text_modality=False,
                             common_properties=properties).run_common_tests()

        def _expected_hidden_shapes(self, config, inputs):
            """Per-stage shapes from the architecture: the stem quarters the side, stages 2-4 halve it; the molecule
            tower's from its tester."""
            vision, n = config.vision_config, self.model_tester.batch_size
            side, width = self.model_tester.image_size // 4, vision.base_width
            image_shapes = [(n, width, side, side)]
            for stage in range(4):
                side = side if stage == 0 else side // 2
                image_shapes.append((n, 4 * width * 2**stage, side, side))
            return image_shapes, self.model_tester.molecule_hidden_shapes(config, inputs)

        def test_hidden_states_output(self):
            """Overridden as for CLIPModel: CLOOME's hidden states are in its two towers' outputs."""
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            image_shapes, molecule_shapes = self._expected_hidden_shapes(config, inputs)
            for in_config in (False, True):
                run_config = self.model_tester.get_config()
                run_config.output_hidden_states = in_config
                model = CloomeModel(run_config).eval()
                with torch.no_grad():
                    outputs = model(**inputs, **({} if in_config else {"output_hidden_states": True}))
                got_image = [tuple(h.shape) for h in outputs.vision_model_output.hidden_states]
                got_molecule = [tuple(h.shape) for h in outputs.molecule_model_output.hidden_states]
                self.assertEqual(got_image, image_shapes)
                self.assertEqual(got_molecule, molecule_shapes)
            with torch.no_grad():
                plain = CloomeModel(self.model_tester.get_config()).eval()(**inputs)
            self.assertIsNone(plain.vision_model_output.hidden_states)
            self.assertIsNone(plain.molecule_model_output.hidden_states)

        def test_retain_grad_hidden_states_attentions(self):
            """Overridden as for CLIPModel: gradients reach the towers' hidden states (there are no attentions)."""
            config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
            config.output_hidden_states = True
            outputs = CloomeModel(config).train()(**inputs)
            image_hidden = outputs.vision_model_output.hidden_states[0]
            molecule_hidden = outputs.molecule_model_output.hidden_states[1]
            image_hidden.retain_grad()
            molecule_hidden.retain_grad()
            outputs[0].backward()
            self.assertIsNotNone(image_hidden.grad)
            self.assertIsNotNone(molecule_hidden.grad)

    NO_TOWER = {"text": "no text tower or tokenizer: molecules enter as fingerprints", "audio": "no audio tower",
                "video": "no video tower"}
    skip_inherited(CloomeModelTest, {
        "test_model_get_set_embeddings": "no token or patch embeddings to get or set: a CNN stem and an MLP",
        "test_inputs_embeds_matches_input_ids": "no input_ids or inputs_embeds: the inputs are images and fingerprints",
        "test_can_set_attention_dynamically_composite_model": "no attention layers, so no SDPA/eager to switch",
        "test_get_image_features_attentions": "no attention layers, so get_image_features has no attentions",
        **{f"test_get_{tower}_features_{test}": reason for tower, reason in NO_TOWER.items()
           for test in ("output", "hidden_states", "attentions")},
        "test_get_video_features_pooler_output": NO_TOWER["video"],
        "test_get_image_features_pooler_output": "the layout generate() needs (image-text-to-text); no generation",
        "test_model_base_model_prefix": "for generative models (a base model under an LM head); no generation",
        "test_torch_save_load": "compares a head model with its base class; CloomeModel is the base class itself",
        "test_problem_types": "exercises classification heads (problem_type, num_labels); CLOOME has none",
    })

    # ------------------------------------------------------------------ the gnn and transformers molecule towers
    def assert_leading_rows_close(batched, single, where="output"):
        """Every floating tensor of ``single`` (one pair) equals the leading block of ``batched``'s, as the mixin's
        batching test compares them (for a graph tower that block is the first molecule's atoms)."""
        if isinstance(batched, dict):
            for key in single:
                assert_leading_rows_close(batched[key], single[key], f"{where}.{key}")
        elif isinstance(batched, (list, tuple)):
            for i, (b, one) in enumerate(zip(batched, single, strict=True)):
                assert_leading_rows_close(b, one, f"{where}[{i}]")
        elif isinstance(batched, torch.Tensor) and batched.dim() and batched.is_floating_point():
            block = batched[tuple(slice(0, n) for n in single.shape)]
            assert torch.isfinite(block).all() and torch.isfinite(single).all(), f"{where} is not finite"
            torch.testing.assert_close(block, single, atol=1e-5, rtol=1e-5, msg=lambda m: f"{where}: {m}")

    class GraphTowerModelTest(CloomeModelTest):
        """The common tests with a ``gnn`` molecule tower, its graphs made by CloomeProcessor."""

        model_tester_class = GraphTowerModelTester

        def test_batching_equivalence(self):
            """Overridden for graph batches: a molecule's rows in ``x``, ``edge_attr`` and ``batch`` are its atoms and
            bonds, not one row, so the one-pair input is the processor's graph of the first molecule alone (the mixin
            would slice each tensor by the batch size)."""
            set_seed(42)
            config, batched = self.model_tester.prepare_config_and_inputs_for_common()
            set_config_for_less_flaky_test(config)
            config.output_hidden_states = True
            single = {"pixel_values": batched["pixel_values"][:1],
                      **self.model_tester.molecule_inputs(TOWER_SMILES[:1]), "return_loss": True}
            self.assertLess(single["x"].shape[0], batched["x"].shape[0])
            model = CloomeModel(config).eval()
            set_model_for_less_flaky_test(model)
            with torch.no_grad():
                assert_leading_rows_close(model(**batched), model(**single))

    class LanguageTowerModelTest(CloomeModelTest):
        """The common tests with a ``transformers`` molecule tower (a tiny RoBERTa saved locally, its tokenizer)."""

        model_tester_class = LanguageTowerModelTester

        @pytest.fixture(autouse=True)
        def _tiny_chem_lm(self, tiny_chem_lm_folder):
            self.lm_folder = tiny_chem_lm_folder

    def _is_named(test_name, name):
        """``test_name`` is ``name`` or one of its parameterized expansions (``name_0``, ``name_1``...)."""
        return test_name == name or (test_name.startswith(f"{name}_") and test_name[len(name) + 1:].isdigit())

    def only_tower_dependent(test_class, names):
        """Keep, of the inherited tests, only ``names``: those whose outcome depends on the molecule tower (its
        inputs, outputs, weights, config or loading). The others (images only, class attributes, transformers' own
        loading machinery, CloomeConfig fields no tower reads) ran once in ``CloomeModelTest`` and would repeat it;
        a name that matches no test fails here."""
        inherited = [n for n in dir(test_class) if n.startswith("test_") and callable(getattr(test_class, n))]
        unknown = [name for name in names if not any(_is_named(n, name) for n in inherited)]
        if unknown:
            raise AssertionError(f"{test_class.__name__} inherits no tests named {unknown}")
        for test_name in inherited:
            if not any(_is_named(test_name, name) for name in names):
                setattr(test_class, test_name, None)  # unittest collects only callable test_* attributes
        return test_class

    TOWER_DEPENDENT = (
        "test_config", "test_tower_configs",  # the tower's config fields (graph schema, the LM's config.json)
        "test_save_load", "test_can_use_safetensors", "test_from_pretrained_no_checkpoint",
        "test_load_save_without_tied_weights", "test_correct_missing_keys",
        "test_all_tensors_are_parameter_or_buffer", "test_can_be_initialized_on_meta",
        "test_init_weights_can_init_buffers", "test_model_is_small", "test_num_layers_is_small",
        "test_determinism", "test_batching_equivalence", "test_model_outputs_equivalence",
        "test_hidden_states_output", "test_retain_grad_hidden_states_attentions", "test_training",
        "test_model_get_set_embeddings", "test_inputs_embeds_matches_input_ids",  # skipped below, with the reason
    )
    only_tower_dependent(GraphTowerModelTest, TOWER_DEPENDENT)
    only_tower_dependent(LanguageTowerModelTest, TOWER_DEPENDENT + (
        # the LM has checkpointed layers and attention; the rest are skipped below, with the reason
        "test_training_gradient_checkpointing", "test_gradient_checkpointing_enable_disable",
        "test_enable_input_require_grads", "test_can_set_attention_dynamically",
        "test_can_set_attention_dynamically_composite_model", "test_capture_outputs_decorator",
        "test_get_text_features_output", "test_get_text_features_hidden_states", "test_get_text_features_attentions",
    ))
    skip_inherited(GraphTowerModelTest, {
        "test_model_get_set_embeddings": "no token embeddings: a graph's atoms are one-hot features through a linear "
                                         "layer, and CloomeModel exposes none (as CLIPModel)",
        "test_inputs_embeds_matches_input_ids": "no input_ids or inputs_embeds: a gnn tower takes graph tensors",
    })
    skip_inherited(LanguageTowerModelTest, {
        "test_model_get_set_embeddings": "the LM's token embeddings are inside the molecule tower; CloomeModel, whose "
                                         "main input is pixel_values, exposes no input embeddings (as CLIPModel)",
        "test_inputs_embeds_matches_input_ids": "CloomeModel takes no inputs_embeds: molecules enter as the "
                                                "processor's input_ids",
        "test_capture_outputs_decorator": "asks for output_attentions: CloomeModel returns no attentions for any "
                                          "tower (the LM's hidden states are checked by test_hidden_states_output)",
        "test_get_text_features_output": "the LM is reached through get_molecule_features, not get_text_features",
        "test_get_text_features_hidden_states": "the LM is reached through get_molecule_features, not "
                                                "get_text_features (its hidden states: test_hidden_states_output)",
        "test_get_text_features_attentions": "CloomeModel returns no attentions for any tower",
        "test_can_set_attention_dynamically_composite_model": "sets sdpa on CloomeConfig itself, which CloomeModel "
            "refuses (_supports_sdpa False: its own layers have no attention); the LM follows an attn_implementation "
            "given for the whole model (test_can_set_attention_dynamically's eager check)",
    })

    class CloomeImageProcessingTester(ImageProcessingTester):
        def __init__(self, parent):
            super().__init__(parent, batch_size=3, num_channels=len(CHANNELS), min_resolution=CROP["height"],
                             max_resolution=CROP["height"] + 32, crop_size=dict(CROP), do_center_crop=True,
                             channel_order=list(CHANNELS), intensity_clip_fraction=1e-4)

        def _get_image_processing_classes(self):
            return {"torchvision": CloomeImageProcessor}  # one backend, registered under AutoImageProcessor

        def prepare_image_inputs(self, batch_size=None, min_resolution=None, max_resolution=None, num_channels=None,
                                 size_divisor=None, equal_resolution=False, numpify=False, torchify=False):
            """Raw 16-bit sites: multi-page PIL images (a page per channel), H x W x C arrays or C x H x W tensors."""
            rng = np.random.default_rng(0)
            low, high = min_resolution or self.min_resolution, max_resolution or self.max_resolution
            sites = []
            for _ in range(batch_size or self.batch_size):
                height, width = (high, high) if equal_resolution else rng.integers(low, high, size=2)
                sites.append(random_site(rng, height, width))
            if numpify:
                return [np.moveaxis(site, 0, -1) for site in sites]
            if torchify:
                return [torch.from_numpy(site.astype(np.int32)) for site in sites]
            return [multipage_pil(site) for site in sites]

        def expected_output_image_shape(self, images):
            return len(CHANNELS), CROP["height"], CROP["width"]

    class CloomeImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
        image_processor_tester_class = CloomeImageProcessingTester
        test_cast_dtype = True

    skip_inherited(CloomeImageProcessingTest, {
        "test_image_processor_from_dict_with_kwargs_has_attributes": "RGB-only conversion: sets do_convert_rgb",
        "test_call_numpy_4_channels": "RGB-only conversion: do_convert_rgb on 4 unnamed channels; sites are named",
        "test_convert_to_rgb_mixed_input_batch": "RGB-only conversion: converts RGB/RGBA/grey images to RGB",
    })

    class CloomeProcessorTest(ProcessorTesterMixin, unittest.TestCase):
        processor_class = CloomeProcessor

        @classmethod
        def _setup_image_processor(cls):
            return CloomeImageProcessor(crop_size=dict(CROP), intensity_clip_fraction=1e-4)

        def prepare_images_inputs(self, batch_size=None, nested=False):
            """Cell Painting sites as one single-band PIL image per channel, by channel name."""
            rng = np.random.default_rng(1)
            sites = [{name: Image.fromarray(channel) for name, channel in zip(CHANNELS, random_site(rng, 80, 72))}
                     for _ in range(batch_size or 1)]
            if batch_size is None:
                return sites[0]
            return [[site] for site in sites] if nested else sites

        def test_model_input_names(self):
            """Overridden: molecules enter as `smiles` (and their doses as `concentrations`), modalities the generic
            test's input list does not name."""
            processor = self.get_processor()
            inputs = processor(images=self.prepare_images_inputs(), smiles=SMILES, concentrations=[1.0] * len(SMILES),
                               return_tensors="pt")
            self.assertSetEqual(set(inputs.keys()), set(processor.model_input_names))

        def test_processor_with_multiple_inputs(self):
            """Overridden: the two modalities are images and `smiles` (the generic test counts sub-processors)."""
            processor = self.get_processor()
            inputs = processor(images=self.prepare_images_inputs(batch_size=2), smiles=SMILES, return_tensors="pt")
            self.assertEqual(tuple(inputs["pixel_values"].shape), (2, len(CHANNELS), CROP["height"], CROP["width"]))
            self.assertEqual(tuple(inputs["fingerprints"].shape), (2, processor.featurizer.fingerprint_size))
            with self.assertRaises(ValueError):
                processor()
