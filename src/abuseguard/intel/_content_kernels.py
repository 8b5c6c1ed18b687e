"""Numba byte scanners behind prompt fingerprints (see ``content.py`` for the semantics).

Two kernels, each one pass over lower-cased UTF-8 plus passes over its token arrays:

``skeleton_hashes`` tokenizes the prompt, replaces variable tokens by mask tokens (fenced
code, URLs and e-mail addresses, quoted spans, long ASCII runs, numbers), masks the
variable parts of its structure ("header:" blocks, "label: value" lines, else every
paragraph, line or sentence but the one densest in instruction words), and hashes the
resulting token stream: a template hash of the whole sequence and a SimHash over
``shingle``-grams of it.

``marker_bits`` tokenizes text without masking and reports which marker phrases (token
sequences given as hashes) occur in it, as a bit set.

Tokens: runs of ASCII letters and digits (and ``_`` for the skeleton) and of 2-byte UTF-8
characters (Latin, Greek, Cyrillic, Arabic, Hebrew, ...) form words; every 3- or 4-byte
character (CJK, Thai, emoji, ...) is a token of its own, so scripts written without spaces
get word-like shingles; ASCII punctuation, whitespace, U+2000..U+2FFF (general punctuation,
symbols), U+3000..U+303F (CJK punctuation) and fullwidth punctuation separate tokens. A
token is hashed with FNV-1a 64 and mixed; sequences are chained with FNV and mixed. Python
helpers below compute the same hashes for marker phrases, word tables and mask tokens.

Helpers are inlined (``inline="always"``): a call that passes an array costs reference
counting, which made the scanner three times slower. ``_skeleton`` and ``_fingerprint_one``
are not: called once per text, they cost little as calls, and inlining them into both entry
points would double the compilation.

No call allocates: every array lives in a caller's workspace (one uint64 array of
``workspace_words(n)`` words for texts of up to n bytes), reused call after call; a text
too long for it gets a workspace of its own for that call. Kernels hold the GIL, so one
workspace serves every thread of a process.

Two entry points: ``_fingerprint_text`` (one text, the request path) and
``_fingerprint_texts`` (many texts packed in one buffer, one call for a whole batch: replay's
``ContentFingerprinter.prime``). Importing this module compiles nothing: ``compile_kernels``
compiles both for their one signature each (``cache=True``), about 12 s of CPU on a cold
cache, under 1 s to load from the cache. The guard calls it in a background thread
(``ContentFingerprinter(background=True)``), so no request waits for Numba.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from numba import njit

MAX_SHINGLE = 8
MAX_MARKERS = 192
MAX_PHRASE_TOKENS = 12  # the longest marker phrase, in tokens ("ステップバイステップ" has 10)
_WINDOW = 16  # the marker scanner's ring of recent tokens (a power of two >= the above)

# Mask codes: the skeleton replaces a masked span by one token with this code.
PH_VAR, PH_NUM, PH_QUOTE, PH_CODE, PH_URL, PH_LONG = 1, 2, 3, 4, 5, 6
MASK_NAMES = ("", "VAR", "NUM", "QUOTE", "CODE", "URL", "LONG")

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB

_U_FNV_OFFSET = np.uint64(_FNV_OFFSET)
_U_FNV_PRIME = np.uint64(_FNV_PRIME)
_U_MIX_1 = np.uint64(_MIX_1)
_U_MIX_2 = np.uint64(_MIX_2)
_U_ZERO = np.uint64(0)
_U_ONE = np.uint64(1)
# Byte v -> the word whose byte j is bit j of v (SimHash bit counting, eight lanes a word).
_SPREAD = np.array(
    [sum(((v >> j) & 1) << (8 * j) for j in range(8)) for v in range(256)], dtype=np.uint64
)

# Byte classes.
C_SPACE, C_PUNCT, C_WORD, C_WIDE = 0, 1, 2, 3
_QUOTE_SPAN = 400  # longest quoted span masked as one token, in bytes
_LONG_RUN = 25  # ASCII runs at least this long are identifiers, hashes or base64
_LABEL_MAX = 160  # a "label:" or "header:" colon lies within this many bytes of its line
_CONTINUATION_LABEL = 40  # a line with a colon this early starts a new label
_INSTRUCTION_DENSITY = 0.2  # share of instruction words that marks a fixed paragraph
MIN_TEMPLATE_WORDS = 4  # structural masks are kept only when this many literal words remain
_PLAIN, _HEADER, _LABEL, _SWALLOWED = 0, 1, 2, 3
# Token flags; F_INSTRUCTION and F_LABEL are also the flags of a ``word_table``.
F_LITERAL, F_INSTRUCTION, F_LABEL, F_SENTENCE = 1, 2, 4, 8
SKELETON, MARKERS = 1, 2  # what ``_fingerprint_text`` computes
# Workspace (uint64 words): scratch for the SimHash counters, the marker window and the
# markers' found flags (one byte each), then, for the skeleton of n bytes,
# _SKELETON_WORDS * (n + 2) words of token and line arrays.
_WINDOW_AT = 80  # after the SimHash counters
_FOUND_AT = _WINDOW_AT + _WINDOW
_SCRATCH_WORDS = _FOUND_AT + MAX_MARKERS // 8
_SKELETON_WORDS = 15
_RECORD_WORDS = 6  # a chat message: kind, role start, role end, text start, text end, model


def workspace_words(n_bytes: int, what: int = SKELETON | MARKERS) -> int:
    """Size in uint64 words of a workspace for a text, or a JSON body, of ``n_bytes``
    bytes: the body's areas (``_body_words``), then the scratch and the skeleton's arrays
    (a text needs less: its copy fits in the body's areas)."""
    return (
        _body_words(n_bytes)
        + _SCRATCH_WORDS
        + (_SKELETON_WORDS * (n_bytes + 2) if what & SKELETON else 0)
    )


def _body_words(n_bytes: int) -> int:
    """Words of a body's areas: three byte areas (decoded strings, the elicitation text,
    the context) and the message records."""
    return 3 * ((n_bytes + 15) // 8) + _RECORD_WORDS * (n_bytes // 8 + 8)


def _byte_classes(underscore_is_word: bool) -> np.ndarray:
    classes = np.zeros(256, dtype=np.uint8)
    for byte in range(256):
        char = chr(byte)
        if byte in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20):
            classes[byte] = C_SPACE
        elif byte < 0x80:
            word = char.isalnum() or (char == "_" and underscore_is_word)
            classes[byte] = C_WORD if word else C_PUNCT
        elif byte < 0xE0:
            classes[byte] = C_WORD  # continuation bytes and leads of 2-byte characters
        else:
            classes[byte] = C_WIDE
    return classes


SKELETON_CLASSES = _byte_classes(underscore_is_word=True)
MARKER_CLASSES = _byte_classes(underscore_is_word=False)


# ---------------------------------------------------------------------------------------
# Hash helpers in plain Python (used to build tables; identical to the kernel's arithmetic).


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX_1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX_2) & _MASK64
    return z ^ (z >> 31)


def chain64(items: list[int] | bytes) -> int:
    value = _FNV_OFFSET
    for item in items:
        value = ((value ^ item) * _FNV_PRIME) & _MASK64
    return value


def token_hash(token: bytes) -> int:
    return mix64(chain64(token))


def phrase_hash(tokens: list[bytes]) -> int:
    return mix64(chain64([token_hash(token) for token in tokens]))


def hash_table(hashes: list[int], size: int = 256) -> np.ndarray:
    """Open-addressing set of non-zero 64-bit hashes (linear probing, 0 = empty)."""
    if len(hashes) * 2 > size:
        raise ValueError(f"hash table of {size} slots is too small for {len(hashes)} items")
    table = np.zeros(size, dtype=np.uint64)
    for value in hashes:
        slot = value & (size - 1)
        while table[slot] != 0 and int(table[slot]) != value:
            slot = (slot + 1) & (size - 1)
        table[slot] = value
    return table


def word_table(flagged: dict[int, list[str]], size: int = 512) -> np.ndarray:
    """Flags of words, for the skeleton kernel: ``size`` keys then ``size`` flags (uint64)."""
    flags: dict[int, int] = {}
    for flag, words in flagged.items():
        for word in words:
            key = token_hash(word.lower().encode("utf-8"))
            flags[key] = flags.get(key, 0) | flag
    keys = hash_table(list(flags), size)
    values = np.zeros(size, dtype=np.uint64)
    for slot, key in enumerate(keys.tolist()):
        if key:
            values[slot] = flags[key]
    return np.concatenate([keys, values])


MASK_HASHES = np.array(
    [0, *(token_hash(name.encode()) for name in MASK_NAMES[1:])], dtype=np.uint64
)


# ---------------------------------------------------------------------------------------
# Kernel helpers.


@njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * _U_MIX_1
    z = (z ^ (z >> np.uint64(27))) * _U_MIX_2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _hash_bytes(text: np.ndarray, start: int, end: int) -> np.uint64:
    value = _U_FNV_OFFSET
    for j in range(start, end):
        value = (value ^ np.uint64(text[j])) * _U_FNV_PRIME
    return _mix(value)


@njit(cache=True, inline="always")
def _in_table(table: np.ndarray, value: np.uint64) -> bool:
    mask = table.shape[0] - 1
    slot = np.int64(value & np.uint64(mask))
    while table[slot] != _U_ZERO:
        if table[slot] == value:
            return True
        slot = (slot + 1) & mask
    return False


@njit(cache=True, inline="always")
def _wide_end(text: np.ndarray, i: int) -> int:
    """End of the multi-byte character starting at ``i``."""
    n = text.shape[0]
    i += 1
    while i < n and text[i] >= 0x80 and text[i] < 0xC0:
        i += 1
    return i


@njit(cache=True, inline="always")
def _is_wide_separator(text: np.ndarray, i: int) -> bool:
    """U+2000..U+2FFF, U+3000..U+303F and fullwidth ASCII punctuation separate tokens."""
    n = text.shape[0]
    lead = text[i]
    second = text[i + 1] if i + 1 < n else 0
    if lead == 0xE2 or (lead == 0xE3 and second == 0x80):
        return True
    if lead != 0xEF or i + 2 >= n or not (second == 0xBC or second == 0xBD):
        return False
    code = (0xFF00 if second == 0xBC else 0xFF40) + (text[i + 2] - 0x80)
    return bool(
        0xFF01 <= code <= 0xFF0F
        or 0xFF1A <= code <= 0xFF20
        or 0xFF3B <= code <= 0xFF40
        or 0xFF5B <= code <= 0xFF65
    )


@njit(cache=True, inline="always")
def _colon_width(text: np.ndarray, i: int) -> int:
    """Bytes of a colon (ASCII or fullwidth U+FF1A) at ``i``, else 0."""
    if text[i] == 0x3A:
        return 1
    if text[i] == 0xEF and i + 2 < text.shape[0] and text[i + 1] == 0xBC and text[i + 2] == 0x9A:
        return 3
    return 0


@njit(cache=True, inline="always")
def _find_byte(text: np.ndarray, start: int, limit: int, target: int) -> int:
    """Index of ``target`` in text[start:limit] before any newline, else -1."""
    for j in range(start, limit):
        if text[j] == target:
            return j
        if text[j] == 0x0A:
            return -1
    return -1


@njit(cache=True, inline="always")
def _quote_end(text: np.ndarray, i: int, classes: np.ndarray) -> int:
    """End of a quoted span opening at ``i`` (one line, 1..400 bytes inside), else -1."""
    n = text.shape[0]
    c = text[i]
    limit = min(n, i + 1 + _QUOTE_SPAN + 3)
    if c == 0x22 or c == 0x60:  # "..." and `...`
        close = _find_byte(text, i + 1, limit, c)
        return close + 1 if close > i + 1 else -1
    if c == 0x27:  # '...', not an apostrophe
        if i > 0 and classes[text[i - 1]] == C_WORD:
            return -1
        close = _find_byte(text, i + 1, limit, 0x27)
        if close <= i + 1:
            return -1
        if close + 1 < n and classes[text[close + 1]] == C_WORD:
            return -1
        return close + 1
    if c == 0xE2 and i + 2 < n and text[i + 1] == 0x80 and text[i + 2] == 0x9C:  # “...”
        j = i + 3
        while j + 2 < limit:
            if text[j] == 0x0A:
                return -1
            if text[j] == 0xE2 and text[j + 1] == 0x80 and text[j + 2] == 0x9D:
                return j + 3 if j > i + 3 else -1
            j += 1
        return -1
    if c == 0xC2 and i + 1 < n and text[i + 1] == 0xAB:  # «...»
        j = i + 2
        while j + 1 < limit:
            if text[j] == 0x0A:
                return -1
            if text[j] == 0xC2 and text[j + 1] == 0xBB:
                return j + 2 if j > i + 2 else -1
            j += 1
        return -1
    return -1


@njit(cache=True, inline="always")
def _is_url_start(text: np.ndarray, i: int) -> bool:
    """``http://``, ``https://`` or ``www.`` at ``i``."""
    n = text.shape[0]
    if i + 4 <= n and text[i] == 0x77 and text[i + 1] == 0x77 and text[i + 2] == 0x77:
        return bool(text[i + 3] == 0x2E)
    if not (i + 7 <= n and text[i] == 0x68 and text[i + 1] == 0x74 and text[i + 2] == 0x74):
        return False
    j = i + 4 if text[i + 3] == 0x70 else -1  # "http"
    if j < 0:
        return False
    if text[j] == 0x73:  # "https"
        j += 1
    return bool(j + 3 <= n and text[j] == 0x3A and text[j + 1] == 0x2F and text[j + 2] == 0x2F)


@njit(cache=True, inline="always")
def _ascii_spans(text: np.ndarray, code: np.ndarray, end: np.ndarray) -> None:
    """Runs of printable ASCII that are one mask token: URLs (maybe after an opening
    bracket), e-mail addresses, and runs of 25+ bytes (identifiers, hashes, base64).

    Fills (code, end), n + 1 entries each, indexed by the run's first byte; code 0 for
    other runs.
    """
    n = text.shape[0]
    code[:] = 0
    i = 0
    while i < n:
        if not (0x20 < text[i] < 0x7F):
            i += 1
            continue
        start = i
        at = -1
        email = False
        while i < n and 0x20 < text[i] < 0x7F:
            c = text[i]
            if c == 0x40 and at < 0 and i > start:
                at = i
            elif c == 0x2E and at > 0 and i > at + 1 and i + 1 < n:
                following = text[i + 1]
                if 0x61 <= following <= 0x7A or 0x30 <= following <= 0x39:
                    email = True
            i += 1
        j = start
        while j < i and j < start + 3 and (text[j] == 0x28 or text[j] == 0x5B or text[j] == 0x3C):
            j += 1
        if _is_url_start(text, j) or email:
            code[start] = PH_URL
        elif i - start >= _LONG_RUN:
            code[start] = PH_LONG
        end[start] = i


# ---------------------------------------------------------------------------------------
# Skeleton.


@njit(cache=True, inline="always")
def _word_flags(words: np.ndarray, value: np.uint64) -> int:
    """Flags of ``value`` in a ``word_table`` (keys, then flags), 0 when absent."""
    size = words.shape[0] // 2
    mask = size - 1
    slot = np.int64(value & np.uint64(mask))
    while words[slot] != _U_ZERO:
        if words[slot] == value:
            return int(np.int64(words[size + slot]))
        slot = (slot + 1) & mask
    return 0


@njit(cache=True, inline="always")
def _is_sentence_end(text: np.ndarray, i: int) -> bool:
    """A wide full stop, exclamation or question mark at ``i`` (U+3002, U+FF01, U+FF1F)."""
    if i + 2 >= text.shape[0]:
        return False
    lead, second, third = text[i], text[i + 1], text[i + 2]
    if lead == 0xE3:
        return bool(second == 0x80 and third == 0x82)
    return bool(lead == 0xEF and second == 0xBC and (third == 0x81 or third == 0x9F))


@njit(cache=True, inline="always")
def _names_a_field(tok_flags: np.ndarray, a: int, b: int) -> bool:
    """Does the last sentence of tokens a..b read as a field name or an instruction (or have
    many words)? "Think step by step. Solve for x:" is no label: "solve for x" is not one."""
    for t in range(a + 1, b):
        if tok_flags[t] & F_SENTENCE:
            a = t
    literals = 0
    for t in range(a, b):
        if tok_flags[t] & (F_INSTRUCTION | F_LABEL):
            return True
        literals += (tok_flags[t] & F_LITERAL) != 0
    return literals >= MIN_TEMPLATE_WORDS


@njit(cache=True, inline="always")
def _instructs(tok_flags: np.ndarray, a: int, b: int) -> bool:
    """Are at least ``_INSTRUCTION_DENSITY`` of the words in tokens a..b instruction words?"""
    literals = 0
    instructions = 0
    for t in range(a, b):
        literals += (tok_flags[t] & F_LITERAL) != 0
        instructions += (tok_flags[t] & F_INSTRUCTION) != 0
    return instructions > 0 and instructions >= _INSTRUCTION_DENSITY * literals


@njit(cache=True, inline="always")
def _push(
    out_hash: np.ndarray,
    out_start: np.ndarray,
    out_end: np.ndarray,
    nout: int,
    value: np.uint64,
    start: int,
    end: int,
) -> int:
    """Append a token to the output stream; a VAR right after a VAR is dropped."""
    if start == -PH_VAR and nout > 0 and out_start[nout - 1] == -PH_VAR:
        return nout
    out_hash[nout] = value
    out_start[nout] = start
    out_end[nout] = end
    return nout + 1


@njit(cache=True, inline="always")
def _workspace_for(ws: np.ndarray, n: int, what: int) -> np.ndarray:
    """``ws`` when it holds ``workspace_words(n, what)`` words, else a new workspace."""
    need = _SCRATCH_WORDS + (_SKELETON_WORDS * (n + 2) if what & SKELETON else 0)
    if ws.shape[0] >= need:
        return ws
    return np.empty(need, dtype=np.uint64)


@njit(cache=True)
def _skeleton(
    text: np.ndarray, classes: np.ndarray, words: np.ndarray, masks: np.ndarray, ws: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The chosen token stream: (hashes, starts, ends, count); mask tokens have start -code.

    Every array lives in ``ws`` (``workspace_words(len(text), SKELETON)`` words or more, see
    ``_workspace_for``), each with the length and dtype it would have if allocated apart
    (bool arrays are int8), so no request allocates; the returned arrays are views of it.
    """
    n = text.shape[0]
    cap = n + 2
    cap2 = 2 * cap
    base = _SCRATCH_WORDS
    tok_hash = ws[base : base + cap]
    out_hash_area = ws[base + cap : base + cap + cap2]
    base += 3 * cap
    seg_area = ws[base : base + 2 * cap2].view(np.int64)
    base += 2 * cap2
    i32 = ws[base : base + 7 * cap].view(np.int32)  # 14 * cap entries
    base += 7 * cap
    i8 = ws[base : base + cap].view(np.int8)  # 8 * cap entries
    tok_start = i32[0:cap]
    tok_end = i32[cap : 2 * cap]
    line_first = i32[2 * cap : 3 * cap]  # first token of each line
    line_first_colon = i32[3 * cap : 4 * cap]  # byte offset in line, -1 for none
    line_label_tok = i32[4 * cap : 5 * cap]  # tokens before a "label:" colon, or -1
    span_end = i32[5 * cap : 5 * cap + n + 1]
    tok_flags = i8[0:cap]  # F_LITERAL | F_INSTRUCTION | F_LABEL | F_SENTENCE
    line_blank = i8[cap : 2 * cap]
    line_header = i8[2 * cap : 3 * cap]
    span_code = i8[3 * cap : 3 * cap + n + 1]

    # Pass 1: tokens, mask tokens, and what each line looks like.
    _ascii_spans(text, span_code, span_end)
    ntok = 0
    nlines = 0
    line_start = 0
    blank = True
    first_colon = -1
    label_tok = -1
    colon_at_end = False  # the last non-blank thing in the line so far is a colon
    colon_end_offset = 0
    last_num_end = -2
    sentence = 0  # F_SENTENCE when a sentence ended since the last token
    line_first[0] = 0
    i = 0
    while i < n:
        c = text[i]
        cls = classes[c]
        start = i
        code = 0
        if cls == C_WORD:
            blank = False
            colon_at_end = False
            if span_code[i] != 0:
                code = span_code[i]
                i = span_end[i]
            else:
                digits = False
                value = _U_FNV_OFFSET  # the word's hash, computed as it is scanned
                while i < n:
                    byte = text[i]
                    if classes[byte] != C_WORD:
                        break
                    if 0x30 <= byte <= 0x39:
                        digits = True
                    value = (value ^ np.uint64(byte)) * _U_FNV_PRIME
                    i += 1
                if digits:
                    glued = start == last_num_end + 1 and (
                        text[start - 1] == 0x2E  # .
                        or text[start - 1] == 0x2C  # ,
                        or text[start - 1] == 0x2F  # /
                        or text[start - 1] == 0x3A  # :
                    )
                    last_num_end = i
                    if not glued:
                        tok_hash[ntok] = masks[PH_NUM]
                        tok_start[ntok] = -PH_NUM
                        tok_end[ntok] = 0
                        tok_flags[ntok] = sentence
                        sentence = 0
                        ntok += 1
                else:
                    value = _mix(value)
                    tok_hash[ntok] = value
                    tok_start[ntok] = start
                    tok_end[ntok] = i
                    tok_flags[ntok] = F_LITERAL | _word_flags(words, value) | sentence
                    sentence = 0
                    ntok += 1
                continue
        elif cls == C_SPACE:
            if c == 0x0A:
                line_blank[nlines] = blank
                line_first_colon[nlines] = first_colon
                line_label_tok[nlines] = label_tok
                line_header[nlines] = colon_at_end and colon_end_offset <= _LABEL_MAX
                nlines += 1
                line_first[nlines] = ntok
                line_start = i + 1
                blank = True
                first_colon = -1
                label_tok = -1
                colon_at_end = False
                sentence = 0
            i += 1
            continue
        else:
            blank = False
            if c == 0x60 and i + 2 < n and text[i + 1] == 0x60 and text[i + 2] == 0x60:
                j = i + 3
                while j + 2 < n and not (
                    text[j] == 0x60 and text[j + 1] == 0x60 and text[j + 2] == 0x60
                ):
                    j += 1
                i = j + 3 if j + 2 < n else n
                code = PH_CODE
            elif c == 0x22 or c == 0x27 or c == 0x60 or c == 0xE2 or c == 0xC2:
                end = _quote_end(text, i, classes)
                if end > 0:
                    i = end
                    code = PH_QUOTE
            if code == 0 and span_code[i] != 0:
                code = span_code[i]
                i = span_end[i]
        if code != 0:
            tok_hash[ntok] = masks[code]
            tok_start[ntok] = -code
            tok_end[ntok] = 0
            tok_flags[ntok] = sentence
            sentence = 0
            ntok += 1
            colon_at_end = False
            last_num_end = -2
            continue
        width = _colon_width(text, i)
        if width > 0:
            between_digits = (
                i > 0
                and i + width < n
                and 0x30 <= text[i - 1] <= 0x39
                and 0x30 <= text[i + width] <= 0x39
            )
            if not between_digits:
                offset = i - line_start
                if first_colon < 0:
                    first_colon = offset
                    j = i + width
                    spaced = j < n and (text[j] == 0x20 or text[j] == 0x09)
                    while j < n and (text[j] == 0x20 or text[j] == 0x09):
                        j += 1
                    if spaced and j < n and text[j] != 0x0A and 1 <= offset <= _LABEL_MAX:
                        label_tok = ntok - line_first[nlines]
                colon_at_end = True
                colon_end_offset = offset
            i += width
            continue
        colon_at_end = False
        if cls == C_PUNCT:
            # . ! ? followed by a space or the end close a sentence.
            if (c == 0x2E or c == 0x21 or c == 0x3F) and (
                i + 1 == n or classes[text[i + 1]] == C_SPACE
            ):
                sentence = F_SENTENCE
            i += 1
            continue
        i = _wide_end(text, i)
        if _is_sentence_end(text, start):
            sentence = F_SENTENCE
        if _is_wide_separator(text, start):
            continue
        value = _hash_bytes(text, start, i)
        tok_hash[ntok] = value
        tok_start[ntok] = start
        tok_end[ntok] = i
        tok_flags[ntok] = F_LITERAL | _word_flags(words, value) | sentence
        sentence = 0
        ntok += 1
    line_blank[nlines] = blank
    line_first_colon[nlines] = first_colon
    line_label_tok[nlines] = label_tok
    line_header[nlines] = False  # a header needs a following line
    nlines += 1
    line_first[nlines] = ntok

    # Pass 2: line roles. A header or label counts only when its words look like
    # instructions or a field name, or are many: "Solve for x:" inside a fill-in does not.
    role = i8[4 * cap : 4 * cap + nlines]
    role[:] = 0
    first_structure = nlines
    li = 0
    while li < nlines:
        if line_header[li]:
            j = li + 1
            while j < nlines and line_blank[j]:
                j += 1
            if j < nlines and _names_a_field(tok_flags, line_first[li], line_first[li + 1]):
                role[li] = _HEADER
                for k in range(li + 1, j):
                    role[k] = _SWALLOWED
                while (
                    j < nlines
                    and not line_blank[j]
                    and not _instructs(tok_flags, line_first[j], line_first[j + 1])
                ):
                    role[j] = _SWALLOWED
                    j += 1
                first_structure = min(first_structure, li)
                li = j
                continue
        label_end = line_first[li] + line_label_tok[li]
        if line_label_tok[li] >= 0 and _names_a_field(tok_flags, line_first[li], label_end):
            role[li] = _LABEL
            j = li + 1
            while (
                j < nlines
                and not line_blank[j]
                and not (1 <= line_first_colon[j] <= _CONTINUATION_LABEL)
                and not _instructs(tok_flags, line_first[j], line_first[j + 1])
            ):
                role[j] = _SWALLOWED
                j += 1
            first_structure = min(first_structure, li)
            li = j
            continue
        li += 1
    structured = first_structure < nlines

    # Pass 3: segments of plain text and which of them are kept.
    # With structure: runs of plain lines; those before the first header or label are a
    # preamble and kept, later ones only when dense in instruction words. Without: the
    # paragraphs, else the lines, else the sentences of the one line; only the densest kept.
    tok_seg = i32[6 * cap : 6 * cap + ntok + 1]
    tok_seg[:] = -1
    line_seg = i32[7 * cap : 7 * cap + nlines]
    line_seg[:] = -1
    seg_first_line = i32[8 * cap : 8 * cap + ntok + nlines + 1]
    seg_first_line[:] = 0
    nseg = 0
    paragraphs = 0
    previous = False
    for li in range(nlines):
        plain = role[li] == _PLAIN and not line_blank[li]
        if plain and not previous:
            seg_first_line[nseg] = li
            nseg += 1
        previous = plain
    paragraphs = nseg
    nonblank = 0
    for li in range(nlines):
        nonblank += not line_blank[li]
    by = 0  # 0 runs of lines, 1 lines, 2 sentences
    if not structured and paragraphs < 2:
        by = 1 if nonblank >= 2 else 2
    nseg = 0
    previous = False
    for li in range(nlines):
        plain = role[li] == _PLAIN and not line_blank[li]
        if plain and (by == 1 or not previous):
            seg_first_line[nseg] = li
            nseg += 1
        previous = plain
        if plain:
            line_seg[li] = nseg - 1
            for t in range(line_first[li], line_first[li + 1]):
                if by == 2 and t > line_first[li] and tok_flags[t] & F_SENTENCE:
                    seg_first_line[nseg] = li
                    nseg += 1
                tok_seg[t] = nseg - 1
    seg_words = seg_area[0 : nseg + 1]
    seg_words[:] = 0
    seg_instr = seg_area[cap2 : cap2 + nseg + 1]
    seg_instr[:] = 0
    for t in range(ntok):
        sg = tok_seg[t]
        if sg >= 0:
            seg_words[sg] += (tok_flags[t] & F_LITERAL) != 0
            seg_instr[sg] += (tok_flags[t] & F_INSTRUCTION) != 0
    keep = i8[5 * cap : 5 * cap + nseg + 1]
    keep[:] = 0
    masked = structured
    if structured:
        for sg in range(nseg):
            keep[sg] = seg_first_line[sg] < first_structure or (
                seg_instr[sg] > 0 and seg_instr[sg] >= _INSTRUCTION_DENSITY * seg_words[sg]
            )
    elif nseg >= 2:
        best = -1
        best_density = 0.0
        for sg in range(nseg):
            if seg_words[sg] > 0:
                density = seg_instr[sg] / seg_words[sg]
                if density > best_density:
                    best = sg
                    best_density = density
        if best >= 0:
            masked = True
            keep[best] = True
    if not masked:
        return tok_hash[:ntok], tok_start[:ntok], tok_end[:ntok], ntok

    # Pass 4: the skeleton.
    out_hash = out_hash_area[0 : ntok + nlines + 1]
    out_start = i32[10 * cap : 10 * cap + ntok + nlines + 1]
    out_end = i32[12 * cap : 12 * cap + ntok + nlines + 1]
    var = masks[PH_VAR]
    nout = 0
    literals = 0
    for li in range(nlines):
        a = line_first[li]
        b = line_first[li + 1]
        if role[li] == _HEADER or role[li] == _LABEL:
            if role[li] == _LABEL:
                b = a + line_label_tok[li]
            for t in range(a, b):
                nout = _push(
                    out_hash, out_start, out_end, nout, tok_hash[t], tok_start[t], tok_end[t]
                )
                literals += (tok_flags[t] & F_LITERAL) != 0
            nout = _push(out_hash, out_start, out_end, nout, var, -PH_VAR, 0)
        elif role[li] == _SWALLOWED:
            nout = _push(out_hash, out_start, out_end, nout, var, -PH_VAR, 0)
        elif not line_blank[li]:
            if a == b and not keep[line_seg[li]]:  # a line of punctuation only
                nout = _push(out_hash, out_start, out_end, nout, var, -PH_VAR, 0)
            for t in range(a, b):
                if keep[tok_seg[t]]:
                    nout = _push(
                        out_hash, out_start, out_end, nout, tok_hash[t], tok_start[t], tok_end[t]
                    )
                    literals += (tok_flags[t] & F_LITERAL) != 0
                else:
                    nout = _push(out_hash, out_start, out_end, nout, var, -PH_VAR, 0)
    if literals >= MIN_TEMPLATE_WORDS:
        return out_hash, out_start, out_end, nout
    return tok_hash[:ntok], tok_start[:ntok], tok_end[:ntok], ntok


@njit(cache=True)
def _stream_hashes(
    hashes: np.ndarray, count: int, shingle: int, ones: np.ndarray
) -> tuple[int, int]:
    """(simhash, template hash) of a token-hash stream; (0, 0) when it is empty. ``ones``
    is scratch space for 80 int64 counters (16 for the lanes, then 64)."""
    if count == 0:
        return 0, 0
    ones[:] = 0
    template = _U_FNV_OFFSET
    for t in range(count):
        template = (template ^ hashes[t]) * _U_FNV_PRIME
    width = shingle if count >= shingle else count
    features = count - width + 1
    # Bit counts eight at a time: _SPREAD[v] puts bit j of the byte v into byte j of a
    # word, so lanes[k] holds, in byte j, the count of bit 8k + j; lanes are emptied into
    # ``ones`` before a byte can overflow.
    lanes = ones[0:8].view(np.uint64)  # (``ones`` was zeroed above)
    pending = 0
    for t in range(features):
        feature = _U_FNV_OFFSET
        for j in range(t, t + width):
            feature = (feature ^ hashes[j]) * _U_FNV_PRIME
        feature = _mix(feature)
        for k in range(8):
            lanes[k] += _SPREAD[np.int64((feature >> np.uint64(8 * k)) & np.uint64(0xFF))]
        pending += 1
        if pending == 255 or t == features - 1:
            for k in range(8):
                lane = lanes[k]
                for j in range(8):
                    ones[16 + 8 * k + j] += np.int64((lane >> np.uint64(8 * j)) & np.uint64(0xFF))
                lanes[k] = _U_ZERO
            pending = 0
    simhash = _U_ZERO
    for b in range(64):
        if 2 * ones[16 + b] > features:
            simhash |= _U_ONE << np.uint64(b)
    template = _mix(template)
    if template == _U_ZERO:
        template = _U_ONE
    return int(np.int64(simhash)), int(np.int64(template))


# One signature per hot kernel, over read-only bytes (``np.frombuffer`` of ``bytes``): each
# extra signature is seconds of compilation on a cold cache. The Python wrappers below
# convert anything else.
_RO = "Array(uint8, 1, 'C', readonly=True)"


# Only for docs and tests: compiled on first use, never on the request path.
@njit(cache=True)
def _skeleton_spans(
    text: np.ndarray, classes: np.ndarray, words: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ws = _workspace_for(np.empty(0, dtype=np.uint64), text.shape[0], SKELETON)
    _, starts, ends, count = _skeleton(text, classes, words, masks, ws)
    return starts[:count].copy(), ends[:count].copy()


# ---------------------------------------------------------------------------------------
# Marker phrases.


@njit(cache=True, inline="always")
def _find_markers(
    text: np.ndarray,
    classes: np.ndarray,
    fold: np.ndarray,
    last_tokens: np.ndarray,
    phrase_keys: np.ndarray,
    phrase_index: np.ndarray,
    length_mask: int,
    window: np.ndarray,
    found: np.ndarray,
) -> None:
    """Set found[m] to 1 for every marker phrase m that occurs in ``text``.

    Tokens as the module docstring says, with Latin-1 accents folded inside words ("é" is
    "e", "ü" is "u") and U+0451 read as U+0435 (Cyrillic yo as ie), so a phrase matches
    with or without its accents.
    At a token that ends some phrase (``last_tokens``), the hashes of the last L tokens,
    for every phrase length L present (``length_mask``), are looked up in the phrase table
    (``phrase_keys`` -> ``phrase_index``, 1-based): a few probes a token, whatever the
    number of phrases."""
    n = text.shape[0]
    window[:] = 0  # the last tokens, a ring of _WINDOW
    found[:] = 0
    ring = _WINDOW - 1
    slots = phrase_keys.shape[0] - 1
    count = 0
    i = 0
    while i < n:
        c = text[i]
        cls = classes[c]
        start = i
        value = _U_FNV_OFFSET
        if cls == C_WORD:
            while i < n:  # the token's hash, computed as it is scanned
                byte = text[i]
                if classes[byte] != C_WORD:
                    break
                if byte == 0xC3 and i + 1 < n and 0x80 <= text[i + 1] < 0xC0:
                    folded = fold[text[i + 1] - 0x80]
                    if folded != 0:
                        value = (value ^ np.uint64(folded)) * _U_FNV_PRIME
                        i += 2
                        continue
                elif byte == 0xD1 and i + 1 < n and text[i + 1] == 0x91:  # U+0451 -> U+0435
                    value = (value ^ np.uint64(0xD0)) * _U_FNV_PRIME
                    value = (value ^ np.uint64(0xB5)) * _U_FNV_PRIME
                    i += 2
                    continue
                value = (value ^ np.uint64(byte)) * _U_FNV_PRIME
                i += 1
        elif cls == C_WIDE:
            i = _wide_end(text, i)
            if _is_wide_separator(text, start):
                continue
        elif c == 0x3C:  # a <tag> is one token
            j = i + 1
            if j < n and text[j] == 0x2F:
                j += 1
            while j < n and j < i + 24 and 0x61 <= text[j] <= 0x7A:
                j += 1
            if j < n and j > i + 1 and text[j] == 0x3E:
                i = j + 1
            else:
                i += 1
                continue
        else:
            i += 1
            continue
        value = _mix(value) if cls == C_WORD else _hash_bytes(text, start, i)
        window[count & ring] = value
        count += 1
        if not _in_table(last_tokens, value):
            continue
        top = count if count < MAX_PHRASE_TOKENS else MAX_PHRASE_TOKENS
        for length in range(1, top + 1):
            if not (length_mask >> length) & 1:
                continue
            phrase = _U_FNV_OFFSET
            for j in range(count - length, count):
                phrase = (phrase ^ window[j & ring]) * _U_FNV_PRIME
            phrase = _mix(phrase)
            slot = np.int64(phrase & np.uint64(slots))
            while phrase_keys[slot] != _U_ZERO:
                if phrase_keys[slot] == phrase:
                    found[np.int64(phrase_index[slot]) - 1] = 1
                    break
                slot = (slot + 1) & slots


# ---------------------------------------------------------------------------------------
# The request kernel: skeleton hashes and marker strength in one call.

_N_MASKS = len(MASK_NAMES)
_HEADER_WORDS = 5


@njit(cache=True)
def _fingerprint_one(
    classes: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
    shingle: int,
    what: int,
    text: np.ndarray,
    start: int,
    end: int,
    ws: np.ndarray,
) -> tuple[int, int, int, int, float, int]:
    """The body of ``_fingerprint_text`` (which see), shared with ``_fingerprint_texts``."""
    n_words = np.int64(tables[0])
    n_last = np.int64(tables[1])
    n_markers = np.int64(tables[2])
    n_slots = np.int64(tables[3])
    length_mask = int(tables[4])
    at = np.int64(_HEADER_WORDS)
    words = tables[at : at + n_words]
    at += n_words
    masks = tables[at : at + _N_MASKS]
    at += _N_MASKS
    last_tokens = tables[at : at + n_last]
    at += n_last
    phrase_keys = tables[at : at + n_slots]
    phrase_index = tables[at + n_slots : at + 2 * n_slots]
    simhash = 0
    template = 0
    count = 0
    if what & SKELETON:
        ws = _workspace_for(ws, end - start, what)
        hashes, _, _, count = _skeleton(text[start:end], classes[:256], words, masks, ws)
        simhash, template = _stream_hashes(hashes, count, shingle, ws[0:80].view(np.int64))
    bits = _U_ZERO
    strength = 0.0
    phrase = 0
    if what & MARKERS:
        ws = _workspace_for(ws, 0, MARKERS)
        window = ws[_WINDOW_AT : _WINDOW_AT + _WINDOW]
        found = ws[_FOUND_AT:_SCRATCH_WORDS].view(np.uint8)
        _find_markers(
            text,
            classes[256:512],
            classes[512:576],
            last_tokens,
            phrase_keys,
            phrase_index,
            length_mask,
            window,
            found,
        )
        remaining = 1.0
        heaviest = 0.0
        for m in range(n_markers):
            if found[m]:
                if m < 64:
                    bits |= _U_ONE << np.uint64(m)
                remaining *= 1.0 - weights[m]
                if weights[m] > heaviest:
                    heaviest = weights[m]
                    phrase = m + 1
        strength = min(1.0, max(0.0, 1.0 - remaining))
    return simhash, template, count, int(np.int64(bits)), strength, phrase


@njit(cache=True, inline="always")
def _text_area(ws: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A writable copy area of n bytes at the start of ``ws`` and the workspace after it
    (a new workspace when ``ws`` is too small). Every entry point hands ``_fingerprint_one``
    text in such an area, so it is compiled for one array type only."""
    words = (n + 15) // 8
    if ws.shape[0] < words + _SCRATCH_WORDS:
        ws = np.empty(words + _SCRATCH_WORDS, dtype=np.uint64)
    return ws[:words].view(np.uint8)[:n], ws[words:]


# ---------------------------------------------------------------------------------------
# Chat bodies read in the kernel: the common request (an OpenAI or Anthropic chat body of
# ASCII JSON) without a JSON parse into Python objects. What this reader does not take
# for certain it leaves to the Python extraction (status _BODY_OTHER), which reads every
# body alike; where it answers, it answers what the Python extraction would.

_BODY_OTHER, _BODY_PROMPT, _BODY_NO_PROMPT = 0, 1, 2
_KIND_SYSTEM, _KIND_USER, _KIND_OTHER = 0, 1, 2
_MAX_DEPTH = 60
_KEY_MESSAGES = np.frombuffer(b"messages", dtype=np.uint8)
_KEY_SYSTEM = np.frombuffer(b"system", dtype=np.uint8)
_KEY_ROLE = np.frombuffer(b"role", dtype=np.uint8)
_KEY_CONTENT = np.frombuffer(b"content", dtype=np.uint8)
_KEY_PARTS = np.frombuffer(b"parts", dtype=np.uint8)
_ROLE_USER = np.frombuffer(b"user", dtype=np.uint8)
_ROLE_SYSTEM = np.frombuffer(b"system", dtype=np.uint8)
_ROLE_DEVELOPER = np.frombuffer(b"developer", dtype=np.uint8)
_ROLE_MODEL = np.frombuffer(b"model", dtype=np.uint8)
_ROLE_ASSISTANT = np.frombuffer(b"assistant", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)
_NULL = np.frombuffer(b"null", dtype=np.uint8)


@njit(cache=True, inline="always")
def _json_space(body: np.ndarray, i: int, n: int) -> int:
    while i < n and (body[i] == 0x20 or body[i] == 0x0A or body[i] == 0x0D or body[i] == 0x09):
        i += 1
    return i


@njit(cache=True, inline="always")
def _json_after_item(body: np.ndarray, i: int, n: int, close: int) -> tuple[int, int]:
    """After a member or an element: (where the next one starts, 1) past a comma, (past
    ``close``, 0) at the end of its object or array, (i, -1) on anything else."""
    i = _json_space(body, i, n)
    if i < n and body[i] == 0x2C:
        return _json_space(body, i + 1, n), 1
    if i < n and body[i] == close:
        return i + 1, 0
    return i, -1


@njit(cache=True, inline="always")
def _hex(c: int) -> int:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x57
    if 0x41 <= c <= 0x46:
        return c - 0x37
    return -1


@njit(cache=True)
def _json_string(body: np.ndarray, i: int, n: int, out: np.ndarray, at: int) -> tuple[int, int]:
    """The JSON string opening at body[i]: (index after it, end of its decoded bytes in
    ``out`` from ``at``); index -1 for what this reader leaves to Python (invalid JSON,
    non-ASCII bytes or escapes). ``at`` < 0 checks without decoding. An escape-free
    string is reported with end -2 - (its length) when not decoded."""
    i += 1
    while i < n:
        c = body[i]
        if c == 0x22:
            return i + 1, at
        if c < 0x20 or c >= 0x80:
            return -1, at
        if c == 0x5C:
            if i + 1 >= n:
                return -1, at
            e = body[i + 1]
            if e == 0x75:  # a \u escape (four hex digits): ASCII code points only
                if i + 5 >= n:
                    return -1, at
                code = 0
                for j in range(i + 2, i + 6):
                    h = _hex(body[j])
                    if h < 0:
                        return -1, at
                    code = code * 16 + h
                if code >= 0x80:
                    return -1, at
                c = code
                i += 6
            else:
                if e == 0x22 or e == 0x5C or e == 0x2F:
                    c = e
                elif e == 0x62:
                    c = 0x08
                elif e == 0x66:
                    c = 0x0C
                elif e == 0x6E:
                    c = 0x0A
                elif e == 0x72:
                    c = 0x0D
                elif e == 0x74:
                    c = 0x09
                else:
                    return -1, at
                i += 2
        else:
            i += 1
        if at >= 0:
            out[at] = c
            at += 1
    return -1, at


@njit(cache=True, inline="always")
def _raw_key_is(body: np.ndarray, start: int, end: int, key: np.ndarray) -> bool:
    """Is body[start + 1:end - 1] (a string without escapes) ``key``?"""
    if end - start - 2 != key.shape[0]:
        return False
    for j in range(key.shape[0]):  # noqa: SIM110 (a loop compiles; all() of a generator, not)
        if body[start + 1 + j] != key[j]:
            return False
    return True


@njit(cache=True, inline="always")
def _bytes_are(data: np.ndarray, start: int, end: int, word: np.ndarray) -> bool:
    if end - start != word.shape[0]:
        return False
    for j in range(word.shape[0]):  # noqa: SIM110 (as above)
        if data[start + j] != word[j]:
            return False
    return True


@njit(cache=True)
def _json_number_or_literal(body: np.ndarray, i: int, n: int) -> int:
    """Index after a JSON number, true, false or null at body[i]; -1 otherwise."""
    c = body[i]
    if c == 0x74 or c == 0x66 or c == 0x6E:  # true false null
        word = _TRUE if c == 0x74 else (_FALSE if c == 0x66 else _NULL)
        size: int = word.shape[0]
        if i + size > n:
            return -1
        for j in range(size):
            if body[i + j] != word[j]:
                return -1
        return i + size
    if c == 0x2D:
        i += 1
    if i >= n:
        return -1
    if body[i] == 0x30:
        i += 1
    elif 0x31 <= body[i] <= 0x39:
        while i < n and 0x30 <= body[i] <= 0x39:
            i += 1
    else:
        return -1
    if i < n and body[i] == 0x2E:
        i += 1
        if i >= n or not 0x30 <= body[i] <= 0x39:
            return -1
        while i < n and 0x30 <= body[i] <= 0x39:
            i += 1
    if i < n and (body[i] == 0x65 or body[i] == 0x45):
        i += 1
        if i < n and (body[i] == 0x2B or body[i] == 0x2D):
            i += 1
        if i >= n or not 0x30 <= body[i] <= 0x39:
            return -1
        while i < n and 0x30 <= body[i] <= 0x39:
            i += 1
    return i


@njit(cache=True)
def _json_skip(body: np.ndarray, i: int, n: int, scratch: np.ndarray) -> int:
    """Index after the JSON value starting at body[i] (no space before it), checked but
    not kept; -1 for what this reader leaves to Python. ``scratch``: any writable bytes
    (``_json_string`` is compiled for one pair of array types)."""
    stack = 0  # one bit per open container: 1 an object, 0 an array
    depth = 0
    while True:
        i = _json_space(body, i, n)
        if i >= n:
            return -1
        c = body[i]
        if c == 0x7B or c == 0x5B:
            close = 0x7D if c == 0x7B else 0x5D
            i = _json_space(body, i + 1, n)
            if i < n and body[i] == close:
                i += 1
            else:
                if depth >= _MAX_DEPTH:
                    return -1
                depth += 1
                stack = (stack << 1) | (1 if c == 0x7B else 0)
                if c == 0x7B:  # the first key
                    if i >= n or body[i] != 0x22:
                        return -1
                    i, _ = _json_string(body, i, n, scratch, -1)
                    if i < 0:
                        return -1
                    i = _json_space(body, i, n)
                    if i >= n or body[i] != 0x3A:
                        return -1
                    i += 1
                continue
        elif c == 0x22:
            i, _ = _json_string(body, i, n, scratch, -1)
        else:
            i = _json_number_or_literal(body, i, n)
        if i < 0:
            return -1
        # After a value: close what ends here, then the next member or element.
        while True:
            if depth == 0:
                return i
            i = _json_space(body, i, n)
            if i >= n:
                return -1
            c = body[i]
            in_object = stack & 1
            if c == (0x7D if in_object else 0x5D):
                i += 1
                stack >>= 1
                depth -= 1
                continue
            if c != 0x2C:
                return -1
            i = _json_space(body, i + 1, n)
            if in_object:
                if i >= n or body[i] != 0x22:
                    return -1
                i, _ = _json_string(body, i, n, scratch, -1)
                if i < 0:
                    return -1
                i = _json_space(body, i, n)
                if i >= n or body[i] != 0x3A:
                    return -1
                i += 1
            break


@njit(cache=True)
def _read_chat(body: np.ndarray, raw: np.ndarray, records: np.ndarray) -> tuple[int, int, int, int]:
    """Read a chat body: (messages, system start, system end, status) where status is 1
    for a body of the shape this reader takes, 0 to leave it to Python. The strings
    are decoded into ``raw``; ``records`` gets, per message with text, its kind, role and
    text spans in ``raw`` and whether its role is "model"."""
    n = len(body)
    i = _json_space(body, 0, n)
    if i >= n or body[i] != 0x7B:
        return 0, 0, 0, 0
    i = _json_space(body, i + 1, n)
    at = 0
    messages = 0
    seen_messages = False
    system_start = 0
    system_end = 0
    seen_system = False
    max_records = records.shape[0] // _RECORD_WORDS
    if i < n and body[i] == 0x7D:
        return 0, 0, 0, 0  # {}: no messages
    while True:
        if i >= n or body[i] != 0x22:
            return 0, 0, 0, 0
        key_start = i
        i, _ = _json_string(body, i, n, raw, -1)
        if i < 0:
            return 0, 0, 0, 0
        for j in range(key_start + 1, i - 1):
            if body[j] == 0x5C:
                return 0, 0, 0, 0  # an escaped key: left to Python
        is_messages = _raw_key_is(body, key_start, i, _KEY_MESSAGES)
        is_system = _raw_key_is(body, key_start, i, _KEY_SYSTEM)
        i = _json_space(body, i, n)
        if i >= n or body[i] != 0x3A:
            return 0, 0, 0, 0
        i = _json_space(body, i + 1, n)
        if i >= n:
            return 0, 0, 0, 0
        if is_system:
            if seen_system:
                return 0, 0, 0, 0
            seen_system = True
            if body[i] == 0x22:
                system_start = at
                i, at = _json_string(body, i, n, raw, at)
                system_end = at
            elif _json_number_or_literal(body, i, n) == i + 4 and body[i] == 0x6E:  # null
                i += 4
            else:
                return 0, 0, 0, 0
        elif is_messages:
            if seen_messages or body[i] != 0x5B:
                return 0, 0, 0, 0
            seen_messages = True
            i = _json_space(body, i + 1, n)
            if i < n and body[i] == 0x5D:
                i += 1
            else:
                while True:  # the messages
                    if i >= n or body[i] != 0x7B:
                        return 0, 0, 0, 0
                    i = _json_space(body, i + 1, n)
                    role_start = -1
                    role_end = -1
                    text_start = -1
                    text_end = -1
                    seen_content = False
                    if i < n and body[i] == 0x7D:
                        return 0, 0, 0, 0  # {}: read whole by Python
                    while True:  # the members of one message
                        if i >= n or body[i] != 0x22:
                            return 0, 0, 0, 0
                        key_start = i
                        i, _ = _json_string(body, i, n, raw, -1)
                        if i < 0:
                            return 0, 0, 0, 0
                        for j in range(key_start + 1, i - 1):
                            if body[j] == 0x5C:
                                return 0, 0, 0, 0
                        is_role = _raw_key_is(body, key_start, i, _KEY_ROLE)
                        is_content = _raw_key_is(body, key_start, i, _KEY_CONTENT)
                        if _raw_key_is(body, key_start, i, _KEY_PARTS):
                            return 0, 0, 0, 0
                        i = _json_space(body, i, n)
                        if i >= n or body[i] != 0x3A:
                            return 0, 0, 0, 0
                        i = _json_space(body, i + 1, n)
                        if i >= n:
                            return 0, 0, 0, 0
                        if is_role:
                            if role_start >= 0 or body[i] != 0x22:
                                return 0, 0, 0, 0
                            role_start = at
                            i, at = _json_string(body, i, n, raw, at)
                            role_end = at
                        elif is_content:
                            if seen_content:
                                return 0, 0, 0, 0
                            seen_content = True
                            if body[i] == 0x22:
                                text_start = at
                                i, at = _json_string(body, i, n, raw, at)
                                text_end = at
                            elif _json_number_or_literal(body, i, n) == i + 4 and body[i] == 0x6E:
                                i += 4
                            else:
                                return 0, 0, 0, 0
                        else:
                            i = _json_skip(body, i, n, raw)
                        if i < 0:
                            return 0, 0, 0, 0
                        i, more = _json_after_item(body, i, n, 0x7D)
                        if more > 0:
                            continue
                        if more < 0:
                            return 0, 0, 0, 0
                        break
                    if role_start < 0 and not seen_content:
                        return 0, 0, 0, 0  # a bare block: read by Python
                    if text_end > text_start:  # a message without text is dropped
                        if messages >= max_records:
                            return 0, 0, 0, 0
                        kind = _KIND_USER
                        model = 0
                        if role_start >= 0:
                            if _bytes_are(raw, role_start, role_end, _ROLE_SYSTEM) or _bytes_are(
                                raw, role_start, role_end, _ROLE_DEVELOPER
                            ):
                                kind = _KIND_SYSTEM
                            elif not _bytes_are(raw, role_start, role_end, _ROLE_USER):
                                kind = _KIND_OTHER
                                model = _bytes_are(raw, role_start, role_end, _ROLE_MODEL)
                        record = records[messages * _RECORD_WORDS : (messages + 1) * _RECORD_WORDS]
                        record[0] = kind
                        record[1] = role_start
                        record[2] = role_end
                        record[3] = text_start
                        record[4] = text_end
                        record[5] = model
                        messages += 1
                    i, more = _json_after_item(body, i, n, 0x5D)
                    if more > 0:
                        continue
                    if more < 0:
                        return 0, 0, 0, 0
                    break
        else:
            i = _json_skip(body, i, n, raw)
        if i < 0:
            return 0, 0, 0, 0
        i, more = _json_after_item(body, i, n, 0x7D)
        if more > 0:
            continue
        if more < 0:
            return 0, 0, 0, 0
        break
    if _json_space(body, i, n) != n or not seen_messages:
        return 0, 0, 0, 0
    return messages, system_start, system_end, 1


@njit(cache=True, inline="always")
def _put_lowered(raw: np.ndarray, start: int, end: int, out: np.ndarray, at: int) -> int:
    for j in range(start, end):
        c = raw[j]
        out[at] = c + 0x20 if 0x41 <= c <= 0x5A else c
        at += 1
    return at


@njit(cache=True, inline="always")
def _put_context(
    raw: np.ndarray, start: int, end: int, out: np.ndarray, at: int, digits: bool
) -> tuple[int, bool]:
    """Append raw[start:end] to the context with every run of digits as one "0"."""
    for j in range(start, end):
        c = raw[j]
        if 0x30 <= c <= 0x39:
            if not digits:
                out[at] = 0x30
                at += 1
            digits = True
        else:
            out[at] = c
            at += 1
            digits = False
    return at, digits


@njit(cache=True)
def _chat_texts(
    raw: np.ndarray,
    records: np.ndarray,
    messages: int,
    system_start: int,
    system_end: int,
    text: np.ndarray,
    context: np.ndarray,
) -> tuple[int, int, int, int]:
    """The Python extraction's prompt of a chat read by ``_read_chat`` (see
    ``content._from_turns``): the lowered pieces joined by newlines into ``text``, the
    template's span in it, and the context (digits normalised) in ``context``.
    Returns (text length, template start, template end, context length)."""
    n_system = 1 if system_end > system_start else 0
    n_texts = 0
    last_user = -1
    for m in range(messages):
        kind = records[m * _RECORD_WORDS]
        if kind == _KIND_SYSTEM:
            n_system += 1
        else:
            if kind == _KIND_USER:
                last_user = n_texts
            n_texts += 1
    at = 0
    template_start = 0
    template_end = 0
    piece = 0
    # The system texts: the top-level system first, then system and developer messages.
    if system_end > system_start:
        at = _put_lowered(raw, system_start, system_end, text, at)
        template_end = at
        piece += 1
    for m in range(messages):
        record = records[m * _RECORD_WORDS : (m + 1) * _RECORD_WORDS]
        if record[0] == _KIND_SYSTEM:
            if piece > 0:
                text[at] = 0x0A
                at += 1
            template_start = at
            at = _put_lowered(raw, record[3], record[4], text, at)
            template_end = at
            piece += 1
    t = 0
    for m in range(messages):
        record = records[m * _RECORD_WORDS : (m + 1) * _RECORD_WORDS]
        if record[0] == _KIND_SYSTEM:
            continue
        if last_user < 0 or t == last_user or t > last_user or record[0] == _KIND_USER:
            if piece > 0:
                text[at] = 0x0A
                at += 1
            start = at
            at = _put_lowered(raw, record[3], record[4], text, at)
            if last_user < 0 or t == last_user:
                template_start = start
                template_end = at
            piece += 1
        t += 1
    # The context: none without a user turn; the system texts alone with one turn; else
    # the system texts and "role: text" of every turn but the last user's.
    c = 0
    if last_user >= 0:
        digits = False
        first = True
        if system_end > system_start:
            c, digits = _put_context(raw, system_start, system_end, context, c, digits)
            first = False
        for m in range(messages):
            record = records[m * _RECORD_WORDS : (m + 1) * _RECORD_WORDS]
            if record[0] == _KIND_SYSTEM:
                if not first:
                    context[c] = 0x0A
                    c += 1
                    digits = False
                c, digits = _put_context(raw, record[3], record[4], context, c, digits)
                first = False
        if n_texts > 1:
            t = 0
            for m in range(messages):
                record = records[m * _RECORD_WORDS : (m + 1) * _RECORD_WORDS]
                if record[0] == _KIND_SYSTEM:
                    continue
                if t != last_user:
                    if not first:
                        context[c] = 0x0A
                        c += 1
                        digits = False
                    first = False
                    if record[1] < 0:  # no role: a user turn
                        for j in range(_ROLE_USER.shape[0]):
                            context[c] = _ROLE_USER[j]
                            c += 1
                        digits = False
                    elif record[5]:  # "model" is the assistant
                        for j in range(_ROLE_ASSISTANT.shape[0]):
                            context[c] = _ROLE_ASSISTANT[j]
                            c += 1
                        digits = False
                    else:
                        c, digits = _put_context(raw, record[1], record[2], context, c, digits)
                    context[c] = 0x3A
                    context[c + 1] = 0x20
                    c += 2
                    digits = False
                    c, digits = _put_context(raw, record[3], record[4], context, c, digits)
                t += 1
    return at, template_start, template_end, c


# The body is taken as ``bytes`` itself: no ``np.frombuffer`` per request.
_BODY_SIGNATURE = (
    "Tuple((int64, int64, int64, int64, int64, int64, float64))"
    "(uint8[::1], uint64[::1], float64[::1], int64, int64, uint64[::1],"
    " Bytes(uint8, 1, 'C', readonly=True))"
)


# Compiled by ``compile_kernels`` for ``_BODY_SIGNATURE`` only, not at import.
@njit(cache=True)
def _fingerprint_body(
    classes: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
    shingle: int,
    what: int,
    ws: np.ndarray,
    body: np.ndarray,
) -> tuple[int, int, int, int, int, int, float]:
    """A chat body (OpenAI chat completions or Anthropic messages, ASCII JSON) read and
    fingerprinted in one call: (status, simhash, template hash, skeleton tokens, heaviest
    marker, context length, strength). Status 0: a body this reader leaves to the Python
    extraction (any other shape, non-ASCII bytes or escapes, JSON that is not valid, a
    workspace too small), the rest meaningless; 2: a chat without prompt text; 1: the
    fingerprint, and the context (digits normalised) in the context area of ``ws``
    (``body_context_start``), of the length given."""
    n = len(body)
    area = (n + 15) // 8
    n_records = n // 8 + 8
    body_words = 3 * area + _RECORD_WORDS * n_records
    if ws.shape[0] < body_words + _SCRATCH_WORDS:
        return _BODY_OTHER, 0, 0, 0, 0, 0, 0.0
    raw = ws[0:area].view(np.uint8)
    text = ws[area : 2 * area].view(np.uint8)
    context = ws[2 * area : 3 * area].view(np.uint8)
    records = ws[3 * area : body_words].view(np.int64)
    messages, system_start, system_end, status = _read_chat(body, raw, records)
    if status == 0:
        return _BODY_OTHER, 0, 0, 0, 0, 0, 0.0
    length, start, end, context_length = _chat_texts(
        raw, records, messages, system_start, system_end, text, context
    )
    word = False
    for j in range(length):
        c = text[j]
        if 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39:
            word = True
            break
    if not word:
        return _BODY_NO_PROMPT, 0, 0, 0, 0, 0, 0.0
    simhash, template, count, _, strength, phrase = _fingerprint_one(
        classes, tables, weights, shingle, what, text[:length], start, end, ws[body_words:]
    )
    return _BODY_PROMPT, simhash, template, count, phrase, context_length, strength


def body_context_start(n_bytes: int) -> int:
    """Where, in bytes from the workspace's start, ``_fingerprint_body`` leaves the context
    of a body of ``n_bytes`` bytes."""
    return 16 * ((n_bytes + 15) // 8)


_TEXT_SIGNATURE = (
    "Tuple((int64, int64, int64, int64, float64, int64))"
    f"(uint8[::1], uint64[::1], float64[::1], int64, int64, uint64[::1], {_RO}, int64, int64)"
)
_TEXTS_SIGNATURE = (
    "void(uint8[::1], uint64[::1], float64[::1], int64, int64, uint64[::1],"
    f" {_RO}, int64[::1], int64[::1], float64[::1])"
)


# Compiled by ``compile_kernels`` for ``_TEXT_SIGNATURE`` only, not at import.
@njit(cache=True)
def _fingerprint_text(
    classes: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
    shingle: int,
    what: int,
    ws: np.ndarray,
    text: np.ndarray,
    start: int,
    end: int,
) -> tuple[int, int, int, int, float, int]:
    """(simhash, template hash, skeleton tokens) of text[start:end] when ``what`` has
    SKELETON; (marker bits, strength, heaviest marker) of the whole text when it has
    MARKERS. The marker bits are those of the first 64 markers; the heaviest marker is the
    1-based index of the found marker of the largest weight (the first of equals), 0 for
    none.

    One call instead of two, and few arguments: each array argument costs about 35 ns to
    unbox. ``classes`` is the skeleton's then the markers' byte classes; ``tables`` is laid
    out by ``pack_tables``; ``weights`` are the markers' weights. ``ws`` is the workspace
    (``workspace_words``); a smaller one (even empty) makes the call allocate its own.
    Kernels hold the GIL (no ``nogil``), so one workspace can serve every thread.
    """
    buffer, rest = _text_area(ws, text.shape[0])
    buffer[:] = text
    return _fingerprint_one(classes, tables, weights, shingle, what, buffer, start, end, rest)


# Compiled by ``compile_kernels`` for ``_TEXTS_SIGNATURE`` only, not at import.
@njit(cache=True)
def _fingerprint_texts(
    classes: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
    shingle: int,
    what: int,
    ws: np.ndarray,
    text: np.ndarray,
    bounds: np.ndarray,
    out: np.ndarray,
    strengths: np.ndarray,
) -> None:
    """``_fingerprint_text`` of many texts packed in one buffer, in one call.

    Text k is text[bounds[3k]:bounds[3k + 3]] (so ``bounds`` holds 3 * count + 1 offsets,
    each text ending where the next starts), its template is
    text[bounds[3k + 1]:bounds[3k + 2]]. Results go to out[k], out[count + k],
    out[2 * count + k] and out[3 * count + k] (simhash, template hash, skeleton tokens,
    marker bits, heaviest marker: one column each) and strengths[k].
    """
    count = (bounds.shape[0] - 1) // 3
    for k in range(count):
        offset = bounds[3 * k]
        buffer, rest = _text_area(ws, bounds[3 * k + 3] - offset)
        buffer[:] = text[offset : bounds[3 * k + 3]]
        result = _fingerprint_one(
            classes,
            tables,
            weights,
            shingle,
            what,
            buffer,
            bounds[3 * k + 1] - offset,
            bounds[3 * k + 2] - offset,
            rest,
        )
        out[k] = result[0]
        out[count + k] = result[1]
        out[2 * count + k] = result[2]
        out[3 * count + k] = result[3]
        out[4 * count + k] = result[5]
        strengths[k] = result[4]


# ---------------------------------------------------------------------------------------
# Python entry points.


def readonly_bytes(data: np.ndarray | bytes) -> np.ndarray:
    """``data`` as the contiguous read-only uint8 array the kernels are compiled for."""
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=np.uint8)
    if data.dtype == np.uint8 and not data.flags.writeable and data.flags.c_contiguous:
        return data
    return np.frombuffer(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), dtype=np.uint8)


def compiled_entry(dispatcher: Any) -> Any:
    """The compiled function behind a dispatcher with exactly one compiled signature.

    Calling it skips the dispatcher's per-call type resolution; any other state of the
    dispatcher falls back to the dispatcher itself (see
    ``abuseguard.engine.engine._compiled_entry``).
    """
    signatures = getattr(dispatcher, "signatures", [])
    overloads = getattr(dispatcher, "overloads", {})
    if len(signatures) == 1 and signatures[0] in overloads:
        entry = getattr(overloads[signatures[0]], "entry_point", None)
        if callable(entry):
            return entry
    return dispatcher


# The compiled entry points; None until ``compile_kernels`` has run.
_RUN_TEXT: Any = None
_RUN_TEXTS: Any = None
_COMPILE_LOCK = threading.Lock()
_RUN_BODY: Any = None
_ENTRY_POINTS: tuple[tuple[Any, str], ...] = (
    (_fingerprint_text, _TEXT_SIGNATURE),
    (_fingerprint_texts, _TEXTS_SIGNATURE),
    (_fingerprint_body, _BODY_SIGNATURE),
)


def kernels_ready() -> bool:
    """Whether ``compile_kernels`` has compiled (or loaded) both entry points."""
    return _RUN_TEXTS is not None


def compile_kernels() -> None:
    """Compile both entry points for their one signature, or load them from Numba's
    on-disk cache (``NUMBA_CACHE_DIR``); then no other signature is ever compiled.
    Idempotent and thread-safe: concurrent callers wait for the one compilation."""
    global _RUN_TEXT, _RUN_TEXTS, _RUN_BODY
    if _RUN_TEXTS is not None:
        return
    with _COMPILE_LOCK:
        if _RUN_TEXTS is not None:
            return
        for dispatcher, signature in _ENTRY_POINTS:
            dispatcher.compile(signature)
            dispatcher.disable_compile()
        _RUN_TEXT = compiled_entry(_fingerprint_text)
        _RUN_BODY = compiled_entry(_fingerprint_body)
        _RUN_TEXTS = compiled_entry(_fingerprint_texts)


def kernels_cached() -> bool:
    """Whether Numba's on-disk cache holds both entry points for this machine, so
    ``compile_kernels`` would only load them (well under a second) instead of compiling.
    Reads Numba's cache index through its internals; any surprise there answers False."""
    if _RUN_TEXTS is not None:
        return True
    try:
        for dispatcher, signature in _ENTRY_POINTS:
            cache = dispatcher._cache
            key = cache._index_key(signature, dispatcher.targetctx.codegen())
            if key not in cache._cache_file._load_index():
                return False
    except Exception:  # numba internals changed: assume a compilation is needed
        return False
    return True


def _run_text() -> Any:
    compile_kernels()
    return _RUN_TEXT


def _run_texts() -> Any:
    compile_kernels()
    return _RUN_TEXTS


def _run_body() -> Any:
    compile_kernels()
    return _RUN_BODY


def _accent_folds() -> np.ndarray:
    """For U+00C0..U+00FF (UTF-8 C3 80..C3 BF): the lower-case ASCII letter the marker
    scanner reads instead ("é" -> "e"), 0 to keep the character ("æ", "ß", the
    multiplication sign)."""
    folds = np.zeros(64, dtype=np.uint8)
    for offset in range(64):
        base = unicodedata.normalize("NFKD", chr(0xC0 + offset))[:1].lower()
        if base.isascii() and base.isalpha():
            folds[offset] = ord(base)
    return folds


ACCENT_FOLDS = _accent_folds()


def fold_accents(text: str) -> str:
    """``text`` with the accents the marker scanner folds, folded (for building tables)."""
    out = []
    for char in text:
        code = ord(char)
        if 0xC0 <= code <= 0xFF and ACCENT_FOLDS[code - 0xC0]:
            out.append(chr(ACCENT_FOLDS[code - 0xC0]))
        elif char == "\u0451":  # Cyrillic yo, read as ie
            out.append("\u0435")
        else:
            out.append(char)
    return "".join(out)


# The skeleton's byte classes, the markers' byte classes, then the markers' accent folds.
BOTH_CLASSES = np.concatenate([SKELETON_CLASSES, MARKER_CLASSES, ACCENT_FOLDS])
_NO_TABLE = np.zeros(0, dtype=np.uint64)
_NO_WEIGHTS = np.zeros(0, dtype=np.float64)
_NO_WORKSPACE = np.zeros(0, dtype=np.uint64)  # calls given it allocate their own

# kernel(text, start, end)
#   -> (simhash, template hash, tokens, marker bits, strength, heaviest marker)
TextKernel = Callable[[np.ndarray, int, int], tuple[int, int, int, int, float, int]]
# kernel(body) -> (status, simhash, template hash, tokens, heaviest marker, context length,
#   strength): ``_fingerprint_body``
BodyKernel = Callable[[bytes], tuple[int, int, int, int, int, int, float]]
# kernel(text, bounds, out, strengths): ``_fingerprint_texts``
TextsKernel = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def pack_tables(
    words: np.ndarray,
    last_tokens: np.ndarray = _NO_TABLE,
    phrase_keys: np.ndarray = _NO_TABLE,
    phrase_index: np.ndarray = _NO_TABLE,
    n_markers: int = 0,
    length_mask: int = 0,
) -> np.ndarray:
    """The ``tables`` argument of ``_fingerprint_text``: sizes (words, last tokens,
    markers, phrase slots, the mask of phrase lengths), then the word table, the mask
    hashes, the markers' last-token set, and the phrase table (keys, then 1-based marker
    indices)."""
    header = [len(words), len(last_tokens), n_markers, len(phrase_keys), length_mask]
    parts = [header, words, MASK_HASHES, last_tokens, phrase_keys, phrase_index]
    return np.concatenate([np.asarray(part, dtype=np.uint64) for part in parts])


def _kernel_arguments(
    words: np.ndarray,
    markers: MarkerSet,
    weights: Sequence[float],
    shingle: int,
    what: int,
    workspace: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray]:
    if len(weights) != len(markers):
        raise ValueError(f"{len(markers)} markers need as many weights, got {len(weights)}")
    if workspace is None:
        workspace = np.empty(0, dtype=np.uint64)
    elif workspace.dtype != np.uint64 or not workspace.flags.c_contiguous:
        raise ValueError("a workspace is a contiguous uint64 array")
    tables = markers.tables(words)
    return (BOTH_CLASSES, tables, np.array(weights, dtype=np.float64), shingle, what, workspace)


def text_kernel(
    words: np.ndarray,
    markers: MarkerSet,
    weights: Sequence[float],
    shingle: int,
    what: int,
    workspace: np.ndarray | None = None,
) -> TextKernel:
    """``kernel(text, start, end)`` over lower-cased UTF-8 ``text`` (read-only uint8):
    the skeleton of text[start:end] (``what`` & SKELETON) with ``words`` and ``shingle``,
    the ``markers`` of the whole text with their ``weights`` (``what`` & MARKERS).

    ``workspace`` (uint64, ``workspace_words(n)`` words) is reused by every call on texts
    of up to n bytes; a longer text, or no workspace, makes the call allocate its own.
    Calls hold the GIL, so kernels may share one workspace across threads."""
    arguments = _kernel_arguments(words, markers, weights, shingle, what, workspace)
    return partial(_run_text(), *arguments)


def texts_kernel(
    words: np.ndarray,
    markers: MarkerSet,
    weights: Sequence[float],
    shingle: int,
    what: int,
    workspace: np.ndarray | None = None,
) -> TextsKernel:
    """``kernel(text, bounds, out, strengths)``: ``text_kernel``'s results for every text
    packed into ``text`` (read-only uint8), in one call. Text k is
    text[bounds[3k]:bounds[3k + 3]] and its template text[bounds[3k + 1]:bounds[3k + 2]]
    (``bounds``: int64, 3 * count + 1 offsets); out (int64, 4 * count) receives the
    columns simhash, template hash, tokens and marker bits (out[k], out[count + k], ...),
    strengths[k] (float64) the strength."""
    arguments = _kernel_arguments(words, markers, weights, shingle, what, workspace)
    return partial(_run_texts(), *arguments)


def body_kernel(
    words: np.ndarray,
    markers: MarkerSet,
    weights: Sequence[float],
    shingle: int,
    what: int,
    workspace: np.ndarray,
) -> BodyKernel:
    """``kernel(body)`` over a raw request body (``bytes``): ``_fingerprint_body``
    with ``text_kernel``'s settings; ``workspace`` (``workspace_words(n)`` words) bounds
    the bodies it reads to n bytes (a longer one is answered status 0)."""
    arguments = _kernel_arguments(words, markers, weights, shingle, what, workspace)
    return partial(_run_body(), *arguments)


def skeleton_hashes(
    text: np.ndarray | bytes, shingle: int, words: np.ndarray
) -> tuple[int, int, int]:
    """(simhash, template hash, tokens) of the skeleton of lower-cased UTF-8 ``text``.

    ``shingle`` is in 1..MAX_SHINGLE; ``words`` is a ``word_table`` flagging instruction
    words (F_INSTRUCTION) and field names (F_LABEL). Both hashes are signed int64 values,
    0 for a text without tokens.
    """
    array = readonly_bytes(text)
    result = _run_text()(
        BOTH_CLASSES,
        pack_tables(words),
        _NO_WEIGHTS,
        shingle,
        SKELETON,
        _NO_WORKSPACE,
        array,
        0,
        len(array),
    )
    return result[0], result[1], result[2]


def skeleton_text(text: bytes, words: np.ndarray) -> str:
    """The skeleton of lower-cased UTF-8 ``text`` as readable text (for docs and tests)."""
    starts, ends = _skeleton_spans(
        np.frombuffer(text, dtype=np.uint8), SKELETON_CLASSES, words, MASK_HASHES
    )
    parts = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if start < 0:
            parts.append(MASK_NAMES[-start])
        else:
            parts.append(text[start:end].decode("utf-8", "replace"))
    return " ".join(parts)


def marker_tokens(phrase: str) -> list[bytes]:
    """Tokens of a marker phrase as ``_find_markers`` sees them (accents folded)."""
    tokens: list[bytes] = []
    data = fold_accents(phrase.lower()).encode("utf-8")
    i = 0
    n = len(data)
    while i < n:
        if data[i] == 0x3C:
            j = data.find(b">", i)
            tokens.append(data[i : j + 1])
            i = j + 1
        elif MARKER_CLASSES[data[i]] == C_WORD:
            j = i
            while j < n and MARKER_CLASSES[data[j]] == C_WORD:
                j += 1
            tokens.append(data[i:j])
            i = j
        elif MARKER_CLASSES[data[i]] == C_WIDE:
            j = i + 1
            while j < n and 0x80 <= data[j] < 0xC0:
                j += 1
            array = np.frombuffer(data, dtype=np.uint8)
            if not _is_wide_separator.py_func(array, i):
                tokens.append(data[i:j])
            i = j
        else:
            i += 1
    return tokens


class MarkerSet:
    """Compiled lookup tables for ``_find_markers`` (at most ``MAX_MARKERS`` phrases, of
    at most ``MAX_PHRASE_TOKENS`` tokens, no two alike once accents are folded)."""

    __slots__ = ("_count", "_keys", "_last", "_length_mask", "_positions", "_tables")

    def __init__(self, phrases: list[str]) -> None:
        if not 0 < len(phrases) <= MAX_MARKERS:
            raise ValueError(f"between 1 and {MAX_MARKERS} marker phrases, got {len(phrases)}")
        tokens = [marker_tokens(phrase) for phrase in phrases]
        for phrase, items in zip(phrases, tokens, strict=True):
            if not 0 < len(items) <= MAX_PHRASE_TOKENS:
                raise ValueError(f"marker {phrase!r} must have 1..{MAX_PHRASE_TOKENS} tokens")
        hashes = [phrase_hash(items) for items in tokens]
        seen: dict[int, str] = {}
        for phrase, value in zip(phrases, hashes, strict=True):
            if value in seen:
                raise ValueError(f"markers {seen[value]!r} and {phrase!r} are the same phrase")
            seen[value] = phrase
        size = 512
        while size < 2 * len(hashes):
            size *= 2
        self._keys = hash_table(hashes, size)
        slot_of = {int(key): slot for slot, key in enumerate(self._keys.tolist()) if key}
        self._positions = np.zeros(size, dtype=np.uint64)
        for m, value in enumerate(hashes):
            self._positions[slot_of[value]] = m + 1
        self._length_mask = sum({1 << len(items) for items in tokens})
        self._count = len(phrases)
        self._last = hash_table(sorted({token_hash(items[-1]) for items in tokens}), 512)
        self._tables = self.tables(_NO_TABLE)

    def __len__(self) -> int:
        return self._count

    def tables(self, words: np.ndarray) -> np.ndarray:
        """``pack_tables`` of ``words`` and these markers."""
        return pack_tables(
            words, self._last, self._keys, self._positions, self._count, self._length_mask
        )

    def bits(self, text: np.ndarray | bytes) -> int:
        """Bit m is set when phrase m occurs in lower-cased UTF-8 ``text``."""
        weights = np.zeros(self._count, dtype=np.float64)
        array = readonly_bytes(text)
        workspace = np.zeros(workspace_words(len(array), MARKERS), dtype=np.uint64)
        _run_text()(BOTH_CLASSES, self._tables, weights, 1, MARKERS, workspace, array, 0, 0)
        # The flags are in the scratch after the text's copy (see ``_text_area``).
        at = (len(array) + 15) // 8 + _FOUND_AT
        found = workspace[at : at + MAX_MARKERS // 8].view(np.uint8)[: self._count]
        return sum(1 << m for m in np.flatnonzero(found).tolist())
