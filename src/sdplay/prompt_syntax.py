"""A1111 prompt syntax, parsed in pure Python: emphasis, BREAK, prompt editing, alternation and `<lora:…>` tags.

Three passes, in the order A1111 applies them:
1. `extract_loras` removes `<lora:name:weight>` tags from the text and lists them.
2. `schedule` resolves prompt editing `[from:to:when]` and alternation `[a|b]` into one text per range of steps.
3. `parse_attention` splits one of those texts into (text, weight) pieces and BREAK markers.

Unbalanced or malformed brackets never raise: they stay in the text literally, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BREAK = "BREAK"  # the marker parse_attention puts between chunks
ROUND = 1.1  # (x) multiplies by this, [x] divides by it

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_LORA_TAG = re.compile(r"<(lora|lyco):([^>]+)>")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


# -- 1. extra networks ------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraRef:
    """A LoRA named in a prompt or a request, with its strength on the UNet and on the text encoders."""

    name: str
    weight: float = 1.0
    te_weight: float | None = None  # None: same as weight

    @property
    def text_weight(self) -> float:
        return self.weight if self.te_weight is None else self.te_weight


def extract_loras(text: str) -> tuple[str, list[LoraRef]]:
    """The prompt without its `<lora:name[:weight[:unet_weight]]>` tags, and the LoRAs they name.

    As in A1111, `<lora:name:w>` sets both strengths to w; `<lora:name:te:unet>` sets them apart; `te=`/`unet=`
    name them. A tag whose weight is not a number stays in the text (it is not a LoRA tag then).
    """
    refs: list[LoraRef] = []

    def take(match: re.Match) -> str:
        ref = _lora_ref(match.group(2))
        if ref is None:
            return match.group(0)
        refs.append(ref)
        return ""

    return _LORA_TAG.sub(take, text), refs


def _lora_ref(args: str) -> LoraRef | None:
    name, *rest = [a.strip() for a in args.split(":")]
    positional, named = [], {}
    for arg in rest:
        key, eq, value = arg.partition("=")
        if eq:
            named[key.strip()] = value.strip()
        else:
            positional.append(arg)
    try:
        te = float(named.get("te", positional[0] if positional else 1.0))
        unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
    except ValueError:
        return None
    return LoraRef(name, unet, te if te != unet else None) if name else None


# -- 2. prompt editing and alternation ---------------------------------------------------------
@dataclass(frozen=True)
class _Scheduled:
    before: tuple  # nodes before `when` (empty for [x:when])
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple  # one node tuple per option


class _Fail(Exception):
    pass


def schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """[(last_step, text), ...]: the text to use up to and including each step, A1111's prompt schedule.

    `when` is a step number, or a fraction of `steps` when below 1. A text that does not parse (e.g. a lone `|`
    outside brackets) is used whole for every step, as A1111 does.
    """
    try:
        nodes = _Parser(text).top()
    except _Fail:
        return [(steps, text)]
    boundaries = {steps}
    _collect(nodes, steps, boundaries)
    return [(s, _render(nodes, s, steps)) for s in sorted(boundaries)]


def has_schedule(text: str) -> bool:
    """Whether the text needs more than one conditioning over the steps (cheap pre-check, then a parse)."""
    return "[" in text and len({t for _, t in schedule(text, 100)}) > 1


def _when(node: _Scheduled, steps: int) -> int:
    when = node.when * steps if node.when < 1 else node.when
    return min(steps, int(when))


def _collect(nodes: tuple, steps: int, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            out.add(_when(node, steps))
            _collect(node.before, steps, out)
            _collect(node.after, steps, out)
        elif isinstance(node, tuple):  # emphasis: kept as text, may hold editing inside
            _collect(node, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, out)


def _render(nodes: tuple, step: int, steps: int) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, tuple):
            parts.append(_render(node, step, steps))
        elif isinstance(node, _Scheduled):
            parts.append(_render(node.before if step <= _when(node, steps) else node.after, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


class _Parser:
    """Recursive descent over A1111's editing grammar; emphasis is kept as text for parse_attention."""

    STOP = frozenset("\\[]():|")

    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def top(self) -> tuple:
        """Prompts, with stray `[ ] ( ) :` outside any construct taken literally."""
        nodes: list = []
        while self.i < len(self.s):
            nodes.extend(self.prompt())
            if self.i >= len(self.s):
                break
            ch = self.s[self.i]
            if ch not in "[]():":
                raise _Fail  # e.g. `|` outside brackets, or a trailing backslash
            start = self.i
            try:
                nodes.append(self.construct())
            except _Fail:
                self.i = start + 1
                nodes.append(ch)
        return tuple(nodes)

    def prompt(self) -> list:
        nodes: list = []
        while self.i < len(self.s):
            plain = self.plain()
            if plain:
                nodes.append(plain)
                continue
            if self.s[self.i] not in "([":
                break
            start = self.i
            try:
                nodes.append(self.construct())
            except _Fail:
                self.i = start
                break
        return nodes

    def plain(self) -> str:
        start = self.i
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\" and self.i + 1 < len(self.s):
                self.i += 2
            elif ch in self.STOP:
                break
            else:
                self.i += 1
        return self.s[start : self.i]

    def expect(self, ch: str) -> None:
        if self.i >= len(self.s) or self.s[self.i] != ch:
            raise _Fail
        self.i += 1

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def construct(self):
        opener = self.peek()
        self.i += 1
        first = tuple(self.prompt())
        if opener == "(":
            if self.peek() == ":":
                self.i += 1
                second = tuple(self.prompt())
                self.expect(")")
                return ("(", *first, ":", *second, ")")
            self.expect(")")
            return ("(", *first, ")")
        nxt = self.peek()
        if nxt == "]":
            self.i += 1
            return ("[", *first, "]")
        if nxt == "|":
            options = [first]
            while self.peek() == "|":
                self.i += 1
                options.append(tuple(self.prompt()))
            self.expect("]")
            return _Alternate(tuple(options))
        self.expect(":")
        mark = self.i
        when = self.number_close()
        if when is not None:
            return _Scheduled((), first, when)
        self.i = mark
        second = tuple(self.prompt())
        self.expect(":")
        when = self.number_close()
        if when is None:
            raise _Fail
        return _Scheduled(first, second, when)

    def number_close(self) -> float | None:
        """`[ws] NUMBER [ws] ]` at the cursor, consumed; None (cursor unspecified) if not there."""
        rest = self.s[self.i :]
        stripped = rest.lstrip()
        match = _NUMBER.match(stripped)
        if not match:
            return None
        tail = stripped[match.end() :]
        if not tail.lstrip().startswith("]"):
            return None
        self.i += len(rest) - len(tail.lstrip()) + 1
        return float(match.group(0))


# -- 3. emphasis and BREAK ---------------------------------------------------------------------
_ATTENTION = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with (BREAK, -1.0) between chunks; neighbours of equal weight are merged.

    `(x)` ×1.1, `((x))` ×1.21, `(x:1.3)` ×1.3, `[x]` ÷1.1, `\\(` a literal bracket; brackets left open at the end
    still apply to what follows them, closing brackets with no opener are literal text (all as in A1111).
    """
    res: list[list] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in res[start:]:
            if not piece[2]:
                piece[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0, False])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open and _is_float(weight):
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / ROUND)
        else:
            for k, part in enumerate(_BREAK_SPLIT.split(token)):
                if k:
                    res.append([BREAK, -1.0, True])
                res.append([part, 1.0, False])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, 1 / ROUND)
    return _merge(res)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _merge(res: list[list]) -> list[tuple[str, float]]:
    out: list[list] = []
    for text, weight, is_break in res:
        if not is_break and not text:
            continue
        if out and not is_break and not out[-1][2] and out[-1][1] == weight:
            out[-1][0] += text
        else:
            out.append([text, weight, is_break])
    return [(t, w) for t, w, _ in out] or [("", 1.0)]


def is_plain(pieces: list[tuple[str, float]]) -> bool:
    """True when the parsed prompt has no weights and no BREAK: it encodes exactly like the raw text."""
    return all(w == 1.0 for _, w in pieces)
