"""Publishing: conversion of the published checkpoints, model and dataset cards, Hub repositories.

* :mod:`.convert` - the upstream CLOOME checkpoints -> a ``from_pretrained`` folder, with exact parity;
* :mod:`.card` - model and dataset cards rendered from the templates in ``cloome_hf/model_cards/``;
* :mod:`.hub` - the model and embeddings repositories, pushed or written to a local folder.
"""
