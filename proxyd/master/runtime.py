"""The layered runtime in the master: Envoy's ``Runtime::LoaderImpl``.

:class:`RuntimeLoader` holds the layers of ``layered_runtime`` (``proxyd.config.runtime``)
and merges them in order, a later layer overriding an earlier one, into
:attr:`RuntimeLoader.values`; the master puts those in every epoch it publishes
(``Master.set_epoch``) and publishes a new epoch when they change, so workers see a
runtime change as they see any other.

* **static_layer**: from the bootstrap, fixed until a reload.
* **disk_layer**: the files under ``symlink_root/subdirectory[/cluster]``, read when the
  config is loaded and again whenever ``symlink_root`` is swapped (Envoy watches for a
  rename onto it: ``ln -s new tmp && mv -T tmp symlink_root``). It is checked every
  :data:`WATCH_INTERVAL_S`; editing a file in place is not a swap and, as in Envoy, is
  not seen until the next one. A file is one key: its path below the directory with
  "/" read as "."; lines starting with "#" are comments, and the last line loses its
  trailing white space. A directory that does not exist is an empty layer; a tree that
  cannot be read keeps the layer's previous values (``runtime.load_error``).
* **admin_layer**: what ``POST /runtime_modify?key=value`` sets (an empty value removes
  the key); kept across reloads while the config has an admin layer.
* **rtds_layer**: the Runtime resource of that name as the xDS client last accepted it
  (:meth:`RuntimeLoader.set_rtds`), read as a static layer; empty until one arrives.
  A change flows to the workers as an admin change does.

Stats, with Envoy's names: ``runtime.load_success``, ``runtime.load_error``,
``runtime.num_keys``, ``runtime.num_layers``, ``runtime.admin_overrides_active``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proxyd.config.runtime import RuntimeLayer, from_string
from proxyd.epoch import RuntimeValue
from proxyd.log import get_logger
from proxyd.stats import StatsStore

WATCH_INTERVAL_S = 0.25
MAX_WALK_DEPTH = 16  # Envoy's DiskLayer MaxWalkDepth

log = get_logger("proxyd.master.runtime")


class RuntimeLoadError(Exception):
    """A disk layer's tree could not be read."""


class RuntimeLoader:
    def __init__(self, stats: StatsStore) -> None:
        self.stats = stats
        self.layers: tuple[RuntimeLayer, ...] = ()
        # Each layer's values by key, in layer order (the admin layer's is self.admin).
        self._layer_values: list[dict[str, RuntimeValue]] = []
        self.admin: dict[str, RuntimeValue] = {}
        # What RTDS delivered, by Runtime resource name (kept across reloads: the xDS
        # client says when its subscriptions start afresh).
        self._rtds: dict[str, tuple[RuntimeValue, ...]] = {}
        self.values: tuple[RuntimeValue, ...] = ()
        self._signatures: dict[str, Any] = {}  # symlink_root → what it pointed at
        self._changed = trio.Event()
        self._has_disk = trio.Event()  # set while a disk layer is configured
        stats.ensure_counters(["runtime.load_success", "runtime.load_error"])

    # -- loading ------------------------------------------------------------------------

    def configure(self, layers: tuple[RuntimeLayer, ...]) -> None:
        """Take the layers of a (re)loaded config; read the disk layers now."""
        if not any(layer.kind == "admin" for layer in layers):
            self.admin = {}
        self.layers = layers
        self._signatures = {
            layer.symlink_root: _signature(layer.symlink_root)
            for layer in layers
            if layer.kind == "disk"
        }
        self._layer_values = [self._load_layer(layer, {}) for layer in layers]
        self._merge()
        self._disk_configured()

    def _disk_configured(self) -> None:
        if self._signatures:
            self._has_disk.set()
        elif self._has_disk.is_set():
            self._has_disk = trio.Event()

    def state(self) -> tuple[Any, ...]:
        """What :meth:`restore` puts back (a reload that failed)."""
        return (self.layers, self._layer_values, self.admin, self._signatures)

    def restore(self, state: tuple[Any, ...]) -> None:
        self.layers, self._layer_values, self.admin, self._signatures = state
        self._merge()
        self._disk_configured()

    def _load_layer(self, layer: RuntimeLayer, previous: dict[str, RuntimeValue]) -> dict[str, RuntimeValue]:  # fmt: skip
        if layer.kind == "static":
            return {v.key: v for v in layer.static}
        if layer.kind == "admin":
            return self.admin
        if layer.kind == "rtds":
            return {v.key: v for v in self._rtds.get(layer.rtds_name, ())}
        try:
            values = read_disk_layer(layer.directory)
        except RuntimeLoadError as exc:
            self.stats.add_counter("runtime.load_error")
            log.error("runtime_load_failed", layer=layer.name, error=str(exc))
            return previous
        return values

    def _merge(self) -> None:
        merged: dict[str, RuntimeValue] = {}
        for layer, layer_values in zip(self.layers, self._layer_values, strict=True):
            merged.update(self.admin if layer.kind == "admin" else layer_values)
        values = tuple(merged[k] for k in sorted(merged))
        self.stats.add_counter("runtime.load_success")
        self.stats.set_gauge("runtime.num_keys", len(values))
        self.stats.set_gauge("runtime.num_layers", len(self.layers))
        self.stats.set_gauge("runtime.admin_overrides_active", 1 if self.admin else 0)
        if values != self.values:
            self.values = values
            self._changed.set()

    # -- RTDS ---------------------------------------------------------------------------

    def set_rtds(self, layers: dict[str, tuple[RuntimeValue, ...]]) -> None:
        """The Runtime resources the xDS client holds now, by name."""
        self._rtds = dict(layers)
        self._layer_values = [
            self._load_layer(layer, values) if layer.kind == "rtds" else values
            for layer, values in zip(self.layers, self._layer_values, strict=True)
        ]
        self._merge()

    # -- the admin layer ----------------------------------------------------------------

    @property
    def has_admin_layer(self) -> bool:
        return any(layer.kind == "admin" for layer in self.layers)

    def modify(self, changes: dict[str, str]) -> None:
        """Envoy's ``AdminLayer::mergeValues``: set each key, or remove it when the
        value is empty. The caller checked :attr:`has_admin_layer`."""
        for key, raw in changes.items():
            if raw:
                self.admin[key] = from_string(key, raw)
            else:
                self.admin.pop(key, None)
        self._merge()

    # -- /runtime -----------------------------------------------------------------------

    def admin_json(self) -> dict[str, Any]:
        """``/runtime`` as Envoy prints it: layer names, and each key's value in every
        layer ("" where a layer does not have it) with the merged one."""
        layer_values = [
            self.admin if layer.kind == "admin" else values
            for layer, values in zip(self.layers, self._layer_values, strict=True)
        ]
        entries = {}
        for v in self.values:
            entries[v.key] = {
                "final_value": v.raw,
                "layer_values": [lv[v.key].raw if v.key in lv else "" for lv in layer_values],
            }
        return {"entries": entries, "layers": [layer.name for layer in self.layers]}

    # -- watching -----------------------------------------------------------------------

    async def run(self, publish: Callable[[], Awaitable[object]]) -> None:
        """Watch the disk layers' symlinks and call ``publish`` after each change of
        :attr:`values` (a swap, an admin change, a reload: the reload publishes its
        own epoch, and ``publish`` then finds nothing new)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disk)
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                await publish()

    async def _watch_disk(self) -> None:
        while True:
            await self._has_disk.wait()  # no disk layer: nothing to look at
            await trio.sleep(WATCH_INTERVAL_S)
            swapped = False
            for root, seen in list(self._signatures.items()):
                now = _signature(root)
                if now != seen:
                    self._signatures[root] = now
                    swapped = True
                    log.info("runtime_symlink_swapped", symlink_root=root)
            if swapped:
                self._layer_values = [
                    self._load_layer(layer, values) if layer.kind == "disk" else values
                    for layer, values in zip(self.layers, self._layer_values, strict=True)
                ]
                self._merge()


def _signature(path: str) -> Any:
    """What a swap of ``path`` changes: the link's inode and target (None: absent)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    try:
        target = os.readlink(path)
    except OSError:
        target = ""  # a plain directory: its inode changes when one is renamed onto it
    return (st.st_ino, st.st_dev, target)


def read_disk_layer(directory: str) -> dict[str, RuntimeValue]:
    """Envoy's ``DiskLayer``: every regular file under ``directory`` is a key."""
    if not os.path.isdir(directory):
        return {}
    values: dict[str, RuntimeValue] = {}
    _walk(directory, "", 0, values)
    return values


def _walk(path: str, prefix: str, depth: int, values: dict[str, RuntimeValue]) -> None:
    if depth > MAX_WALK_DEPTH:
        raise RuntimeLoadError(f"Walk recursion depth exceeded {MAX_WALK_DEPTH}")
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        raise RuntimeLoadError(f"cannot read {path}: {exc.strerror}") from exc
    for entry in entries:
        key = f"{prefix}.{entry.name}" if prefix else entry.name
        try:
            if entry.is_dir():
                _walk(entry.path, key, depth + 1, values)
            elif entry.is_file():
                with open(entry.path, "rb") as f:
                    text = f.read().decode("utf-8", errors="replace")
                values[key] = from_string(key, disk_value(text))
        except OSError as exc:
            raise RuntimeLoadError(f"cannot read {entry.path}: {exc.strerror}") from exc


def disk_value(text: str) -> str:
    """A file's value: Envoy drops empty lines and lines starting with "#", keeps the
    others with their newline, and trims the trailing white space of the last line
    (and of any line equal to it)."""
    lines = [line for line in text.split("\n") if line]
    if not lines:
        return ""
    last = lines[-1]
    out = []
    for line in lines:
        if line.startswith("#"):
            continue
        out.append(line.rstrip(" \t\n\v\f\r") if line == last else line + "\n")
    return "".join(out)
