"""A small renderer for the Go text/template subset that Ollama `TEMPLATE`s use, so the Modelfile thinktune writes
can be rendered and compared with the training prompt without Ollama installed.

Supported (with Go's semantics): literal text; actions ``{{ pipeline }}`` with the ``{{-`` / ``-}}`` trim
markers; ``{{ if }}`` / ``{{ else if }}`` / ``{{ else }}`` / ``{{ end }}``; ``{{ range .X }}`` and
``{{ range $i, $m := .X }}`` (with ``{{ else }}`` for an empty list); variables (``$``, ``$x := ...``,
``$x = ...``, ``$x.Field``); fields (``.A.B``); string (with Go escapes), raw-string, number and boolean
literals; parenthesised pipelines; comments ``{{/* */}}``; and the functions ``eq ne lt le gt ge and or not len
slice index print``. Anything else is a :class:`GoTemplateError`, never a silent difference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thinktune.errors import GoTemplateError

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<decl>:=)|(?P<assign>=)'
    r"|(?P<open>\()|(?P<close>\))|(?P<comma>,)|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<pipe>\|))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "a": "\a", "b": "\b", "f": "\f"}


def _unescape(body: str) -> str:
    def repl(m: re.Match) -> str:
        s = m.group(1)
        if s[0] in _ESCAPES:
            return _ESCAPES[s[0]]
        if s[0] in "uUx":
            return chr(int(s[1:], 16))
        raise GoTemplateError(f"unsupported escape \\{s} in a Go string literal")

    return re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)", repl, body)


# ------------------------------------------------------------------------------------------ parse tree


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    tokens: list[tuple[str, str]]


@dataclass
class _If:
    branches: list[tuple[list[tuple[str, str]], list[Any]]]  # (condition tokens, body); else has []
    else_body: list[Any] | None = None


@dataclass
class _Range:
    tokens: list[tuple[str, str]]
    body: list[Any] = field(default_factory=list)
    else_body: list[Any] | None = None


def _lex_actions(source: str) -> list[tuple[str, Any]]:
    """Split into ('text', str) and ('action', str) pieces, applying trim markers."""
    pieces: list[tuple[str, Any]] = []
    pos = 0
    trim_next = False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            if text:
                pieces.append(("text", text))
            return pieces
        inner_start = start + 2
        trim_prev = source.startswith("- ", inner_start) or source.startswith("-\t", inner_start)
        if source.startswith("-\n", inner_start):
            trim_prev = True
        if trim_prev:
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        if text:
            pieces.append(("text", text))
        end = _find_close(source, inner_start)
        inner = source[inner_start:end]
        trim_next = bool(re.search(r"[ \t\r\n]-$", inner))
        if trim_next:
            inner = inner[:-1]
        pos = end + 2
        inner = inner.strip()
        if inner.startswith("/*"):
            if not inner.endswith("*/"):
                raise GoTemplateError(f"unclosed comment in {inner!r}")
            continue
        pieces.append(("action", inner))


def _find_close(source: str, pos: int) -> int:
    """Index of the '}}' closing the action at pos, skipping string literals."""
    i = pos
    while i < len(source):
        c = source[i]
        if c == '"':
            i += 1
            while i < len(source) and source[i] != '"':
                i += 2 if source[i] == "\\" else 1
        elif c == "`":
            i = source.index("`", i + 1)
        elif source.startswith("}}", i):
            return i
        i += 1
    raise GoTemplateError("unclosed action: '{{' without '}}'")


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot parse {expr[pos:]!r} in action {expr!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def parse(source: str) -> list[Any]:
    pieces = _lex_actions(source)
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = []  # (node, list currently being filled)
    current = root
    for kind, value in pieces:
        if kind == "text":
            current.append(_Text(value))
            continue
        words = value.split(None, 1)
        keyword = words[0] if words else ""
        rest = words[1] if len(words) > 1 else ""
        if keyword == "if":
            node = _If([(_tokenize(rest), [])])
            current.append(node)
            stack.append((node, current))
            current = node.branches[-1][1]
        elif keyword == "range":
            node = _Range(_tokenize(rest))
            current.append(node)
            stack.append((node, current))
            current = node.body
        elif keyword == "else":
            if not stack:
                raise GoTemplateError("{{ else }} outside if/range")
            node = stack[-1][0]
            if rest.startswith("if "):
                if not isinstance(node, _If) or node.else_body is not None:
                    raise GoTemplateError("{{ else if }} outside if")
                node.branches.append((_tokenize(rest[3:]), []))
                current = node.branches[-1][1]
            elif rest:
                raise GoTemplateError(f"unsupported {{{{ else {rest} }}}}")
            else:
                node.else_body = []
                current = node.else_body
        elif keyword == "end":
            if not stack:
                raise GoTemplateError("{{ end }} without if/range")
            _, current = stack.pop()
        elif keyword in ("with", "define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"{{{{ {keyword} }}}} is outside the supported Go-template subset")
        else:
            current.append(_Action(_tokenize(value)))
    if stack:
        raise GoTemplateError("missing {{ end }}")
    return root


# ------------------------------------------------------------------------------------------ evaluation


def _truth(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        if name in obj:
            return obj[name]
        return None  # a missing map key is the zero value in Go
    if hasattr(obj, name):
        return getattr(obj, name)
    raise GoTemplateError(f"can't evaluate field {name} in {type(obj).__name__}")


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise GoTemplateError("eq needs at least two arguments")
    return any(a == b for b in others)


def _slice(x: Any, *idx: Any) -> Any:
    if len(idx) == 0:
        return x
    if len(idx) == 1:
        return x[idx[0] :]
    return x[idx[0] : idx[1]]


def _and(*args: Any) -> Any:
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if _truth(a):
            return a
    return args[-1]


def _print(*args: Any) -> str:
    return "".join(_to_text(a) for a in args)


FUNCS = {
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "and": _and,
    "or": _or,
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a),
    "slice": _slice,
    "index": lambda a, *keys: _index(a, keys),
    "print": _print,
}


def _index(a: Any, keys: Sequence[Any]) -> Any:
    for k in keys:
        a = a[k]
    return a


def _to_text(v: Any) -> str:
    if v is None:
        return "<no value>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_to_text(x) for x in v) + "]"
    return str(v)


class _Scope:
    def __init__(self, root: Any) -> None:
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise GoTemplateError(f"undefined variable {name}")

    def declare(self, name: str, value: Any) -> None:
        self.frames[-1][name] = value

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise GoTemplateError(f"undefined variable {name}")


class _Evaluator:
    def __init__(self, scope: _Scope) -> None:
        self.scope = scope

    def pipeline(self, tokens: list[tuple[str, str]], dot: Any) -> Any:
        """Evaluate `[$x :=] cmd | cmd ...`; declarations/assignments return None (print nothing)."""
        if len(tokens) >= 2 and tokens[0][0] == "var" and tokens[1][0] in ("decl", "assign"):
            value = self.pipeline(tokens[2:], dot)
            (self.scope.declare if tokens[1][0] == "decl" else self.scope.assign)(tokens[0][1], value)
            return _Declared()
        commands: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for tok in tokens:
            if tok[0] == "open":
                depth += 1
            elif tok[0] == "close":
                depth -= 1
            if tok[0] == "pipe" and depth == 0:
                commands.append([])
            else:
                commands[-1].append(tok)
        value: Any = _NoArg
        for cmd in commands:
            value = self.command(cmd, dot, value)
        return value

    def command(self, tokens: list[tuple[str, str]], dot: Any, piped: Any) -> Any:
        args = self._terms(tokens, dot)
        if not args:
            raise GoTemplateError("empty command")
        head_kind, head = args[0]
        if head_kind == "func":
            values = [v for _, v in args[1:]]
            if piped is not _NoArg:
                values.append(piped)
            try:
                return FUNCS[head](*values)
            except GoTemplateError:
                raise
            except Exception as e:
                raise GoTemplateError(f"error calling {head}: {e}") from None
        if len(args) > 1 or piped is not _NoArg:
            raise GoTemplateError("only functions take arguments")
        return head

    def _terms(self, tokens: list[tuple[str, str]], dot: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        i = 0
        while i < len(tokens):
            kind, text = tokens[i]
            if kind == "open":
                depth, j = 1, i + 1
                while depth:
                    if j >= len(tokens):
                        raise GoTemplateError("unbalanced parentheses")
                    depth += {"open": 1, "close": -1}.get(tokens[j][0], 0)
                    j += 1
                out.append(("value", self.pipeline(tokens[i + 1 : j - 1], dot)))
                i = j
                continue
            if kind == "ident":
                if text in ("true", "false"):
                    out.append(("value", text == "true"))
                elif text == "nil":
                    out.append(("value", None))
                elif text in FUNCS:
                    out.append(("func", text))
                else:
                    raise GoTemplateError(f'function "{text}" not defined')
            elif kind == "str":
                out.append(("value", _unescape(text[1:-1])))
            elif kind == "raw":
                out.append(("value", text[1:-1]))
            elif kind == "num":
                out.append(("value", float(text) if "." in text else int(text)))
            elif kind == "field":
                value = dot
                for name in [p for p in text.split(".") if p]:
                    value = _field(value, name)
                out.append(("value", value))
            elif kind == "var":
                name, *path = text.split(".")
                value = self.scope.get(name)
                for p in path:
                    value = _field(value, p)
                out.append(("value", value))
            else:
                raise GoTemplateError(f"unexpected {text!r}")
            i += 1
        return out


class _Declared:
    pass


_NoArg = object()


def _execute(nodes: list[Any], dot: Any, ev: _Evaluator, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Action):
            value = ev.pipeline(node.tokens, dot)
            if not isinstance(value, _Declared):
                out.append(_to_text(value))
        elif isinstance(node, _If):
            for cond, body in node.branches:
                ev.scope.frames.append({})
                taken = _truth(ev.pipeline(cond, dot))
                if taken:
                    _execute(body, dot, ev, out)
                ev.scope.frames.pop()
                if taken:
                    break
            else:
                if node.else_body is not None:
                    _execute(node.else_body, dot, ev, out)
        elif isinstance(node, _Range):
            _range(node, dot, ev, out)


def _range(node: _Range, dot: Any, ev: _Evaluator, out: list[str]) -> None:
    tokens = node.tokens
    names: list[str] = []
    if any(k == "decl" for k, _ in tokens):
        at = next(i for i, (k, _) in enumerate(tokens) if k == "decl")
        names = [t for k, t in tokens[:at] if k == "var"]
        tokens = tokens[at + 1 :]
    items = ev.pipeline(tokens, dot)
    if items is None:
        items = []
    if isinstance(items, Mapping):
        pairs = list(sorted(items.items()))
    elif isinstance(items, int) and not isinstance(items, bool):
        pairs = [(i, i) for i in range(items)]
    else:
        pairs = list(enumerate(items))
    if not pairs:
        if node.else_body is not None:
            _execute(node.else_body, dot, ev, out)
        return
    for key, item in pairs:
        frame: dict[str, Any] = {}
        if len(names) == 1:
            frame[names[0]] = item
        elif len(names) == 2:
            frame[names[0]], frame[names[1]] = key, item
        ev.scope.frames.append(frame)
        _execute(node.body, item, ev, out)
        ev.scope.frames.pop()


def render(source: str, data: Mapping[str, Any]) -> str:
    """Render a Go template with `data` as dot (maps and Python objects both work for field access)."""
    nodes = parse(source)
    out: list[str] = []
    _execute(nodes, data, _Evaluator(_Scope(data)), out)
    return "".join(out)
