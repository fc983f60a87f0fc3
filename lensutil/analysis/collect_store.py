"""Where collect_activations puts its rows: in memory, safetensors shards, or raw NumPy memmap files.

On disk everything is written into `<out>.partial/` and renamed to `<out>` only after the last batch
and the index (`collected.json`) are written: os.replace of a directory is atomic on one filesystem,
so a run that is interrupted (an exception, Ctrl-C, a killed kernel) never leaves a directory at
`out` that looks complete. An exception or Ctrl-C also removes the partial directory.

Layout of a finished `out/`:
- `collected.json`: format, hook names, each one's dtype and row shape, the number of rows;
- safetensors: `shard-00000.safetensors`, ... one per batch, each holding every hook's rows of
  that batch plus `_seq` and `_pos` (which sequence and position each row came from);
- memmap: `<hook name>.bin` (rows back to back, C order) and `_seq.bin`, `_pos.bin` (int64).
Open either with `lensutil.analysis.collect_store.load_collected(out)`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

INDEX = "collected.json"
_INDEX_KEYS = ("_seq", "_pos")


def _np_dtype(dtype: torch.dtype):
    if dtype == torch.bfloat16:
        raise InputError("NumPy has no bfloat16, so format='memmap' cannot store it; pass dtype=torch.float16 or "
                         "torch.float32, or use format='safetensors'.")
    return torch.empty((), dtype=dtype).numpy().dtype


class MemoryStore:
    def __init__(self):
        self.parts: dict[str, list[Tensor]] = {}

    def write(self, rows: dict[str, Tensor]) -> None:
        for name, t in rows.items():
            self.parts.setdefault(name, []).append(t)

    def finish(self) -> dict[str, Tensor]:
        return {name: torch.cat(ts) for name, ts in self.parts.items()}

    def abort(self) -> None:
        self.parts.clear()


class DiskStore:
    """Writes batches to `<out>.partial/`; finish() writes the index and renames it to `out`."""

    def __init__(self, out: str | os.PathLike, format: str):
        if format not in ("safetensors", "memmap"):
            raise InputError(f"format must be 'safetensors' or 'memmap', got {format!r}.")
        self.out, self.format = Path(out), format
        if self.out.exists():
            raise InputError(f"{str(self.out)!r} already exists; collect_activations never overwrites. "
                             "Pass a new path, or delete the old one first.")
        self.partial = self.out.with_name(self.out.name + ".partial")
        if self.partial.exists():  # left by a run that was killed: it never finished, so it holds nothing usable
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self.n_rows, self.n_shards, self.meta, self.files = 0, 0, {}, {}

    def write(self, rows: dict[str, Tensor]) -> None:
        n = next(iter(rows.values())).shape[0]
        for name, t in rows.items():
            self.meta.setdefault(name, {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape[1:])})
        if self.format == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in rows.items()}, str(self.partial / f"shard-{self.n_shards:05d}.safetensors"))
        else:
            for name, t in rows.items():
                if name not in self.files:
                    _np_dtype(t.dtype)
                    self.files[name] = open(self.partial / f"{name}.bin", "wb")  # noqa: SIM115 - closed in finish/abort
                self.files[name].write(t.contiguous().numpy().tobytes())
        self.n_rows += n
        self.n_shards += 1

    def _close(self) -> None:
        for f in self.files.values():
            f.close()

    def finish(self) -> Path:
        self._close()
        index = {"format": self.format, "n_rows": self.n_rows, "n_shards": self.n_shards,
                 "hooks": {k: v for k, v in self.meta.items() if k not in _INDEX_KEYS}}
        with open(self.partial / INDEX, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.partial, self.out)
        return self.out

    def abort(self) -> None:
        self._close()
        shutil.rmtree(self.partial, ignore_errors=True)


def load_collected(path: str | os.PathLike) -> dict[str, Tensor]:
    """{hook name: rows, "_seq": sequence of each row, "_pos": its position} from a finished `out`.

    memmap: tensors over np.memmap (nothing is read until used); safetensors: the shards concatenated.
    """
    path = Path(path)
    if not (path / INDEX).exists():
        hint = " It is an unfinished run's directory." if path.name.endswith(".partial") else ""
        raise InputError(f"{str(path)!r} has no {INDEX}: it is not a finished collect_activations output.{hint}")
    index = json.loads((path / INDEX).read_text())
    names = [*index["hooks"], *_INDEX_KEYS]
    if index["format"] == "safetensors":
        from safetensors.torch import load_file

        shards = [load_file(str(path / f"shard-{i:05d}.safetensors")) for i in range(index["n_shards"])]
        return {n: torch.cat([s[n] for s in shards]) for n in names}
    out = {}
    for n in names:
        meta = index["hooks"].get(n, {"dtype": "int64", "shape": []})
        dtype = _np_dtype(getattr(torch, meta["dtype"]))
        if index["n_rows"] == 0:
            out[n] = torch.empty((0, *meta["shape"]), dtype=getattr(torch, meta["dtype"]))
            continue
        # mode "c" (copy-on-write): pages are read from disk when used, and an edit never reaches the file.
        arr = np.memmap(path / f"{n}.bin", dtype=dtype, mode="c", shape=(index["n_rows"], *meta["shape"]))
        out[n] = torch.from_numpy(arr)
    return out
