"""Read a YAML file that may be hostile: bounded in size, depth and alias expansion.

A site file or a profile is written by people and copied between sites, so it can be anything:
a binary, a UTF-16 export, a 400-byte "billion laughs" alias bomb that expands to 10**9 values,
a 5,000-deep list that overflows the Python stack, a recursive alias. Each of these becomes one
:class:`YamlFileError` naming the file and the line, fast, before anything is built from it:

1. at most :data:`MAX_FILE_BYTES` are read; a NUL byte means a binary file, and the text must be
   UTF-8 (a UTF-8 byte-order mark is allowed);
2. the parser's event stream (libyaml's parser is a state machine, so it cannot overflow a stack)
   is checked first: nesting depth, aliases, and the number of values the document stands for
   once every alias is expanded, counted per anchor so the count itself costs one pass;
3. only then are the Python objects built, refusing duplicate keys (PyYAML would keep the last),
   keys that are lists or mappings, and integers with more digits than any device register holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUES", "YamlFileError", "read_yaml"]

MAX_FILE_BYTES = 1_048_576
"""Largest file read (1 MiB). The 15-device example site is ~5 kB, the largest profile ~10 kB."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings, aliases expanded. A site file needs 5 (control roles in lists)."""
MAX_VALUES = 100_000
"""Most values (scalars, lists, mappings) a file may stand for with every alias expanded."""
MAX_ALIASES = 1_000
"""Most aliases (``*name``) in one file: enough for a shared device default on every device."""
MAX_INT_DIGITS = 30
"""An integer longer than this is no register value (uint64 has 20 digits); Python would take
seconds to convert a 100,000-digit one and refuses to print one over 4,300 digits."""

# libyaml when installed (fast, and its parser keeps no recursion); pure Python otherwise.
_BaseLoader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(Exception):
    """The file cannot be read as YAML; the message starts with the line where that is known."""


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}: " if mark is not None else ""


class _Loader(_BaseLoader):  # type: ignore[misc]  # a SafeLoader (C or Python), chosen above: Any to mypy
    """SafeLoader that refuses duplicate keys, unhashable keys and absurdly long integers."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *defaults`: keys given beside a merge override it, as YAML says
        if not isinstance(key_node, yaml.ScalarNode):
            raise YamlFileError(f"{_at(key_node.start_mark)}a key must be a plain word, not a list or mapping")
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise YamlFileError(f"{_at(key_node.start_mark)}key {str(key)[:80]!r} appears twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> Any:
    digits = sum(ch.isalnum() for ch in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise YamlFileError(f"{_at(node.start_mark)}an integer of {digits} digits is not a plausible value")
    return loader.construct_yaml_int(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Open:
    """A list or mapping whose end event has not come yet."""

    __slots__ = ("anchor", "depth", "values")

    def __init__(self, anchor: str | None) -> None:
        self.anchor = anchor
        self.values = 1
        self.depth = 1


def _check_events(text: str) -> None:
    """Refuse too deep, too many aliases, too large once expanded, and recursive aliases.

    Expanded sizes are summed per anchor (an alias adds what its anchor stands for), so a
    bomb is refused as soon as its count passes the limit, without expanding anything.
    """
    check = _EventCheck()
    for event in yaml.parse(text, Loader=_BaseLoader):
        mark = event.start_mark
        if isinstance(event, yaml.DocumentStartEvent):
            check.anchors.clear()
        elif isinstance(event, yaml.AliasEvent):
            check.alias(event.anchor, mark)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                check.anchors[event.anchor] = (1, 1)
            check.add(1, 1, mark)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            check.open(event.anchor, mark)
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            check.close(mark)


class _EventCheck:
    """The lists and mappings open, the anchors seen and what each stands for, the aliases counted."""

    def __init__(self) -> None:
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) it stands for
        self.aliases = 0

    def open(self, anchor: str | None, mark: Any) -> None:
        self.stack.append(_Open(anchor))
        if len(self.stack) > MAX_DEPTH:
            raise YamlFileError(f"{_at(mark)}lists and mappings nested more than {MAX_DEPTH} levels deep")

    def close(self, mark: Any) -> None:
        done = self.stack.pop()
        if done.anchor is not None:
            self.anchors[done.anchor] = (done.values, done.depth)
        self.add(done.values, done.depth, mark)

    def alias(self, anchor: str | None, mark: Any) -> None:
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise YamlFileError(f"{_at(mark)}more than {MAX_ALIASES} aliases (*name); refused (an alias bomb?)")
        if any(item.anchor == anchor for item in self.stack):
            raise YamlFileError(f"{_at(mark)}an alias (*name) refers to the list or mapping it is inside of")
        if anchor is None or anchor not in self.anchors:
            # The name is not echoed: an unquoted password starting with * lands here.
            raise YamlFileError(
                f"{_at(mark)}a value starting with * is an alias, and no anchor (&name) defines it; "
                "quote a value that starts with * (e.g. a password)"
            )
        self.add(*self.anchors[anchor], mark)

    def add(self, values: int, depth: int, mark: Any) -> None:
        stack = self.stack
        if not stack:
            return
        parent = stack[-1]
        parent.values += values
        parent.depth = max(parent.depth, depth + 1)
        if sum(item.values for item in stack) > MAX_VALUES + len(stack):
            raise YamlFileError(
                f"{_at(mark)}the file stands for more than {MAX_VALUES:,} values once its aliases (*name) "
                "are expanded; refused (an alias bomb?)"
                if self.aliases
                else f"{_at(mark)}more than {MAX_VALUES:,} values in one file; refused (not a configuration file?)"
            )
        if parent.depth + len(stack) - 1 > MAX_DEPTH:
            raise YamlFileError(
                f"{_at(mark)}lists and mappings nested more than {MAX_DEPTH} levels deep (aliases expanded)"
            )


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlFileError("is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise YamlFileError(f"is a binary file, not YAML text (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlFileError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def read_yaml(path: Path) -> Any:
    """The file's content as Python objects; :class:`YamlFileError` (without the path) on any fault."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlFileError("file not found") from None
    except IsADirectoryError:
        raise YamlFileError("is a folder, not a file") from None
    except OSError as exc:
        raise YamlFileError(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlFileError(f"larger than {MAX_FILE_BYTES // 1024} KiB; refused (not a configuration file?)")
    text = _decode(data)
    try:
        _check_events(text)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else "?"
        raise YamlFileError(
            f"line {line}: not valid YAML: character #x{exc.character:04x} is not allowed (a control character)"
            if isinstance(exc.character, int)
            else f"line {line}: not valid YAML: {exc.reason}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # `problem` only: str(exc) quotes the offending line, which may hold a password.
        problem = getattr(exc, "problem", None) or type(exc).__name__
        context = getattr(exc, "context", None)
        said = f"{context}, {problem}" if context and "'" not in context else problem
        raise YamlFileError(f"{where}not valid YAML: {said}") from None
