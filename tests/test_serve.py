"""``cloome serve`` without a browser: binding and share defaults, and the page's answers to refused queries."""

import gradio as gr
import pytest

from cloome_hf.cli import serve


@pytest.fixture
def launched(monkeypatch):
    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.append(kwargs))
    return calls


def test_binds_localhost_without_share_link_unless_asked(tiny_served_store, launched):
    store = str(tiny_served_store["store"])
    serve.main(["--images", store, "--port", "7999"])
    serve.main(["--images", store, "--share", "--host", "0.0.0.0"])
    assert launched[0] == {"server_name": "127.0.0.1", "server_port": 7999, "share": False}
    assert launched[1]["share"] is True and launched[1]["server_name"] == "0.0.0.0"


def test_refused_queries_are_messages_not_tracebacks(tiny_served_store):
    from cloome_hf.serve import SearchService

    service = SearchService.from_stores(str(tiny_served_store["store"]))
    with pytest.raises(ValueError, match="Invalid SMILES 'C1CC\\(N' at position 0"):
        service.molecule_to_sites("C1CC(N")
    with pytest.raises(ValueError, match="'nope'"):
        service.site_by_key("nope")
    key = tiny_served_store["dataset"][0]["sample_key"]
    assert service.picture(key).shape == (64, 64, 3)  # a stored site is drawn from the source dataset
    assert service.picture("nope") is None
