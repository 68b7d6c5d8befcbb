"""Captions the base model's tokenizer cannot read, or must cut, are counted and reported once."""

from __future__ import annotations

import logging

import pytest

from spin_diffusion.model.tokens import caption_token_report, warn_caption_tokens
from spin_diffusion.toy import base_model_path
from spin_diffusion.toy.datasets import generate_pairs

FOREIGN = "a handwritten digit seven"  # outside the toy grammar: letters the toy vocabulary lacks


@pytest.fixture(scope="module")
def toy_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(base_model_path() / "tokenizer"))


@pytest.fixture(scope="module")
def grammar_prompts() -> list[str]:
    return [caption for caption, _ in generate_pairs(50, 0, "curated")]


def test_the_toy_tokenizer_maps_unknown_letters_to_its_unknown_id(toy_tokenizer):
    # what the report relies on: no error, the unknown id (here also end-of-text) inside the caption
    ids = toy_tokenizer(FOREIGN, add_special_tokens=False).input_ids
    assert toy_tokenizer.unk_token_id in ids
    assert toy_tokenizer.unk_token_id == toy_tokenizer.eos_token_id


def test_foreign_captions_are_unknown_and_grammar_prompts_are_not(toy_tokenizer, grammar_prompts):
    assert caption_token_report(toy_tokenizer, grammar_prompts) == (0, 0)
    assert caption_token_report(toy_tokenizer, [FOREIGN]) == (1, 0)
    mixed = [*grammar_prompts[:10], FOREIGN, "a zebra", grammar_prompts[10]]
    assert caption_token_report(toy_tokenizer, mixed) == (2, 0)


def test_captions_longer_than_the_encoder_are_counted_as_truncated(toy_tokenizer):
    limit = toy_tokenizer.model_max_length - 2  # bos + eos
    fits = " ".join(["red"] * limit)
    too_long = " ".join(["red"] * (limit + 1))
    assert caption_token_report(toy_tokenizer, [fits, too_long, too_long + " seven"]) == (1, 2)


def test_a_tokenizer_without_a_length_limit_truncates_nothing(toy_tokenizer):
    import copy

    tok = copy.deepcopy(toy_tokenizer)
    tok.model_max_length = int(1e30)  # transformers' "no limit" sentinel
    assert caption_token_report(tok, [" ".join(["red"] * 100)]) == (0, 0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_one_warning_with_the_counts_and_an_example(grammar_prompts, caplog):
    from transformers import CLIPTokenizer

    toy_tokenizer = CLIPTokenizer.from_pretrained(str(base_model_path() / "tokenizer"))  # warns afresh
    logger = logging.getLogger("test_tokens")
    too_long = " ".join(["red"] * (toy_tokenizer.model_max_length + 5))
    captions = [*grammar_prompts[:20], FOREIGN, "a zebra", too_long]
    library = _Records()  # transformers' loggers do not propagate to caplog
    logging.getLogger("transformers").addHandler(library)
    try:
        with caplog.at_level(logging.WARNING):
            assert warn_caption_tokens(toy_tokenizer, captions, logger) == (2, 1)
    finally:
        logging.getLogger("transformers").removeHandler(library)
    assert not [r for r in library.records if "indexing errors" in r.getMessage()]
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1
    message = records[0].getMessage()
    assert records[0].name == "test_tokens" and "\n" not in message
    assert "2 of 23 captions" in message and FOREIGN in message and "seven" in message
    limit = toy_tokenizer.model_max_length - 2
    assert f"1 of 23 captions are longer than the text encoder's {limit} tokens" in message


def test_no_warning_when_every_caption_is_readable(toy_tokenizer, grammar_prompts, caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_caption_tokens(toy_tokenizer, grammar_prompts, logging.getLogger("test_tokens")) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
