"""A byte-level tokenizer that is an ordinary transformers tokenizer.

Token id b is the byte b (0-255), so any text round-trips, including non-ASCII;
two specials follow. It is built with the `tokenizers` library and wrapped in
transformers' fast tokenizer class, so `save_pretrained` writes a plain
tokenizer.json that `AutoTokenizer.from_pretrained` reads back offline, with no
custom class and no remote code.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

BYTE_VOCAB_SIZE = 256
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN_ID = BYTE_VOCAB_SIZE
PAD_TOKEN_ID = BYTE_VOCAB_SIZE + 1
VOCAB_SIZE = BYTE_VOCAB_SIZE + 2


def byte_symbols() -> list[str]:
    """The printable stand-in character for each byte, as the ByteLevel pre-tokenizer writes it.

    Bytes that are visible Latin-1 characters stand for themselves; the others
    (controls, space, soft hyphen...) map to code points from 256 upwards, in byte order.
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shifted = [], 0
    for byte in range(BYTE_VOCAB_SIZE):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(BYTE_VOCAB_SIZE + shifted))
            shifted += 1
    return symbols


def byte_backend() -> Tokenizer:
    """The `tokenizers` object: one token per byte, no merges."""
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_tokenizer(model_max_length: int | None = None):
    """A transformers fast tokenizer over bytes, with <|endoftext|> (eos) and <|pad|> specials."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_backend(),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        # a causal LM takes no token_type_ids; transformers before 5 adds them and generate() refuses them
        model_input_names=["input_ids", "attention_mask"],
    )
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    if tokenizer.eos_token_id != EOS_TOKEN_ID or tokenizer.pad_token_id != PAD_TOKEN_ID:
        raise RuntimeError(
            f"byte tokenizer specials landed at ids {tokenizer.eos_token_id}/{tokenizer.pad_token_id}, "
            f"expected {EOS_TOKEN_ID}/{PAD_TOKEN_ID}; the installed tokenizers/transformers changed behaviour"
        )
    return tokenizer
