"""Name -> implementation tables: the STEs, the weight quantizers and their STEs, the models.

The name a user types (``ste=clipped_relu``) is the key; ``register`` adds an entry (a class by its ``name``
attribute, anything else under the name given), ``get`` looks one up with a one-line error that lists the valid
names. A plugin module (``plugins=[...]``, src/plugins.py) registers its own entries the same way.
"""

from __future__ import annotations


class Registry(dict):
    """A dict of name -> implementation for one ``kind`` (the config key its names are typed under)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry=None, /):
        """``@REG.register`` adds a class under its ``name``; ``@REG.register("name")`` adds anything under "name".

        A second entry under a taken name is refused: a plugin cannot silently replace a built-in."""
        if isinstance(entry, str) or entry is None:
            return lambda obj: self._add(entry or obj.name, obj)
        return self._add(entry.name, entry)

    def _add(self, name: str, obj):
        old = self.get(name)
        if old is not None and getattr(old, "__qualname__", old) != getattr(obj, "__qualname__", obj):
            raise ValueError(f"{self.kind} {name!r} is registered twice ({old!r} and {obj!r})")
        self[name] = obj
        return obj

    def lookup(self, name: str):
        """The entry named ``name``; an unknown name is a one-line ValueError listing the valid ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self))}")
        return self[name]
