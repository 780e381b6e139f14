"""The demo's compact tokenizer: Qwen's byte-level BPE rules, a vocabulary of at most 1,024 learned on the world.

Why: with Qwen's 151,936-token vocabulary, the demo student's output head took about 80% of a CPU training
step (a 128-wide model spends most of its work scoring tokens it never meets). The world's text needs a few
hundred words, so the demo trains with a vocabulary of `VOCAB_SIZE` tokens instead, built here:

- Qwen's own normalizer (NFC), pre-tokenizer (its split regex, then byte-level) and decoder, so text is cut
  into words exactly as Qwen's tokenizer cuts it and any text, in or out of the world, still encodes (the
  256 byte tokens are all in the vocabulary);
- BPE merges learned on the world's conversations (system turn, questions of every category and split,
  teacher traces, answer lines), as the chat template renders them between control tokens;
- Qwen's added tokens (`<|endoftext|>` ... `<|video_pad|>`, `<think>`, `</think>`) at the end, as in Qwen's
  files. Their ids differ from Qwen's: every run reads them from the tokenizer (`SpecialIds.from_tokenizer`)
  into its run contract, and the model's image ids and the padding follow.

The files are committed in `tokenizer_files/` (what `configs/demo.py` trains with and every export ships);
`python -m octomed_demo.vocabulary` rebuilds them, and a test checks that the rebuild is identical.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.formats import answer_line
from data_pipeline.teachers import TeacherConfig
from data_pipeline.validity import CONTROL_TOKENS
from octomed_demo import world

VOCAB_SIZE = 1024
TOKENIZER_DIR = str(Path(__file__).resolve().parent / "tokenizer_files")
THINK_TOKENS = ("<think>", "</think>")
# Questions per category and split in the corpus: every phrasing of the world appears many times over.
_CORPUS_QUESTIONS = {"train": 80, "test": 20}
_SAMPLES_PER_QUESTION = 4


def corpus(seed: int = 0) -> Iterator[str]:
    """The world's text as the student sees it, cut at control tokens (the BPE never sees those)."""
    from octomed_jax.data.template import messages_for_question, render_chat  # the one chat template

    teacher = world.DemoTeacher(TeacherConfig.from_mapping(world.teacher_settings(seed=seed)))
    split_at = re.compile("|".join(re.escape(t) for t in (*CONTROL_TOKENS, *THINK_TOKENS)))
    for category in world.option_counts():
        for split, count in _CORPUS_QUESTIONS.items():
            for question in world.generate_split(seed, category, split, count):
                messages = messages_for_question(question)
                for sample in range(_SAMPLES_PER_QUESTION):
                    reply = {"role": "assistant", "content": teacher.respond(question, sample)}
                    yield from (p for p in split_at.split(render_chat([*messages, reply])) if p)
                # Direct-format targets: the answer line of every option.
                yield from (answer_line(letter, text) for letter, text in question.options.items())


def build_tokenizer(out_dir: str = TOKENIZER_DIR, *, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> str:
    """Learns the compact vocabulary on the world and writes a Hugging Face tokenizer folder.

    Args:
      out_dir: the folder (created); `tokenizer.json`, `tokenizer_config.json` and friends are written.
      vocab_size: total tokens, the added tokens included.
      seed: the world's seed (its questions and teacher samples).

    Returns:
      `out_dir`.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from octomed_jax.data.tokenizer import default_tokenizer_dir

    qwen = Tokenizer.from_file(os.path.join(default_tokenizer_dir(), "tokenizer.json"))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer, tokenizer.pre_tokenizer = qwen.normalizer, qwen.pre_tokenizer
    tokenizer.decoder, tokenizer.post_processor = qwen.decoder, qwen.post_processor
    added = len(CONTROL_TOKENS) + len(THINK_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - added, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Merges stop when every word of the world is one token (~580 today): the model's vocabulary rows beyond
    # the tokenizer's stay unused, as Qwen's 151,936 rows are for its 151,665 tokens.
    tokenizer.train_from_iterator(corpus(seed), trainer)
    # As in Qwen's files: control tokens are special (dropped when decoding), the <think> pair is not.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out_dir)
    print(f"demo tokenizer: {tokenizer.get_vocab_size()} tokens ({added} added) -> {out_dir}")
    return out_dir


if __name__ == "__main__":
    build_tokenizer()
