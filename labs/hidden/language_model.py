"""Hidden cases of the lab "A language model from scratch" (lab id ``language_model``): edge
cases for the same questions.

Plain data only; labs/checks/language_model.py prepares, runs and grades them. Keep this file
out of the students' repositories (see book/instructors.md).
"""

_PARAGRAPH = ("The tokenizer turns text into integers. It starts from the bytes of the text and "
              "merges the pair of tokens that occurs most often, again and again; each merge "
              "adds one token to the vocabulary. The encoder replays the merges in the order "
              "they were learned.")

HIDDEN = {
    "q1": [
        {"name": "merge: aaaa", "function": "merge", "ids": [97, 97, 97, 97], "pair": [97, 97],
         "new_id": 256},
        {"name": "merge: five of a kind", "function": "merge", "ids": [7] * 5, "pair": [7, 7],
         "new_id": 260},
        {"name": "merge: a pair whose first half repeats", "function": "merge",
         "ids": [1, 1, 2, 1, 2, 2], "pair": [1, 2], "new_id": 300},
        {"name": "merge: an empty list", "function": "merge", "ids": [], "pair": [1, 2],
         "new_id": 256},
        {"name": "merge: one id", "function": "merge", "ids": [1], "pair": [1, 1], "new_id": 256},
        {"name": "encode: the empty text", "function": "encode", "text": "", "merges": [[97, 98]]},
        {"name": "encode: no merges (just the bytes)", "function": "encode",
         "text": "Grüße, 世界", "merges": []},
        {"name": "encode: learned order against frequency, overlapping pairs",
         "function": "encode", "text": "abbabab", "merges": [[98, 98], [97, 98]]},
        {"name": "encode: a four-byte character", "function": "encode", "text": "🙂 ok 🙂",
         "merges": [[240, 159], [153, 130], [256, 257], [32, 111]]},
        {"name": "encode: a chain of merges", "function": "encode", "text": "aaaaaaaaab",
         "merges": [[97, 97], [256, 256], [257, 257], [258, 97], [259, 98]]},
        {"name": "encode: merges trained on one text, another text encoded",
         "function": "encode", "train_on": _PARAGRAPH, "n_merges": 40,
         "text": "The encoder turns the tokens of a text into merges, in the learned order."},
    ],
    "q2": [
        {"name": "a single token (T=1)", "seed": 2, "B": 2, "H": 2, "T": 1, "D": 4},
        {"name": "large scores", "seed": 3, "B": 1, "H": 2, "T": 6, "D": 16, "scale": 8.0},
        {"name": "float64, T=33", "seed": 4, "B": 2, "H": 2, "T": 33, "D": 8,
         "dtype": "float64"},
        {"name": "D=1", "seed": 5, "B": 3, "H": 1, "T": 5, "D": 1},
    ],
    "q3": [
        {"name": "a cache that holds 4 tokens already, then 3 steps", "seed": 2, "B": 2, "D": 8,
         "H": 2, "prefix": 4, "steps": 3},
        {"name": "one step from an empty cache", "seed": 3, "B": 2, "D": 6, "H": 3, "steps": 1},
        {"name": "float64, 4 heads, 10 steps", "seed": 4, "B": 3, "D": 16, "H": 4, "steps": 10,
         "dtype": "float64"},
        {"name": "large scores, one head of 16", "seed": 5, "B": 1, "D": 16, "H": 1, "steps": 5,
         "scale": 4.0},
    ],
    "q4": [
        {"name": "filter: a tiny top_p keeps the most probable token", "function": "filter",
         "seed": 2, "B": 4, "V": 30, "top_p": 1e-6},
        {"name": "filter: top_p=0.5, batch of 5, 50 tokens", "function": "filter", "seed": 3,
         "B": 5, "V": 50, "top_p": 0.5, "scale": 3.0},
        {"name": "filter: all tokens tied", "function": "filter", "logits": [[0.5] * 6],
         "top_p": 0.4},
        {"name": "filter: one token holds more than top_p", "function": "filter",
         "logits": [[0.0, 10.0, 0.0, 1.0, 0.0]], "top_p": 0.9},
        {"name": "sample: a tiny top_p always draws the most probable token",
         "function": "sample", "seed": 4, "B": 1, "V": 10, "top_p": 1e-6, "samples": 500},
        {"name": "sample: top_p=1.0 draws from the whole softmax", "function": "sample",
         "seed": 5, "B": 1, "V": 8, "top_p": 1.0, "samples": 4000},
    ],
}
