"""Model and dataset cards: Hub metadata (parsed back with huggingface_hub), content per producer, errors."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import DatasetCard, ModelCard

from cloome_hf.publish.convert import processor_settings
from cloome_hf.publish.card import eval_results_from_json, render_model_card

TAGS = {"cell-painting", "microscopy", "contrastive-learning", "drug-discovery", "feature-extraction"}


def _converted(recipe="retrieval", fingerprint_size=8192, **extra):
    return render_model_card(
        "model",
        model_id="someone/cloome-retrieval",
        source="converted",
        recipe=recipe,
        checkpoint="cloome-retrieval-zero-shot.pt",
        processor=processor_settings(recipe, fingerprint_size),
        **extra,
    )


def test_converted_card_metadata_parses_on_the_hub_schema():
    card = ModelCard(_converted())
    data = card.data.to_dict()
    assert TAGS <= set(data["tags"])
    assert data["license"] == "mit"
    assert data["pipeline_tag"] == "feature-extraction"
    assert data["library_name"] == "transformers"
    assert "model-index" not in data  # no eval_results given


def test_converted_card_content():
    text = _converted()
    assert "0 = `Mito`, 1 = `ERSyto`, 2 = `ERSytoBleed`, 3 = `Ph_golgi`, 4 = `Hoechst`" in text
    assert "n = round(2.8e-05 x H x W)" in text and "x * 256 / T" in text
    assert "centre crop to 520 x 696" in text
    assert "(47.1314, 40.8138, 53.7692, 46.2656, 28.7243)" in text
    assert "`morgan_rdkit_max` fingerprints of length 8192" in text
    assert "cloome-retrieval-zero-shot.pt" in text
    assert "10.1038/s41467-023-42328-w" in text and "@article{sanchez2023cloome" in text
    # Paper, Tables 3 and 4 (CLOOME rows), transcribed independently here.
    for row in (
        "| random | 43,778 | 18.4 [18.1, 18.8] | 41.5 [41.1, 42.0] | 56.2 [55.8, 56.7] |",
        "| scaffold | 28,248 | 22.3 [21.9, 22.9] | 50.8 [50.2, 51.4] | 67.1 [66.6, 67.7] |",
        "| random | 8,826 | 13.0 [12.3, 13.7] | 35.3 [34.3, 36.3] | 48.0 [46.9, 49.0] |",
        "| scaffold | 4,056 | 18.5 [17.3, 19.7] | 47.9 [46.4, 49.5] | 61.3 [59.7, 62.8] |",
    ):
        assert row in text
    assert "more than 70 times" in text
    assert "## Training" not in text


def test_zero_shot_and_bioactivity_recipes():
    zero_shot = _converted("zero-shot")
    assert "centre crop to 520 x 520" in zero_shot and "18.4 [18.1, 18.8]" in zero_shot
    bio = _converted("bioactivity", 1024)
    assert "`morgan` fingerprints of length 1024" in bio
    assert "cloome-bioactivity.pt" in bio
    # The zero-shot tables were measured with the retrieval / zero-shot weights, not this checkpoint.
    assert "18.4 [18.1, 18.8]" not in bio and "Results reported in the paper" in bio


def test_trained_card_with_config_training_config_and_metrics(tiny_config):
    text = render_model_card(
        "model",
        model_id="me/cloome-tiny",
        config=tiny_config,
        training_config={"learning_rate": 5e-4, "epochs": 3, "loss": "infoloob"},
        metrics={"eval_loss": 1.23456, "molecule_to_image_top1": 0.25},
    )
    assert "published CLOOME weights" not in text and "Results reported in the paper" not in text
    assert "| `learning_rate` | 0.0005 |" in text and "| `epochs` | 3 |" in text
    assert "| `eval_loss` | 1.235 |" in text and "| `molecule_to_image_top1` | 0.25 |" in text
    assert "blocks per stage [1, 1, 1, 1]" in text and "| embedding dimension | 16 |" in text
    assert "of width 32 on 64-dim fingerprints" in text
    assert 'CloomeModel.from_pretrained("me/cloome-tiny")' in text
    assert TAGS <= set(ModelCard(text).data.tags)


def test_eval_results_become_model_index(tmp_path):
    report = {
        "n": 200,
        "tie_breaking": "pessimistic",
        "molecule_to_image": {
            "top1": {"value": 0.125, "ci_low": 0.08, "ci_high": 0.18, "k": 25, "n": 200},
            "mean_rank": 17.5,
            "top1pct_cutoff": 2,
            "random": {"top1": 0.005},
        },
        "image_to_molecule": {"top5": {"value": 0.3, "ci_low": 0.24, "ci_high": 0.37, "k": 60, "n": 200}},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report))
    entries = eval_results_from_json(path, dataset_name="Bray 2017 test split", dataset_type="cell-painting-bray2017",
                                     task_type="feature-extraction", task_name="cross-modal retrieval", dataset_split="test")
    assert [(e["metric_type"], e["metric_value"]) for e in entries] == [
        ("molecule_to_image/top1", 0.125),
        ("molecule_to_image/mean_rank", 17.5),
        ("image_to_molecule/top5", 0.3),
    ]
    assert entries[0]["metric_name"] == "molecule_to_image/top1 (95% CI 0.08-0.18)"

    card = ModelCard(render_model_card("model", model_id="me/cloome-run", eval_results=entries))
    parsed = card.data.eval_results
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in parsed] == [
        ("molecule_to_image/top1", 0.125, "test"),
        ("molecule_to_image/mean_rank", 17.5, "test"),
        ("image_to_molecule/top5", 0.3, "test"),
    ]
    assert card.data.model_name == "me/cloome-run"
    assert all(r.task_name == "cross-modal retrieval" and r.dataset_type == "cell-painting-bray2017" for r in parsed)
    assert "| cross-modal retrieval | Bray 2017 test split | test | molecule_to_image/top1 (95% CI 0.08-0.18) | 0.125 |" in card.text


def test_eval_results_errors(tmp_path):
    with pytest.raises(ValueError, match="missing.json"):
        eval_results_from_json(tmp_path / "missing.json", dataset_name="d", dataset_type="t")
    with pytest.raises(ValueError, match="no numeric metrics"):
        eval_results_from_json({"n": 3, "notes": "x"}, dataset_name="d", dataset_type="t")
    with pytest.raises(ValueError, match="metric_value"):
        render_model_card("model", eval_results=[{"task_type": "a", "dataset_type": "b", "dataset_name": "c",
                                                  "metric_type": "d"}])


def test_dataset_card():
    text = render_model_card(
        "dataset",
        dataset_id="me/bray2017-cloome-embeddings",
        model_id="me/cloome-retrieval",
        num_rows=12345,
        columns={"sample_key": "plate-well-site", "image_embeds": "512 float32, L2-normalised"},
        source_dataset="Bray et al. 2017 (CC0)",
        size_category="10K<n<100K",
    )
    card = DatasetCard(text)
    assert TAGS <= set(card.data.tags)
    assert card.data.task_categories == ["feature-extraction"]
    assert card.data.size_categories == ["10K<n<100K"]
    assert "Rows: 12,345." in text and "| `image_embeds` | 512 float32, L2-normalised |" in text
    assert "`Mito`, `ERSyto`, `ERSytoBleed`, `Ph_golgi`, `Hoechst`" in text
    assert 'load_dataset("me/bray2017-cloome-embeddings"' in text
    assert "10.1038/s41467-023-42328-w" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "poster"}, "poster"),
        ({"template": "model", "modle_id": "x"}, "modle_id"),
        ({"template": "model", "recipe": "fast"}, "fast"),
        ({"template": "model", "preset": "retrieval"}, "preset"),  # the old key: unknown, named
        ({"template": "model", "source": "downloaded"}, "downloaded"),
        ({"template": "dataset", "training_config": {}}, "training_config"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_model_card(**kwargs)
