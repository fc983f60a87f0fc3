"""Models larger than one device: lensutil's blocks placed over GPUs, the CPU and disk by accelerate.

`from_pretrained(..., device_map=..., max_memory=..., offload_folder=..., n_devices=...)` comes
here (lensutil/loading/placed.py loads the weights). The engine is HuggingFace's own
big-model inference, accelerate: it picks the devices (infer_auto_device_map, get_balanced_memory)
and its hooks (AlignDevicesHook) move each block's inputs to the block's device and, for a block
on "disk", load its weights from the offload folder for that block's forward only.

Names in a device map are lensutil's modules: `embed`, `pos_embed` (learned positions only),
`blocks` or `blocks.N`, `ln_final`, `unembed` (or "" for the whole model). A block is never split
(no_split_module_classes): its residual addition needs its attention and MLP on one device.
Devices: "cuda:N" (or the int N, as accelerate writes GPUs), "mps", "cpu", "disk".

What moves where, and what the user sees:
- the residual stream is moved to each block's device as it enters the block, so a hook receives
  tensors on the device of its block and may return them there;
- run_with_cache(device="cpu") gathers every activation onto one device (without it each stays
  on its block's device, as in TransformerLens);
- the KV cache of a layer lives on that layer's device; generate works across devices;
- cfg.device is where inputs go (the device the embedding runs on); `model.hf_device_map` (the
  attribute HuggingFace models carry) and `block_devices(model)` say where each block is, and
  print_hook_list prints it beside each hook.
Weights of a block on "disk" (or, beside a GPU, on "cpu") are on the meta device between forwards:
reading `model.blocks[i].attn.W_Q` (or `model.W_Q`) outside a forward, or `model.to(...)`, raises
OffloadedWeightError saying what to do; `offloaded_weights.read_weight(model, name)` loads one weight.
Load without offload to edit weights.
Tied embeddings are two parameters, W_E and W_U, each placed where its module goes (as without a
device map, and as in TransformerLens).
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Mapping

import torch

from ..architectures.registry import get_adapter
from ..devices import device_for
from ..errors import ConfigError, PlacementError
from .offloaded_weights import Offloaded, guard, read_weight


NO_SPLIT = ["TransformerBlock"]  # accelerate's no_split_module_classes (and preload_module_classes)
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's / HuggingFace's device_map strings


def requested(device_map, max_memory, offload_folder, n_devices) -> bool:
    """Whether from_pretrained was asked to place the model over devices (n_devices=1 is TransformerLens' default)."""
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ConfigError(
            "max_memory and offload_folder take effect only with a device_map; pass device_map='auto' "
            "(accelerate then fills the GPUs, then the CPU, then offload_folder on disk, within max_memory)."
        )
    if n_devices is not None and (not isinstance(n_devices, int) or n_devices < 1):
        raise ConfigError(f"n_devices must be a positive int (TransformerLens' default is 1), got {n_devices!r}.")
    return device_map is not None or (n_devices or 1) > 1


# ---- devices ------------------------------------------------------------------------------------


def present_devices() -> list[str]:
    """The devices this machine has, in accelerate's order of preference, plus "disk"."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = ["mps"] if torch.backends.mps.is_available() else []
    return gpus + mps + ["cpu", "disk"]


def normalise_device(device) -> str:
    """accelerate's spellings (0, "cuda", torch.device("cuda", 1), "cpu", "disk") as one string: "cuda:0", ..."""
    if isinstance(device, bool):
        raise PlacementError(f"{device!r} is not a device. Use 'cuda:N' (or N), 'mps', 'cpu' or 'disk'.")
    if isinstance(device, int):
        return f"cuda:{device}"
    text = str(device)
    return "cuda:0" if text == "cuda" else text


def _check_present(device, where: str) -> str:
    name = normalise_device(device)
    present = present_devices()
    if name not in present:
        gpus = sum(d.startswith("cuda:") for d in present)
        raise PlacementError(
            f"{where} names device {device!r}, which this machine does not have. It has: {', '.join(present)} "
            f"({gpus} GPU{'s' if gpus != 1 else ''}). Name one of those, or use device_map='auto' to let accelerate choose."
        )
    return name


def _accelerate_max_memory(max_memory: dict | None) -> dict | None:
    """max_memory with lensutil's device names checked and turned into accelerate's keys (GPU index, "cpu", ...)."""
    if max_memory is None:
        return None
    if not isinstance(max_memory, Mapping):
        raise PlacementError(f"max_memory is a dict of device -> size (e.g. {{'cpu': '2GB', 0: '20GiB'}}), got {max_memory!r}.")
    out = {}
    for device, size in max_memory.items():
        name = _check_present(device, "max_memory")
        out[int(name.split(":")[1]) if name.startswith("cuda:") else name] = size
    return out


# ---- device maps ----------------------------------------------------------------------------------


def split_over_gpus(n_layers: int, n_devices: int, has_pos_embed: bool) -> dict[str, str]:
    """TransformerLens' n_devices: the blocks in n_devices contiguous, balanced runs over cuda:0..N-1.

    The embeddings go with the first blocks and the unembedding with the last, as TransformerLens 2.0-2.14's
    move_model_modules_to_device placed them (from 2.15 it puts each module on the GPU with the most free
    memory at that moment, devices.get_best_available_device).
    TransformerLens 2.x asserts torch.cuda.device_count() >= n_devices; so does lensutil, with a LensError.
    """
    gpus = torch.cuda.device_count()
    if n_devices > gpus:
        raise PlacementError(
            f"n_devices={n_devices} splits the blocks over {n_devices} GPUs, but this machine has {gpus} "
            f"(devices: {', '.join(present_devices())}). TransformerLens refuses the same ('Not enough CUDA devices "
            f"to support n_devices {n_devices}'). To go beyond one device's memory without GPUs, pass "
            "device_map='auto' with max_memory={'cpu': ...} and offload_folder=... (blocks that do not fit go to disk)."
        )
    device_map = {"embed": "cuda:0", **({"pos_embed": "cuda:0"} if has_pos_embed else {})}
    device_map.update({f"blocks.{i}": f"cuda:{d}" for i, d in enumerate(even_runs(n_layers, n_devices))})
    last = f"cuda:{n_devices - 1}"
    return {**device_map, "ln_final": last, "unembed": last}


def even_runs(n_layers: int, n_devices: int) -> list[int]:
    """The device index of each block: contiguous runs whose lengths differ by at most one, longer runs first.

    (TransformerLens 2.x's get_device_for_block_index gives block i device i // (n_layers // n_devices),
    which for n_layers=30, n_devices=4 sends blocks 28 and 29 to a fifth device.)
    """
    chunk, extra = divmod(n_layers, n_devices)
    return [d for d in range(n_devices) for _ in range(chunk + (d < extra))]


def resolve_device_map(model, device_map, max_memory=None, n_devices=None) -> dict[str, str]:
    """A complete {module: device} map for `model` (on the meta device, already in its final dtype)."""
    if (n_devices or 1) > 1:
        if device_map is not None:
            raise PlacementError("Pass either n_devices (TransformerLens' even split over GPUs) or device_map, not both.")
        return split_over_gpus(model.cfg.n_layers, n_devices, hasattr(model, "pos_embed"))
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            close = difflib.get_close_matches(device_map, STRATEGIES, n=1)
            raise PlacementError(
                f"device_map={device_map!r} is not one of accelerate's strategies {STRATEGIES}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + ", nor a device map dict like {'embed': 'cpu', 'blocks.0': 'cpu', 'blocks.1': 'disk', ...}."
            )
        return expand(model, _infer(model, device_map, _accelerate_max_memory(max_memory)))
    if isinstance(device_map, (str, int, torch.device)) or not isinstance(device_map, Mapping):
        raise PlacementError(f"device_map must be one of {STRATEGIES} or a dict of module name -> device, got {device_map!r}.")
    return expand(model, check_device_map(model, device_map))


def _infer(model, strategy: str, max_memory: dict | None) -> dict[str, str]:
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if strategy != "sequential" and torch.cuda.device_count() > 1:
        max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=NO_SPLIT,
                                         low_zero=strategy == "balanced_low_0")
    inferred = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT)
    return {name: normalise_device(d) for name, d in inferred.items() if _has_weights(model, name)}


def _has_weights(model, name: str) -> bool:
    module = model.get_submodule(name) if name else model
    return next(iter(module.state_dict()), None) is not None


def units(model) -> list[str]:
    """The modules a device map places, in order: embed, pos_embed, blocks.0 ... blocks.N-1, ln_final, unembed
    (those with weights; "blocks" and "" name several at once)."""
    top = [n for n, _ in model.named_children() if _has_weights(model, n)]
    blocks = [f"blocks.{i}" for i in range(model.cfg.n_layers)]
    return [n for n in top if n in ("embed", "pos_embed")] + blocks + [n for n in top if n not in ("embed", "pos_embed", "blocks")]


def expand(model, device_map: Mapping) -> dict[str, str]:
    """The device map with one entry per unit (accelerate's may say {"": "cpu"} or {"blocks": "disk"})."""
    return {unit: device_for(device_map, unit) for unit in units(model)}


def check_device_map(model, device_map: Mapping) -> dict[str, str]:
    """A user's device map checked against the model: real module names, unsplit blocks, present devices, all covered."""
    names = dict(model.named_modules())
    allowed = units(model)
    out = {}
    for name, device in device_map.items():
        if name != "" and name not in names:
            close = difflib.get_close_matches(str(name), allowed, n=3, cutoff=0.5)
            raise PlacementError(
                f"device_map names {name!r}, which is not a module of this model"
                + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                + f". lensutil's module names are: {', '.join(allowed)} (or 'blocks' for all blocks, '' for the whole "
                "model). (HuggingFace's names, like 'model.layers.0', "
                "belong to the HuggingFace model: use lensutil.loading.placement.hf_device_map to translate.)"
            )
        parts = str(name).split(".")
        if len(parts) > 2 and parts[0] == "blocks":
            raise PlacementError(
                f"device_map splits block {'.'.join(parts[:2])} ({name!r}). A block is never split over devices: "
                f"place the whole block, e.g. {{'{'.'.join(parts[:2])}': {device!r}}}."
            )
        out[name] = _check_present(device, f"device_map[{name!r}]")
    covered = lambda key: any(n == "" or key == n or key.startswith(n + ".") for n in out)  # noqa: E731
    missing = sorted({_unit_of(key) for key in model.state_dict() if not covered(key)}, key=allowed.index)
    if missing:
        raise PlacementError(
            f"device_map gives no device for {', '.join(missing)}. Every module with weights needs one: add them, "
            "or use device_map='auto'."
        )
    return out


def _unit_of(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def main_device(device_map: Mapping) -> str:
    """Where inputs go and offloaded weights run: the embedding's device if it is a GPU, else the first GPU, else the CPU."""
    embed = device_for(device_map, "embed.W_E")
    if embed not in ("cpu", "disk"):
        return embed
    gpus = sorted({d for d in device_map.values() if d not in ("cpu", "disk")})
    return gpus[0] if gpus else "cpu"


def block_devices(model) -> list[str]:
    """Where each block's weights live ("cuda:0", "cpu", "disk", ...); lensutil's own (TransformerLens computes
    get_device_for_block_index(i, cfg) from cfg.n_devices)."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return [model.cfg.device] * model.cfg.n_layers
    return [device_for(device_map, f"blocks.{i}") for i in range(model.cfg.n_layers)]


def hf_device_map(device_map: Mapping, hf_model_or_config) -> dict[str, str]:
    """The same placement for the HuggingFace model, in its module names (to load it with HuggingFace's device_map)."""
    config = getattr(hf_model_or_config, "config", hf_model_or_config)
    layout = get_adapter(config).layout
    names = {"embed": layout.embed, "ln_final": layout.final_norm, "unembed": "lm_head",
             "pos_embed": layout.embed.rsplit(".", 1)[0] + ".wpe", "blocks": layout.layers}
    out = {}
    for name, device in device_map.items():
        head, _, rest = name.partition(".")
        out[names[head] + ("." + rest if rest else "")] = device
    return out


# ---- memory -----------------------------------------------------------------------------------


def memory_footprint(model, dtype: torch.dtype | None = None) -> dict[str, int]:
    """Bytes of weights per placeable module (embed, blocks.N, ...) in `dtype` (default: as stored).

    Works on a model on the meta device, so a 7B model's needs are known without its weights.
    """
    sizes: dict[str, int] = {}
    for key, t in model.state_dict(keep_vars=True).items():  # shapes only: an offloaded weight is not read
        item = torch.empty((), dtype=dtype or t.dtype).element_size()
        sizes[_unit_of(key)] = sizes.get(_unit_of(key), 0) + t.numel() * item
    return sizes


# ---- dispatch ----------------------------------------------------------------------------------


def offload_dir(offload_folder) -> str:
    """A fresh folder inside offload_folder: two models offloaded to one folder must not share files."""
    os.makedirs(offload_folder, exist_ok=True)
    return tempfile.mkdtemp(prefix="lensutil-offload-", dir=offload_folder)


class OffloadFolder(Mapping):
    """The weights offloaded to a folder, in accelerate's format (one raw `<name>.dat` per weight and an
    `index.json` of dtypes and shapes), plus any kept in RAM (`in_ram`): the weights map accelerate's
    hooks read a module's weights from at each forward.

    Two differences from accelerate's offload_weight / OffloadedWeightsLoader, both about memory:
    - each weight is written in its parameter's memory order and read back as a view with the
      parameter's strides ("order" in the index; accelerate ignores it). lensutil stores matrices
      that feed F.linear as [out, in] (components._param says why: the same BLAS kernels, so the same
      bits, as HuggingFace), while accelerate reads a weight back contiguous in its axis order;
    - files are read and written with plain file calls, not numpy memory maps: the pages of a
      mapped file count in the process's RSS while it is mapped.
    """

    def __init__(self, folder: str | None, in_ram: dict | None = None):
        self.folder, self.in_ram = folder, dict(in_ram or {})
        self.index = {}
        if folder is not None:
            with open(os.path.join(folder, "index.json")) as f:
                self.index = json.load(f)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.in_ram:
            return self.in_ram[key]
        info = self.index[key]
        t = torch.empty(info["shape"], dtype=getattr(torch, info["dtype"]))
        with open(os.path.join(self.folder, f"{key}.dat"), "rb") as f:
            f.readinto(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        order = info.get("order")
        return t if order is None else t.permute(*sorted(range(len(order)), key=order.__getitem__))

    def __iter__(self):
        return iter([*self.in_ram, *self.index])

    def __len__(self) -> int:
        return len(self.in_ram) + len(self.index)


def offload(value: torch.Tensor, key: str, folder: str, index: dict, order: list[int]) -> None:
    """Write `value` to `folder` in memory order `order` (OffloadFolder reads it back); add it to `index`."""
    data = value.permute(*order).contiguous()
    with open(os.path.join(folder, f"{key}.dat"), "wb") as f:
        f.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    index[key] = {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(data.shape), "order": order}


def save_index(index: dict, folder: str) -> None:
    path = os.path.join(folder, "index.json")
    if os.path.exists(path):
        with open(path) as f:
            index = {**json.load(f), **index}
    with open(path, "w") as f:
        json.dump(index, f)


def dispatch(model, device_map: dict[str, str], folder: str | None):
    """Attach accelerate's hooks so `model` runs with its weights where `device_map` put them.

    accelerate's dispatch_model, step for step, with one change: the weights map is an OffloadFolder
    (which says why). Every weight not on disk is already on its device.
    """
    from accelerate.hooks import attach_align_device_hook_on_blocks

    main = main_device(device_map)
    devices = set(device_map.values())
    if len(devices) > 1 or "disk" in devices:
        offloaded = ("disk",) if main == "cpu" else ("cpu", "disk")  # with a GPU, "cpu" blocks run on it too
        execution = {name: main if d in ("cpu", "disk") else d for name, d in device_map.items()}
        execution[""] = main
        offload = {name: d in offloaded for name, d in device_map.items()}
        cpu_weights = {k: v for k, v in model.state_dict().items()
                       if "cpu" in offloaded and device_for(device_map, k) == "cpu"}
        weights_map = None
        if cpu_weights or folder is not None:
            weights_map = OffloadFolder(folder, cpu_weights)
        attach_align_device_hook_on_blocks(model, execution_device=execution, offload=offload, weights_map=weights_map,
                                           preload_module_classes=NO_SPLIT)
        # Reading an offloaded weight between forwards: a clear error; the model's read_weight reads it from its place.
        guard(model, {n: Offloaded(n, device_map[n], main, weights_map) for n, off in offload.items() if off})
        model._weight_reader = read_weight
    model.hf_device_map = dict(device_map)
    model.cfg.device = main
    return model
