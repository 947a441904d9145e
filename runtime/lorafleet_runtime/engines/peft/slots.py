"""Which adapters the PeftModel holds, under which engine names: bookkeeping only (no torch,
no PEFT), so the rules are unit-tested on their own.

- A model id (``<modelId>:<adapter>``) maps to an engine name (``lf<n>``), never reused: a new
  revision loaded under the same model id gets a new name, so a batch that still runs with the
  old weights keeps them, and no adapter name can collide with a module name of the base
  model (PEFT keys its layers by adapter name).
- At most ``max_loras`` model ids are mapped, least recently used first out.
- An engine name leaves the model when it is unmapped (evicted, removed, replaced) and no
  batch row uses it; with rows in flight it is *retired*: unusable by new requests, deleted
  when its last row ends. Every call that can free a name returns the names to delete now."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class AdapterSlots:
    max_loras: int
    _mapped: OrderedDict[str, str] = field(default_factory=OrderedDict)  # model id -> name
    _rows: dict[str, int] = field(default_factory=dict)  # engine name -> rows in flight
    _retired: set[str] = field(default_factory=set)
    _issued: int = 0

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {self.max_loras}")

    # ----------------------------------------------------------------- queries
    def lookup(self, model_id: str) -> str | None:
        """The engine name serving ``model_id`` (and it becomes the most recently used)."""
        name = self._mapped.get(model_id)
        if name is not None:
            self._mapped.move_to_end(model_id)
        return name

    def mapped(self) -> dict[str, str]:
        """Model id -> engine name, least recently used first."""
        return dict(self._mapped)

    def in_memory(self) -> set[str]:
        """Engine names the model holds: mapped ones and retired ones still in use."""
        return set(self._mapped.values()) | self._retired

    def rows(self, name: str) -> int:
        return self._rows.get(name, 0)

    def victim(self) -> str | None:
        """The model id a new one would replace: the least recently used, preferring one that
        no row uses (None while there is room)."""
        if len(self._mapped) < self.max_loras:
            return None
        for model_id, name in self._mapped.items():
            if not self._rows.get(name):
                return model_id
        return next(iter(self._mapped))

    # ----------------------------------------------------------------- changes
    def new_name(self) -> str:
        """A fresh engine name (never issued before)."""
        self._issued += 1
        return f"lf{self._issued}"

    def make_room(self, model_id: str) -> list[str]:
        """Before loading ``model_id``: unmap the victim if all slots are taken by others.
        Returns the names to delete now (load only after deleting them: the bound holds)."""
        if model_id in self._mapped:
            return []
        victim = self.victim()
        return self.remove(victim) if victim is not None else []

    def add(self, model_id: str, name: str) -> list[str]:
        """Map ``model_id`` to ``name`` (loaded): returns the names to delete now (the one it
        replaces, unless rows still use it; a victim if there was no room)."""
        freed = self.remove(model_id) + self.make_room(model_id)
        self._mapped[model_id] = name
        return freed

    def remove(self, model_id: str) -> list[str]:
        name = self._mapped.pop(model_id, None)
        if name is None:
            return []
        if self._rows.get(name):
            self._retired.add(name)
            return []
        return [name]

    def acquire(self, name: str) -> None:
        """A batch row starts using ``name``."""
        self._rows[name] = self._rows.get(name, 0) + 1

    def release(self, name: str) -> list[str]:
        """A row using ``name`` ended: ``[name]`` when it was retired and this was its last."""
        left = self._rows.get(name, 0) - 1
        if left > 0:
            self._rows[name] = left
            return []
        self._rows.pop(name, None)
        if name in self._retired:
            self._retired.discard(name)
            return [name]
        return []
