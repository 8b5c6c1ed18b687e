"""Numba byte scanners behind prompt fingerprints (see ``content.py`` for the semantics).

Two kernels, each one pass (plus a pass over its token arrays) over lower-cased UTF-8:

``skeleton_hashes`` tokenizes the prompt, masks variable tokens (fenced code, URLs and
e-mail addresses, quoted spans, long ASCII runs, numbers), masks the variable parts of its
line structure ("header:" blocks, "label: value" lines, else every paragraph or line but the
one densest in instruction words), and hashes the resulting token stream: a template hash
of the whole sequence and a SimHash over ``shingle``-grams of it.

``marker_bits`` tokenizes text without masking and reports which marker phrases (token
sequences given as hashes) occur in it, as a bit set.

Tokens: runs of ASCII letters and digits (and ``_`` for the skeleton) and of 2-byte UTF-8
characters (Latin, Greek, Cyrillic, Arabic, Hebrew, ...) form words; every 3- or 4-byte
character (CJK, Thai, emoji, ...) is a token of its own, so scripts written without spaces
get word-like shingles; ASCII punctuation, whitespace, U+2000..U+2FFF (general punctuation,
symbols), U+3000..U+303F (CJK punctuation) and fullwidth punctuation separate tokens. A
token is hashed with FNV-1a 64 and mixed; sequences are chained with FNV and mixed. Python
helpers below compute the same hashes for marker phrases, instruction words and
placeholders.

Helpers are inlined (``inline="always"``): a call that passes an array costs reference
counting, which made the scanner three times slower.

All kernels are compiled eagerly (explicit signatures, ``cache=True``) when this module is
imported, so no request waits for Numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MAX_SHINGLE = 8
MAX_MARKERS = 64

# Placeholder codes: the skeleton replaces a masked span by one token with this code.
PH_VAR, PH_NUM, PH_QUOTE, PH_CODE, PH_URL, PH_LONG = 1, 2, 3, 4, 5, 6
PLACEHOLDER_NAMES = ("", "VAR", "NUM", "QUOTE", "CODE", "URL", "LONG")

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

# Byte classes.
C_SPACE, C_PUNCT, C_WORD, C_WIDE = 0, 1, 2, 3
_QUOTE_SPAN = 400  # longest quoted span masked as one token, in bytes
_LONG_RUN = 25  # ASCII runs at least this long are identifiers, hashes or base64
_LABEL_MAX = 160  # a "label:" or "header:" colon lies within this many bytes of its line
_CONTINUATION_LABEL = 40  # a line with a colon this early starts a new label
_INSTRUCTION_DENSITY = 0.2  # share of instruction words that marks a fixed paragraph
MIN_TEMPLATE_WORDS = 4  # structural masks are kept only when this many literal words remain
_PLAIN, _HEADER, _LABEL, _SWALLOWED = 0, 1, 2, 3


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


PLACEHOLDER_HASHES = np.array(
    [0, *(token_hash(name.encode()) for name in PLACEHOLDER_NAMES[1:])], dtype=np.uint64
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
def _ascii_spans(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of printable ASCII that are one placeholder: URLs (maybe after an opening
    bracket), e-mail addresses, and runs of 25+ bytes (identifiers, hashes, base64).

    Returns (code, end) arrays indexed by the run's first byte; code 0 for other runs.
    """
    n = text.shape[0]
    code = np.zeros(n + 1, dtype=np.int8)
    end = np.empty(n + 1, dtype=np.int32)
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
    return code, end


# ---------------------------------------------------------------------------------------
# Skeleton.


@njit(cache=True)
def _skeleton(
    text: np.ndarray, classes: np.ndarray, instruction: np.ndarray, placeholders: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The chosen token stream: (hashes, starts, ends, count); placeholders have start -code."""
    n = text.shape[0]
    cap = n + 2
    tok_hash = np.empty(cap, dtype=np.uint64)
    tok_start = np.empty(cap, dtype=np.int32)
    tok_end = np.empty(cap, dtype=np.int32)
    tok_literal = np.empty(cap, dtype=np.bool_)
    tok_instr = np.empty(cap, dtype=np.bool_)
    line_first = np.empty(cap, dtype=np.int32)  # first token of each line
    line_blank = np.empty(cap, dtype=np.bool_)
    line_first_colon = np.empty(cap, dtype=np.int32)  # byte offset in line, -1 for none
    line_label_tok = np.empty(cap, dtype=np.int32)  # tokens before a "label:" colon, or -1
    line_header = np.empty(cap, dtype=np.bool_)

    span_code, span_end = _ascii_spans(text)
    ntok = 0
    nlines = 0
    line_start = 0
    blank = True
    first_colon = -1
    label_tok = -1
    colon_at_end = False  # the last non-blank thing in the line so far is a colon
    colon_end_offset = 0
    last_num_end = -2
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
                while i < n and classes[text[i]] == C_WORD:
                    if 0x30 <= text[i] <= 0x39:
                        digits = True
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
                        tok_hash[ntok] = placeholders[PH_NUM]
                        tok_start[ntok] = -PH_NUM
                        tok_end[ntok] = 0
                        tok_literal[ntok] = False
                        tok_instr[ntok] = False
                        ntok += 1
                else:
                    value = _hash_bytes(text, start, i)
                    tok_hash[ntok] = value
                    tok_start[ntok] = start
                    tok_end[ntok] = i
                    tok_literal[ntok] = True
                    tok_instr[ntok] = _in_table(instruction, value)
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
            tok_hash[ntok] = placeholders[code]
            tok_start[ntok] = -code
            tok_end[ntok] = 0
            tok_literal[ntok] = False
            tok_instr[ntok] = False
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
            i += 1
            continue
        i = _wide_end(text, i)
        if _is_wide_separator(text, start):
            continue
        value = _hash_bytes(text, start, i)
        tok_hash[ntok] = value
        tok_start[ntok] = start
        tok_end[ntok] = i
        tok_literal[ntok] = True
        tok_instr[ntok] = _in_table(instruction, value)
        ntok += 1
    line_blank[nlines] = blank
    line_first_colon[nlines] = first_colon
    line_label_tok[nlines] = label_tok
    line_header[nlines] = False  # a header needs a following line
    nlines += 1
    line_first[nlines] = ntok

    # Line roles: plain, a "header:" line, a "label: value" line, or swallowed by either.
    role = np.zeros(nlines, dtype=np.int8)
    masked = False
    li = 0
    while li < nlines:
        if line_header[li]:
            j = li + 1
            while j < nlines and line_blank[j]:
                j += 1
            if j < nlines:
                role[li] = _HEADER
                masked = True
                for k in range(li + 1, j):
                    role[k] = _SWALLOWED
                while j < nlines and not line_blank[j]:
                    role[j] = _SWALLOWED
                    j += 1
                li = j
                continue
        if line_label_tok[li] >= 0:
            role[li] = _LABEL
            masked = True
            j = li + 1
            while (
                j < nlines
                and not line_blank[j]
                and not (1 <= line_first_colon[j] <= _CONTINUATION_LABEL)
            ):
                role[j] = _SWALLOWED
                j += 1
            li = j
            continue
        li += 1

    # Segments: with structure, the runs of plain lines between blank or structured lines;
    # without, paragraphs when there are two or more, else non-blank lines.
    seg_of = np.full(nlines, -1, dtype=np.int32)
    nseg = 0
    previous = False  # the previous line belongs to an open segment
    for li in range(nlines):
        plain = role[li] == _PLAIN and not line_blank[li]
        if plain:
            if not previous:
                nseg += 1
            seg_of[li] = nseg - 1
        previous = plain
    if not masked and nseg < 2:
        nseg = 0
        for li in range(nlines):
            if not line_blank[li]:
                seg_of[li] = nseg
                nseg += 1
    seg_words = np.zeros(nseg + 1, dtype=np.int64)
    seg_instr = np.zeros(nseg + 1, dtype=np.int64)
    for li in range(nlines):
        sg = seg_of[li]
        if sg >= 0:
            for t in range(line_first[li], line_first[li + 1]):
                seg_words[sg] += tok_literal[t]
                seg_instr[sg] += tok_instr[t]
    keep = np.zeros(nseg + 1, dtype=np.bool_)
    if masked:
        for sg in range(nseg):
            keep[sg] = seg_instr[sg] >= _INSTRUCTION_DENSITY * seg_words[sg] and seg_instr[sg] > 0
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

    out_hash = np.empty(ntok + nlines + 1, dtype=np.uint64)
    out_start = np.empty(ntok + nlines + 1, dtype=np.int32)
    out_end = np.empty(ntok + nlines + 1, dtype=np.int32)
    nout = 0
    literals = 0
    for li in range(nlines):
        a = line_first[li]
        b = line_first[li + 1]
        if role[li] == _HEADER or role[li] == _LABEL:
            if role[li] == _LABEL:
                b = a + line_label_tok[li]
            for t in range(a, b):
                out_hash[nout] = tok_hash[t]
                out_start[nout] = tok_start[t]
                out_end[nout] = tok_end[t]
                literals += tok_literal[t]
                nout += 1
            variable = True
        elif seg_of[li] >= 0 and keep[seg_of[li]]:
            for t in range(a, b):
                out_hash[nout] = tok_hash[t]
                out_start[nout] = tok_start[t]
                out_end[nout] = tok_end[t]
                literals += tok_literal[t]
                nout += 1
            variable = False
        else:
            variable = role[li] == _SWALLOWED or not line_blank[li]
        if variable and (nout == 0 or out_start[nout - 1] != -PH_VAR):
            out_hash[nout] = placeholders[PH_VAR]
            out_start[nout] = -PH_VAR
            out_end[nout] = 0
            nout += 1
    if literals >= MIN_TEMPLATE_WORDS:
        return out_hash, out_start, out_end, nout
    return tok_hash[:ntok], tok_start[:ntok], tok_end[:ntok], ntok


@njit(cache=True)
def _stream_hashes(hashes: np.ndarray, count: int, shingle: int) -> tuple[int, int]:
    """(simhash, template hash) of a token-hash stream; (0, 0) when it is empty."""
    if count == 0:
        return 0, 0
    ones = np.zeros(64, dtype=np.int64)
    template = _U_FNV_OFFSET
    for t in range(count):
        template = (template ^ hashes[t]) * _U_FNV_PRIME
    width = shingle if count >= shingle else count
    features = count - width + 1
    for t in range(features):
        feature = _U_FNV_OFFSET
        for j in range(t, t + width):
            feature = (feature ^ hashes[j]) * _U_FNV_PRIME
        feature = _mix(feature)
        for b in range(64):
            ones[b] += np.int64((feature >> np.uint64(b)) & _U_ONE)
    simhash = _U_ZERO
    for b in range(64):
        if 2 * ones[b] > features:
            simhash |= _U_ONE << np.uint64(b)
    template = _mix(template)
    if template == _U_ZERO:
        template = _U_ONE
    return int(np.int64(simhash)), int(np.int64(template))


_RO = "Array(uint8, 1, 'C', readonly=True)"
_SKELETON_ARGS = "int64, uint8[::1], uint64[::1], uint64[::1]"


@njit(
    [
        f"UniTuple(int64, 3)({_RO}, {_SKELETON_ARGS})",
        f"UniTuple(int64, 3)(uint8[::1], {_SKELETON_ARGS})",
    ],
    cache=True,
)
def _skeleton_hashes(
    text: np.ndarray,
    shingle: int,
    classes: np.ndarray,
    instruction: np.ndarray,
    placeholders: np.ndarray,
) -> tuple[int, int, int]:
    hashes, _, _, count = _skeleton(text, classes, instruction, placeholders)
    simhash, template = _stream_hashes(hashes, count, shingle)
    return simhash, template, count


@njit(
    [
        f"Tuple((int32[::1], int32[::1]))({_RO}, uint8[::1], uint64[::1], uint64[::1])",
        "Tuple((int32[::1], int32[::1]))(uint8[::1], uint8[::1], uint64[::1], uint64[::1])",
    ],
    cache=True,
)
def _skeleton_spans(
    text: np.ndarray, classes: np.ndarray, instruction: np.ndarray, placeholders: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    _, starts, ends, count = _skeleton(text, classes, instruction, placeholders)
    return starts[:count].copy(), ends[:count].copy()


# ---------------------------------------------------------------------------------------
# Marker phrases.


@njit(
    [
        f"uint64({_RO}, uint8[::1], uint64[::1], uint64[::1], int64[::1])",
        "uint64(uint8[::1], uint8[::1], uint64[::1], uint64[::1], int64[::1])",
    ],
    cache=True,
)
def _marker_bits(
    text: np.ndarray,
    classes: np.ndarray,
    last_tokens: np.ndarray,
    phrase_hashes: np.ndarray,
    phrase_lengths: np.ndarray,
) -> np.uint64:
    n = text.shape[0]
    window = np.zeros(MAX_SHINGLE, dtype=np.uint64)  # the last tokens, a ring
    ring = MAX_SHINGLE - 1
    count = 0
    found = _U_ZERO
    i = 0
    while i < n:
        c = text[i]
        cls = classes[c]
        start = i
        if cls == C_WORD:
            while i < n and classes[text[i]] == C_WORD:
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
        value = _hash_bytes(text, start, i)
        window[count & ring] = value
        count += 1
        if not _in_table(last_tokens, value):
            continue
        for m in range(phrase_hashes.shape[0]):
            length = phrase_lengths[m]
            if length > count:
                continue
            phrase = _U_FNV_OFFSET
            for j in range(count - length, count):
                phrase = (phrase ^ window[j & ring]) * _U_FNV_PRIME
            if _mix(phrase) == phrase_hashes[m]:
                found |= _U_ONE << np.uint64(m)
    return found


# ---------------------------------------------------------------------------------------
# Python entry points.


def skeleton_hashes(
    text: np.ndarray, shingle: int, instruction: np.ndarray
) -> tuple[int, int, int]:
    """(simhash, template hash, tokens) of the skeleton of lower-cased UTF-8 ``text``.

    ``shingle`` is in 1..MAX_SHINGLE; ``instruction`` is a ``hash_table`` of instruction-word
    token hashes. Both hashes are signed int64 values, 0 for a text without tokens.
    """
    result: tuple[int, int, int] = _skeleton_hashes(
        text, shingle, SKELETON_CLASSES, instruction, PLACEHOLDER_HASHES
    )
    return result


def skeleton_text(text: bytes, instruction: np.ndarray) -> str:
    """The skeleton of lower-cased UTF-8 ``text`` as readable text (for docs and tests)."""
    starts, ends = _skeleton_spans(
        np.frombuffer(text, dtype=np.uint8), SKELETON_CLASSES, instruction, PLACEHOLDER_HASHES
    )
    words = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if start < 0:
            words.append(PLACEHOLDER_NAMES[-start])
        else:
            words.append(text[start:end].decode("utf-8", "replace"))
    return " ".join(words)


def marker_tokens(phrase: str) -> list[bytes]:
    """Tokens of a marker phrase as ``marker_bits`` sees them."""
    tokens: list[bytes] = []
    data = phrase.lower().encode("utf-8")
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
        else:
            i += 1
    return tokens


class MarkerSet:
    """Compiled lookup tables for ``marker_bits`` (at most ``MAX_MARKERS`` phrases)."""

    __slots__ = ("_hashes", "_last", "_lengths")

    def __init__(self, phrases: list[str]) -> None:
        if not 0 < len(phrases) <= MAX_MARKERS:
            raise ValueError(f"between 1 and {MAX_MARKERS} marker phrases, got {len(phrases)}")
        tokens = [marker_tokens(phrase) for phrase in phrases]
        for phrase, items in zip(phrases, tokens, strict=True):
            if not 0 < len(items) <= MAX_SHINGLE:
                raise ValueError(f"marker {phrase!r} must have 1..{MAX_SHINGLE} tokens")
        self._hashes = np.array([phrase_hash(items) for items in tokens], dtype=np.uint64)
        self._lengths = np.array([len(items) for items in tokens], dtype=np.int64)
        self._last = hash_table(sorted({token_hash(items[-1]) for items in tokens}))

    def bits(self, text: np.ndarray) -> int:
        """Bit m is set when phrase m occurs in lower-cased UTF-8 ``text``."""
        return int(_marker_bits(text, MARKER_CLASSES, self._last, self._hashes, self._lengths))
