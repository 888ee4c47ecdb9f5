"""A tiny seeded INSTRUCTOR checkpoint in the sentence-transformers layout, built in-process.

T5 encoder (d_model 32, 2 layers) + a Unigram tokenizer trained here (T5's special tokens:
<pad>=0, </s>=1, <unk>=2, and </s> appended to every sequence) + a bias-free Dense 32 -> 24, so
the Dense is visibly applied (output dim differs from the hidden size).
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny import CORPUS

DENSE_OUT = 24


def t5_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    corpus = [*CORPUS, "Represent the sentence for retrieval: Represent the science title:"] * 2
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def tiny_instructor(out: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    model = T5EncoderModel(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                {
                    "idx": 3,
                    "name": "3",
                    "path": "3_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 512, "do_lower_case": False})
    )
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "include_prompt": False}
        )
    )
    (out / "3_Normalize").mkdir()
    dense = out / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": DENSE_OUT,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file({"linear.weight": torch.randn(DENSE_OUT, 32) * 0.2}, str(dense / "model.safetensors"))
    return out
