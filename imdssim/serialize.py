"""A faster response serializer for moto's EC2 answers, so that DescribeInstances costs the
simulator what it costs AWS's callers: nothing much.

moto 5 writes every answer from botocore's output shape: for each member of each structure it
asks a chain of alias providers which attribute names the Python object might hold the value
under (``moto.core.serialize.AttributePicker``), and then scans every response transformer of
the action with ``str.endswith``. Both answers depend only on the object's class, the member's
shape (and its parent shape) and the path in the answer, never on the values, yet they were
worked out again for every field of every instance: about 55 % of the simulator's CPU for a
DescribeInstances, which came to 4.3 ms per instance described on a 2-core benchmark machine,
more than the engine's own work per change. The change engine's tracker describes every
instance it changes, so that cost was the test bench's, charged to the engine's benchmarks.

Most of the rest went to writing the XML: ``xmltodict.unparse`` validates every element's name
and goes through a SAX generator per element, another 40 % of a DescribeInstances.

``install()`` replaces ``AttributePicker.__call__`` with one that remembers those two answers, and
the EC2 serializer's ``_serialize_body`` with ``unparse``, a direct writer of the same XML. The
values are still read from each object exactly as moto reads them, in the same order of candidate
names, and written with the same escaping and the same short empty elements, so every answer is
byte for byte what moto writes (``imdssim/tests/test_serialize.py`` compares both on real answers
and on the edge cases of xmltodict's rules). Written by hand because it is a patch of moto's own
classes: no library does it. The memo holds the shapes and classes it is keyed by, so their ids
are never reused, and it starts over if it ever grows past ``_MEMO_LIMIT`` entries.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import xmltodict
from moto.core import serialize
from moto.core.utils import get_value

_MEMO_LIMIT = 200_000
_MISSING = serialize.MISSING
_keys: dict[tuple, tuple] = {}
_transforms: dict[tuple, tuple] = {}
_installed = False


def _pick(self, context):
    obj, shape = context.obj, context.shape
    parent = getattr(shape, "parent", None)
    meta = getattr(obj, "Meta", None)
    memo_key = (type(self), id(self.alias_providers), type(obj), id(meta), context.key, id(shape), id(parent))
    entry = _keys.get(memo_key)
    if entry is None:
        if len(_keys) > _MEMO_LIMIT:
            _keys.clear()
        # the objects the key's ids name stay referenced, so no id is reused while it is here
        entry = _keys[memo_key] = (tuple(self.get_possible_keys(context)),
                                   self.alias_providers, type(obj), meta, shape, parent)
    for possible_key in entry[0]:
        value = get_value(obj, possible_key, _MISSING)
        if value is not _MISSING:
            break
    else:
        value = None
    transformers = self.response_transformers
    if transformers:
        key_path = f"{context.key_path}.{context.key}"
        found = _transforms.get((id(transformers), key_path))
        if found is None:
            if len(_transforms) > _MEMO_LIMIT:
                _transforms.clear()
            transform = next((t for path, t in transformers.items() if key_path.endswith(path)), None)
            found = _transforms[(id(transformers), key_path)] = (transform, transformers)
        if found[0] is not None:
            value = found[0](value)
    return value


_valid_names: set[str] = set()


def _name(name):
    if name not in _valid_names:
        xmltodict._validate_name(name, "element")  # raises ValueError as unparse does
        if len(_valid_names) < _MEMO_LIMIT:
            _valid_names.add(name)
    return name


def _text(value):
    return value if isinstance(value, str) else xmltodict._convert_value_to_string(value)


def _emit(out, key, value):
    """One key of the body as xmltodict writes it (attr_prefix '@', cdata_key '#text', not
    pretty, short empty elements). True when it wrote anything."""
    _name(key)
    if not hasattr(value, "__iter__") or isinstance(value, (str, bytes, bytearray, memoryview, dict)):
        value = (value,)
    wrote = False
    for v in value:
        wrote = True
        if v is None:
            v = {}
        elif not isinstance(v, (dict, str)):
            v = _text(v)
        if isinstance(v, str):
            cdata, attrs, children = v, (), ()
        else:
            cdata, attrs, children = None, [], []
            for child_key, child in v.items():
                if child_key == "#text":
                    cdata = None if child is None else _text(child)
                elif isinstance(child_key, str) and child_key.startswith("@"):
                    if child_key == "@xmlns" and isinstance(child, dict):
                        for prefix, uri in child.items():
                            xmltodict._validate_name(prefix, "attribute")
                            attrs.append((f"xmlns:{prefix}" if prefix else "xmlns",
                                          "" if uri is None else _text(uri)))
                        continue
                    name = child_key[1:]
                    xmltodict._validate_name(name, "attribute")
                    attrs.append((name, "" if child is None else _text(child)))
                elif not (isinstance(child, list) and not child):
                    children.append((child_key, child))
        out.append("<" + key)
        for name, attr in attrs:
            out.append(f" {name}={quoteattr(attr)}")
        mark = len(out)
        out.append(">")
        opened = False
        for child_key, child in children:
            opened = _emit(out, child_key, child) or opened
        if cdata:
            out.append(escape(cdata))
            opened = True
        if opened:
            out.append(f"</{key}>")
        else:
            out[mark] = "/>"
    return wrote


def unparse(body) -> str:
    """``xmltodict.unparse(body, full_document=True, pretty=False, short_empty_elements=True)``."""
    roots = [(key, value) for key, value in body.items() if key != "#comment"]
    if len(roots) != 1 or len(body) != 1 or (isinstance(roots[0][1], list) and len(roots[0][1]) != 1):
        return xmltodict.unparse(body, full_document=True, short_empty_elements=True)  # its errors
    out = ['<?xml version="1.0" encoding="utf-8"?>\n']
    _emit(out, *roots[0])
    return "".join(out)


_original_body = serialize.EC2Serializer._serialize_body


def _serialize_body(self, body):
    if self.pretty_print:
        return _original_body(self, body)
    return unparse(body)


def install() -> None:
    """Patch moto's AttributePicker (and so XFormedAttributePicker) and the EC2 serializer's XML
    writer, once per process."""
    global _installed
    if not _installed:
        serialize.AttributePicker.__call__ = _pick
        serialize.EC2Serializer._serialize_body = _serialize_body
        _installed = True
