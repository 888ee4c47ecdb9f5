"""Tiny seeded causal LMs (OPT, Llama) with a byte-level BPE tokenizer, built in-process."""

from __future__ import annotations

from pathlib import Path

from tiny import roberta_tokenizer


def _tokenizer():
    """The RoBERTa-style BPE (ids: <s>=0, <pad>=1, </s>=2) used as a GPT-style tokenizer: BOS
    prepended by its post-processor, no EOS appended to prompts."""
    from tokenizers.processors import TemplateProcessing

    tok = roberta_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)]
    )
    return tok


def tiny_causal(out: Path, family: str, seed: int = 0, eos_id: int | None = None) -> Path:
    """family: "opt" or "llama". With `eos_id`, that vocabulary token is the end-of-sequence token
    (config, generation config and tokenizer): a random model then ends exactly the answers in
    which it says that token, deterministically."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    tok = _tokenizer()
    eos = 2 if eos_id is None else eos_id
    if eos_id is not None:
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    common = {"vocab_size": len(tok), "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": eos}
    torch.manual_seed(seed)
    if family == "opt":
        cfg = OPTConfig(
            hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
            max_position_embeddings=256, word_embed_proj_dim=16, do_layer_norm_before=False, **common,
        )  # fmt: skip
        model = OPTForCausalLM(cfg)
    else:
        cfg = LlamaConfig(
            hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, **common,
        )  # fmt: skip
        model = LlamaForCausalLM(cfg)
    model.eval()
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.mul_(8.0)  # decisive greedy choices, not near ties
    model.generation_config.eos_token_id = eos
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
