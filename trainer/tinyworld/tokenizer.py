"""A CLIP BPE vocabulary built for the tiny world's captions.

CLIP's tokenizer is byte-level BPE: text is lower-cased, split into words, each
byte mapped to a printable unicode character, the word's last symbol marked with
``</w>``, and merges applied in rank order.  We keep that machinery (so
``transformers.CLIPTokenizer`` loads our files unchanged) and learn merges on the
domain's word list until every domain word is ONE token.  All 256 byte symbols
stay in the vocabulary, so text outside the domain still tokenizes (into
characters) instead of failing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ...lorad.fsutil import atomic_write_text

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77  # SD1.5's prompt length; the pipeline pads to tokenizer.model_max_length


def byte_symbols() -> list[str]:
    """The 256 byte -> printable-character table of byte-level BPE (GPT-2 / CLIP convention).

    Printable latin-1 bytes map to themselves; the rest are shifted to code points
    256, 257, ... in byte order, so no symbol is whitespace or a control character.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table, extra = [], 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def _symbols(word: str) -> tuple[str, ...]:
    table = byte_symbols()
    chars = [table[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1] + [chars[-1] + END_OF_WORD])


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on ``words`` (each counted once) until each is a single symbol.

    Ties break on the pair's text, so the result is deterministic.
    """
    segs = {w: _symbols(w) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for s in segs.values():
            counts.update(zip(s[:-1], s[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = tuple(out)


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` in CLIP's layout: bytes, bytes+``</w>``, merges, then BOS/EOS."""
    merges = learn_merges(words)
    tokens = byte_symbols()
    tokens = tokens + [t + END_OF_WORD for t in tokens]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: Path, words: list[str], model_max_length: int = MODEL_MAX_LENGTH) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the configs a ``CLIPTokenizer`` loads from."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    # The first line is a header that every CLIP merges reader skips.
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    return folder


def vocab_size(words: list[str]) -> int:
    return len(build_vocab(words)[0])
