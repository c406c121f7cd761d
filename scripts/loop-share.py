#!/usr/bin/env python3
"""Share of generated texts that loop: a 3-word phrase occurring 3 or more times.

Reads `cai revise` output files (JSONL revision records) and prints, per file, the share of
looping texts among the initial answers, the critiques, the revisions and all of them, and
the mean number of words per text (a penalty that garbles text tends to shorten it).
Words are lower-cased runs of letters, digits and apostrophes; phrases are consecutive word
trigrams, counted with overlaps ("a b c a b c a b c" holds "a b c" three times).

    python3 scripts/loop-share.py runs/loops/*.jsonl

`scripts/loop-share.sh` makes the files: `cai revise` on the first 40 dev prompts with
the quickstart's settings, once per candidate sampling setting.
"""

import json
import re
import sys
from collections import Counter

WORD = re.compile(r"[a-z0-9']+")


def loops(text, n=3, times=3):
    """True when some n-word phrase occurs `times` or more times in `text`."""
    words = WORD.findall(text.lower())
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(c >= times for c in grams.values())


def texts(path):
    """(kind, text) of every generated text in a revision file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            yield "initial", r["initial"]
            for rnd in r["rounds"]:
                yield "critique", rnd["critique"]
                yield "revision", rnd["revision"]


def main(paths):
    kinds = ["initial", "critique", "revision"]
    print(f"{'file':40} " + " ".join(f"{k:>14}" for k in kinds + ["all"]) + "  words")
    for path in paths:
        hit, total = Counter(), Counter()
        words = 0
        for kind, text in texts(path):
            words += len(WORD.findall(text.lower()))
            for k in (kind, "all"):
                total[k] += 1
                hit[k] += loops(text)
        cells = [
            f"{hit[k]:>3}/{total[k]:<3} {100 * hit[k] / max(total[k], 1):5.1f}%"
            for k in kinds + ["all"]
        ]
        mean_words = words / max(total["all"], 1)
        print(f"{path:40} " + " ".join(f"{c:>14}" for c in cells) + f"  {mean_words:5.1f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
