"""The offline corpus (the standard library's own text) and a byte-level BPE tokenizer.

Explained in book/09_language_model.ipynb.

Every Python installation ships text, Colab's included, under the PSF licence:

* **prose**: ``pydoc_data.topics``, the language reference's topics as ``help()`` shows them
  (about 465,000 characters of English), joined in sorted order of their names;
* **code**: ``.py`` files of the standard library, from fixed, sorted lists of files that
  every CPython 3.10-3.13 has (:data:`CODE_FILES`).

The *file list* is fixed; the text itself changes a little between Python versions, so
numbers measured on one version move slightly on another.

Held-out split (:func:`split`): the first 90% of a text's characters (cut at a line break) is
for training, the last 10% is held out. The tokenizer is trained on the training part only.

Byte-level BPE (Sennrich et al. 2016, at the byte level as GPT-2, Radford et al. 2019): text is
UTF-8 bytes (ids 0-255); it is cut into pre-tokens with GPT-2's pattern (:data:`SPLIT`), so that
no token crosses a word boundary; training repeatedly merges the most frequent adjacent pair of
ids into a new id. Encoding applies the learned merges by rank; decoding concatenates bytes.
"""
from __future__ import annotations

import re
import sysconfig
from collections import Counter, defaultdict
from pathlib import Path

# GPT-2's pre-tokenizer (the one of Hugging Face's ByteLevel), in the standard `re` module's
# terms: \p{L} is approximately [^\W\d_] and \p{N} approximately \d (they differ on numerals
# such as ² and Ⅻ, which the standard `re` counts as letters), and [^\s\p{L}\p{N}] is [^\s\w]
# or "_". They agree on the corpus here (the book checks the token ids against `tokenizers`).
SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+"""
                   r"""|\s+(?!\S)|\s+""")

# Packages whose files every CPython 3.10-3.13 has; sorted.
CODE_FILES = {
    "json": ["json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py",
             "json/tool.py"],
    "email": ["email/__init__.py", "email/_encoded_words.py", "email/_header_value_parser.py",
              "email/_parseaddr.py", "email/_policybase.py", "email/base64mime.py",
              "email/charset.py", "email/contentmanager.py", "email/encoders.py",
              "email/errors.py", "email/feedparser.py", "email/generator.py", "email/header.py",
              "email/headerregistry.py", "email/iterators.py", "email/message.py",
              "email/parser.py", "email/policy.py", "email/quoprimime.py", "email/utils.py"],
}


def prose_topics() -> dict[str, str]:
    """The language reference's topics, ``{name: text}``, sorted by name."""
    from pydoc_data.topics import topics
    return {name: topics[name] for name in sorted(topics)}


def prose() -> str:
    """All the topics, joined in sorted order (a blank line between two)."""
    return "\n\n".join(prose_topics().values())


def code_files(package: str = "json") -> dict[str, str]:
    """``{relative path: source}`` for one package of :data:`CODE_FILES`."""
    if package not in CODE_FILES:
        raise ValueError(f"unknown package {package!r}; choose one of {sorted(CODE_FILES)}")
    root = Path(sysconfig.get_paths()["stdlib"])
    out = {}
    for rel in CODE_FILES[package]:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: this Python's standard library is "
                                    "incomplete; use a CPython 3.10-3.13 installation")
        out[rel] = path.read_text(encoding="utf-8")
    return out


def code(package: str = "json") -> str:
    """One package's source files, joined in sorted order (a blank line between two)."""
    return "\n\n".join(code_files(package).values())


def split(text: str, held_out: float = 0.1) -> tuple[str, str]:
    """(training part, held-out part): the last ``held_out`` of the characters, cut at the
    first line break after the 90% mark (so no line is split)."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out is a fraction between 0 and 1, got {held_out}")
    cut = text.find("\n", int(len(text) * (1 - held_out)))
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut], text[cut:]


def pretokenize(text: str) -> list[str]:
    """The pre-tokens of GPT-2's pattern; they join back to ``text`` exactly."""
    return SPLIT.findall(text)


def merge(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, left to right, by ``new``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    """Adjacent pairs counted over pre-tokens with their counts (from scratch; a reference)."""
    counts = Counter()
    for ids, n in words.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


class BPE:
    """A byte-level BPE tokenizer: ids 0-255 are the bytes, id 256 + i the i-th merge."""

    def __init__(self, merges: list[tuple[int, int]] | None = None):
        self.merges: list[tuple[int, int]] = []
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.ranks: dict[tuple[int, int], int] = {}
        self._cache: dict[str, list[int]] = {}
        for pair in merges or []:
            self._add(pair)

    def _add(self, pair: tuple[int, int]) -> int:
        new = 256 + len(self.merges)
        if not (0 <= pair[0] < new and 0 <= pair[1] < new):
            raise ValueError(f"merge {pair} refers to an id that does not exist yet (< {new})")
        self.merges.append(pair)
        self.ranks[pair] = len(self.merges) - 1
        self.vocab[new] = self.vocab[pair[0]] + self.vocab[pair[1]]
        self._cache.clear()
        return new

    def __len__(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPE":
        """Learn ``vocab_size - 256`` merges from ``text``.

        Each step merges the pair with the highest count over all pre-tokens (ties: the larger
        pair of ids). Pair counts are kept up to date incrementally: a merge only touches the
        pre-tokens that contain its pair, so only their pairs are recounted.
        """
        if vocab_size < 256:
            raise ValueError(f"a byte-level vocabulary has at least 256 ids, got {vocab_size}")
        tok = cls()
        words = Counter(pretokenize(text))
        seqs = [list(w.encode("utf-8")) for w in words]
        freq = list(words.values())
        counts: Counter = Counter()
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for j, ids in enumerate(seqs):
            for pair in zip(ids, ids[1:]):
                counts[pair] += freq[j]
                where[pair].add(j)
        while len(tok) < vocab_size and counts:
            best = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
            new = tok._add(best)
            for j in list(where[best]):
                ids = seqs[j]
                for pair in zip(ids, ids[1:]):  # take the word's old pairs out ...
                    counts[pair] -= freq[j]
                    if counts[pair] == 0:
                        del counts[pair]
                    where[pair].discard(j)
                ids = seqs[j] = merge(ids, best, new)
                for pair in zip(ids, ids[1:]):  # ... and its new pairs in
                    counts[pair] += freq[j]
                    where[pair].add(j)
            where.pop(best, None)
        return tok

    def truncated(self, vocab_size: int) -> "BPE":
        """The tokenizer with the first ``vocab_size - 256`` merges: what training would have
        stopped at with that vocabulary size."""
        if not 256 <= vocab_size <= len(self):
            raise ValueError(f"vocab_size must lie in 256..{len(self)}, got {vocab_size}")
        return BPE(self.merges[:vocab_size - 256])

    def _encode_word(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        ids = list(word.encode("utf-8"))
        while len(ids) > 1:  # merge the pair of lowest rank present, until none is
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            ids = merge(ids, pair, 256 + self.ranks[pair])
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for word in pretokenize(text) for i in self._encode_word(word)]

    def decode(self, ids) -> str:
        """The text of ``ids``; a token sequence cut inside a UTF-8 character decodes with
        the replacement character there."""
        try:
            raw = b"".join(self.vocab[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"id {e.args[0]} is not in the vocabulary of {len(self)}") from None
        return raw.decode("utf-8", errors="replace")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (the one `tokenizers`' ByteLevel
    uses): printable Latin-1 bytes map to themselves, the others to chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def to_hf(tok: BPE):
    """The same merges as a Hugging Face ``tokenizers.Tokenizer`` (a BPE model, GPT-2's
    ByteLevel pre-tokenizer and decoder), with the same ids. Needs ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    b2u = bytes_to_unicode()

    def show(i: int) -> str:
        return "".join(b2u[b] for b in tok.vocab[i])

    vocab = {show(i): i for i in range(len(tok))}
    merges = [(show(a), show(b)) for a, b in tok.merges]
    hf = Tokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    return hf
