"""Field documentation of config dataclasses, read from their source for the configuration reference.

A field is documented by its entry in the class docstring's ``Attributes:`` section or by the ``#``
comment block right above it; the reference shows the first sentence, as Markdown (Sphinx roles
such as ``:class:`X``` become code spans).

Example:
    >>> import ast
    >>> src = "class C:\\n    # how many items to return\\n    k: int = 10\\n"
    >>> field_docs(ast.parse(src).body[0], src.splitlines())
    {'k': 'How many items to return.'}
"""

from __future__ import annotations

import ast
import re

#: what the reference shows for a key nobody documented
NO_DOC = "—"

_ENTRY = re.compile(r"^([A-Za-z_]\w*(?:\s*[/,]\s*[A-Za-z_]\w*)*):(?:\s+(.*))?$")
_GROUP_LABEL = re.compile(r"^[\w-]+ options$")


def field_docs(node: ast.ClassDef, lines: list[str]) -> dict[str, str]:
    """First sentence of each field's documentation in a dataclass's source.

    ``node`` is the class statement parsed from ``lines``. A field is documented by its entry in the
    docstring's ``Attributes:`` section (``name: text``, ``a / b: text`` and ``a, b: text`` name
    several fields; ``a: text. b: text`` on one line documents both) or, failing that, by the ``#``
    comment lines right above it. A lone comment such as ``# image options`` labels the fields below
    it without documenting them.
    """
    docs: dict[str, str] = {}
    attributes = _attributes(ast.get_docstring(node) or "")
    fields = [
        (s.target.id, s.lineno) for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    ]
    for names, text in attributes:
        for name in names:
            docs.setdefault(name, _first_sentence(text))
    joined = " ".join(text for _, text in attributes)
    label = ""
    for name, lineno in fields:
        comment: list[str] = []
        i = lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            comment.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        if i >= 0 and not lines[i].strip():
            label = ""  # a blank line ends a labelled group
        if len(comment) == 1 and _GROUP_LABEL.match(comment[0]):
            label, comment = comment[0], []
        if name in docs:
            continue
        inline = re.search(rf"(?:^|\.\s){re.escape(name)}:\s+([^.]+\.)", joined)
        if inline:
            docs[name] = _first_sentence(inline.group(1))
        elif comment:
            docs[name] = _first_sentence(" ".join(comment))
        elif label:
            docs[name] = f"({label})"
    return docs


def _attributes(docstring: str) -> list[tuple[list[str], str]]:
    """``(names, text)`` of each entry of a Google-style ``Attributes:`` section."""
    lines = docstring.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return []
    header_indent = len(lines[start]) - len(lines[start].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    entry_indent: int | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        match = _ENTRY.match(line.strip()) if indent == entry_indent else None
        if match:
            names = [n.strip() for n in re.split(r"[/,]", match.group(1))]
            entries.append((names, [match.group(2) or ""]))
        elif entries:
            entries[-1][1].append(line.strip())
    return [(names, " ".join(parts).strip()) for names, parts in entries]


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_ABBREVIATIONS = ("e.g", "i.e", "vs", "etc", "cf")


def _first_sentence(text: str) -> str:
    """The first sentence of ``text`` (a period outside parentheses, then a space), as Markdown."""
    text = " ".join(text.split())
    text = _ROLE.sub(r"``\1``", text).replace("``", "`")
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            word = text[:i].rsplit(" ", 1)[-1].lower()
            if word not in _ABBREVIATIONS:
                end = i + 1
                break
    sentence = text[:end].strip()
    first_word = sentence.split(" ", 1)[0]
    if first_word.isascii() and first_word.islower() and first_word[:1].isalpha():  # not `gRPC`, `λ`
        sentence = sentence[0].upper() + sentence[1:]
    if sentence and not sentence.endswith((".", ":", "?")):
        sentence += "."
    return sentence or NO_DOC


def paragraph(docstring: str) -> str:
    """A docstring's first paragraph on one line, as Markdown."""
    text = " ".join(docstring.split("\n\n", 1)[0].split())
    return _ROLE.sub(r"``\1``", text).replace("``", "`")
