"""The offline corpus and the byte-level BPE tokenizer (fmlab.text)."""
import pytest

from fmlab import text

SAMPLE = ("The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
          "    def f(x):\n        return x ** 2  # naïve — ünïcödé ✓\n\n") * 3


def test_pretokens_join_back_and_split_as_gpt2():
    assert "".join(text.pretokenize(SAMPLE)) == SAMPLE
    assert text.pretokenize("Hello world's  end_1 42!") == ["Hello", " world", "'s", " ",
                                                           " end", "_", "1", " 42", "!"]


def test_training_follows_the_merge_rule_and_round_trips():
    tok = text.BPE.train(SAMPLE, 300)
    assert len(tok) == 300
    words = {tuple(w.encode()): n for w, n in
             __import__("collections").Counter(text.pretokenize(SAMPLE)).items()}
    for k, pair in enumerate(tok.merges):  # the incremental counts agree with recounting
        counts = text.pair_counts(words)
        assert pair == max(counts, key=lambda p: (counts[p], p)), k
        words = {tuple(text.merge(list(w), pair, 256 + k)): n for w, n in words.items()}
    for s in (SAMPLE, "", "unseen wörds ✓✓", "\x00\xff"):
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(SAMPLE)) < len(SAMPLE.encode())
    # a shorter vocabulary is the prefix of the merges
    assert tok.truncated(280).merges == tok.merges[:24]
    assert text.BPE.train(SAMPLE, 280).merges == tok.merges[:24]


def test_merge_is_left_to_right():
    assert text.merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert text.merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="at least 256"):
        text.BPE.train("abc", 100)
    with pytest.raises(ValueError, match="does not exist yet"):
        text.BPE([(300, 1)])
    with pytest.raises(ValueError, match="choose one of"):
        text.code_files("nope")
    with pytest.raises(ValueError, match="fraction"):
        text.split("abc", 1.5)
    with pytest.raises(ValueError, match="id 300 is not in the vocabulary of 257"):
        text.BPE([(97, 98)]).decode([97, 300])


def test_corpus_is_offline_and_split_at_a_line_break():
    topics = text.prose_topics()
    assert list(topics) == sorted(topics) and len(text.prose()) > 300_000
    train, held = text.split(text.prose())
    assert train + held == text.prose() and train.endswith("\n")
    assert 0.09 < len(held) / len(text.prose()) < 0.11
    assert set(text.code_files("json")) == set(text.CODE_FILES["json"])


def test_bytes_to_unicode_is_gpt2s_table():
    table = text.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_same_ids_as_hugging_face_tokenizers():
    pytest.importorskip("tokenizers")
    tok = text.BPE.train(SAMPLE, 320)
    hf = text.to_hf(tok)
    for s in (SAMPLE, "unseen wörds ✓✓ 'll 're", text.code("json")[:5000]):
        ids = tok.encode(s)
        assert hf.encode(s).ids == ids and hf.decode(ids) == s
