"""A tokenizer for the tiny demo/test checkpoints, built offline: the host's tools (``AutoBridge.import_ckpt``,
its conversion scripts) load ``tokenizer.json`` from the HF folder and stop without one.

Byte-level BPE without merges: each byte is one token, so any text encodes and decodes back exactly when
the vocabulary has room for all 256 bytes (tiny Super: 256 = 3 special tokens + 253 bytes, the rarest
three bytes (0xFD-0xFF, never in UTF-8) map to ``<unk>``).
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 (config.json: bos 1, eos 2)


def write_demo_tokenizer(folder: str | Path, vocab_size: int) -> Path:
    """Save a ``vocab_size``-token fast tokenizer (tokenizer.json + tokenizer_config.json) into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(SPECIAL):
        raise ValueError(f"vocab_size={vocab_size}: expected more than {len(SPECIAL)} (the special tokens)")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = [bytes_to_unicode_char(b) for b in range(256) if bytes_to_unicode_char(b) in alphabet]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *byte_chars][:vocab_size])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>")
    fast.save_pretrained(str(folder))
    return Path(folder)


def bytes_to_unicode_char(byte: int) -> str:
    """GPT-2's byte -> printable character table (what ByteLevel pre-tokenisation emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))
