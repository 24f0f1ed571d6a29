"""Read a YAML file of settings strictly: UTF-8, a mapping with string keys, no key twice.

PyYAML keeps the last of two equal keys without a word; a job file holding `epochs` twice
would silently train with the second. Every problem is a `TfsubmitError` naming the file.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from tfsubmit.errors import TfsubmitError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-string mapping keys."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        where = f"line {key_node.start_mark.line + 1}"
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"{where}: key {key!r} is not a string", key_node.start_mark)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"{where}: key {key!r} appears twice", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# The most values a settings file may hold once its aliases are expanded: a few aliases of
# aliases ("a billion laughs") would otherwise take minutes and gigabytes to read.
MAX_NODES = 100_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (each node's size is
    worked out once: an alias is the node it names)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node that holds itself counts once
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(key, sizes) + _expanded_size(value, sizes)
                       for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


# The largest settings file read (a job, a sweep, targets.yaml): far past any real one.
MAX_BYTES = 1024 * 1024


def read_text(path: Path, what: str, error: type[TfsubmitError]) -> str:
    """The file's text, or `error` saying why it cannot be read: not there, a folder, not a
    regular file (a FIFO would block the reader forever), over MAX_BYTES, unreadable."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} file {path} is not a regular file (a pipe, a device or a "
                        "socket); give the path of a YAML file")
        if info.st_size > MAX_BYTES:
            raise error(f"{what} file {path} is {info.st_size:,} bytes, more than the "
                        f"{MAX_BYTES:,} a settings file may be")
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} file {path} is a folder; give the path of a YAML file") from None
    except OSError as exc:
        raise error(f"{what} file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:  # grew while read
        raise error(f"{what} file {path} is more than the {MAX_BYTES:,} bytes a settings "
                    "file may be")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} file {path} is not UTF-8 text (byte {exc.start}); "
                    f"save it as UTF-8") from None


def load_mapping(path: Path, what: str, error: type[TfsubmitError],
                 *, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file holding one mapping with string keys, each key once."""
    text = read_text(path, what, error)
    loader = None
    try:
        loader = _StrictLoader(text)  # reads ahead: a bad character is a YAMLError here
        node = loader.get_single_node()
        size = _expanded_size(node, {}) if node is not None else 0
        if size > MAX_NODES:
            raise error(f"{what} file {path}: its aliases (*name) expand to {size:,} values, "
                        f"more than {MAX_NODES:,}: write the values out, or use fewer "
                        "aliases of aliases")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise error(f"{what} file {path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{what} file {path} is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} file {path} must hold a mapping of {what} fields")
    return data
