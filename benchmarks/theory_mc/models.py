"""Hugging Face GPT-2 and BERT built from a config; the other architectures of the check.

The residual MLPs and transformer encoders live in :mod:`gradwatch.experiments.architectures`
(``gradwatch theory --blocks`` builds them too).
"""

from __future__ import annotations

from gradwatch.experiments.architectures import (
    DeepNormEncoder,
    ResidualMLP,
    TokenEncoder,
    independent_layers_,
)

__all__ = ["DeepNormEncoder", "ResidualMLP", "TokenEncoder", "bert", "gpt2", "independent_layers_"]


def gpt2(
    layers: int = 4,
    d: int = 64,
    heads: int = 4,
    vocab: int = 64,
    positions: int = 32,
    dropout: float = 0.0,
):
    """``GPT2LMHeadModel`` from a config (its own init: N(0, 0.02), scaled residual projections).

    ``dropout`` sets the residual, embedding and attention dropout (GPT-2's default is 0.1).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=d,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def bert(
    layers: int = 4,
    d: int = 64,
    heads: int = 4,
    vocab: int = 64,
    positions: int = 32,
    dropout: float = 0.0,
):
    """``BertForMaskedLM`` from a config (post-LN, N(0, 0.02) init; BERT's dropout is 0.1)."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * d,
        max_position_embeddings=positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForMaskedLM(cfg)
