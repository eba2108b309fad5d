"""``Folder``: a BTree-backed container whose changes go through the
containment operations (the class name is frozen: folders are stored)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from persistent import Persistent

from .containment import place, remove

__all__ = ["Folder"]


class Folder(Persistent, MutableMapping):  # type: ignore[misc,type-arg]
    """A mapping of names to objects; assigning an item places it (or, when
    the name is taken, removes the old item first, checked), deleting an
    item removes it (checked)."""

    def __init__(self, items: Any = None) -> None:
        self._data = OOBTree()
        self._count = Length()
        self.__parent__: Any = None
        self.__name__: str | None = None
        if items:
            for name, obj in dict(items).items():
                self[name] = obj

    # the raw operations the containment functions use
    def _pclasses_set(self, name: str, obj: Any) -> None:
        if self._data.insert(name, obj):
            self._count.change(1)
        else:
            self._data[name] = obj

    def _pclasses_del(self, name: str) -> None:
        del self._data[name]
        self._count.change(-1)

    def __setitem__(self, name: str, obj: Any) -> None:
        current = self._data.get(name)
        if current is obj:
            return
        if current is not None:
            remove(self, name)
        place(self, name, obj)

    def __delitem__(self, name: str) -> None:
        remove(self, name)

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data.keys())

    def __len__(self) -> int:
        return self._count()  # type: ignore[no-any-return]

    def keys(self) -> Any:
        return self._data.keys()

    def values(self) -> Any:
        return self._data.values()

    def items(self) -> Any:
        return self._data.items()

    def __repr__(self) -> str:
        return f"<Folder {self.__name__!r} with {len(self)} items>"

    __hash__ = object.__hash__
    __eq__ = object.__eq__
