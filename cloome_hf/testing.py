"""Stand-ins for downloaded models, for tests and benchmarks that must run offline (``HF_HUB_OFFLINE=1``).

A real chemical language model (ChemBERTa, MoLFormer) is a Hub download; what ``encoder="transformers"`` needs of
one is a tokenizer and a model folder that ``AutoTokenizer`` / ``AutoModel`` read. :func:`save_char_level_smiles_lm`
writes such a folder with random weights, so the adapter is exercised exactly as with a download.
"""

from __future__ import annotations

import os

#: The SMILES characters of the stand-in's vocabulary (one token each): elements' letters, bonds, rings, charges.
SMILES_CHARACTERS = "CNOSPFIBrclnosaegiKkLMuZt()[]=#@+-0123456789%/\\.H"
#: RoBERTa's special tokens, in the order that gives them ids 0-4.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def save_char_level_smiles_lm(folder: str | os.PathLike, *, model_max_length: int = 512,
                              characters: str = SMILES_CHARACTERS, seed: int | None = None, **roberta) -> str:
    """Save a character-level SMILES tokenizer (a ``tokenizers`` WordLevel model, one token a character, RoBERTa's
    special tokens, ``<s> ... </s>`` around each SMILES) and a random ``RobertaModel`` over its vocabulary into
    ``folder``, as a downloaded model folder is laid out. ``roberta``: ``RobertaConfig`` fields (``hidden_size``,
    ``num_hidden_layers``, ...); ``seed`` fixes the random weights. Returns the folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(set(characters))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", mask_token="<mask>",
                            model_max_length=model_max_length).save_pretrained(folder)
    if seed is not None:
        torch.manual_seed(seed)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), **roberta)).save_pretrained(folder)
    return os.fspath(folder)


__all__ = ["SMILES_CHARACTERS", "SPECIAL_TOKENS", "save_char_level_smiles_lm"]
