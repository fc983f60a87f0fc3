"""Loading a placed model straight to where its weights live (from_pretrained with a device_map).

No float32 copy of the whole model is made in RAM first:

1. The model is built on the meta device (shapes, no data), and its weight processing runs there
   too: that gives the processed structure (folded norms, cfg flags, the ProcessingReport and its
   warnings) and each weight's final dtype, from which accelerate sizes the device map.
2. The checkpoint's tensors are read from its safetensors files one block at a time (the weights
   outside the blocks first), converted by the architecture's adapter and processed by the same
   functions process_weights_ uses. Every processing step is local to one block, except
   ln_final -> unembed, which is done with the other weights outside the blocks; the rest of the
   state dict is meta tensors, so the arithmetic on each weight is exactly the in-RAM path's (the
   inputs are laid out in memory as the model's parameters are, as they are there).
3. Each processed weight is cast to `dtype` and put into its parameter on its device, or written
   to the offload folder (placement.LaidOutWeights reads it back); accelerate's hooks do the rest.

Where streaming cannot give the in-RAM result (an `hf_model` passed in, a checkpoint without
safetensors, one whose tensor names transformers renames on load, such as Mixtral's experts, or
a LayerNorm-and-gated-MLP model whose folding looks at the values), the model is converted in RAM as
from_pretrained always does and then placed the same way.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import torch

from ..architectures.registry import get_adapter
from ..config import compute_dtype
from ..errors import ConfigError
from ..model.initialization import loading_weights
from ..model.processing import (
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights_,
)
from ..model.transformer import HookedTransformer
from ..model.weight_layout import empty_in_order, memory_order
from . import hf_source, placement as pl
from .convert import DEFAULT_PROCESSING, convert_into, name_overrides
from .hf_quantized import hf_linears
from .hf_source import _explain_hub_error, _refuse_encoder, resolve_source
from .progress_bars import quiet_local_loading
from .quantization import prepare_from_hf, quantize_


def load_placed(name_or_path: str, *, hf_model, tokenizer, dtype, revision, token, overrides: dict, options: dict,
                bnb_config, device_map, max_memory, offload_folder, n_devices) -> HookedTransformer:
    # With an hf_model given, nothing is read from its name (its config and weights are in hand).
    source, hub = _local_source(name_or_path, revision, token, want_weights=True) if hf_model is None else (None, {})
    hf_config, tokenizer = _config_and_tokenizer(name_or_path, source, hub, hf_model, tokenizer)
    adapter = get_adapter(hf_config)
    raw_cfg = adapter.config_from_hf(hf_config, **overrides)
    raw_cfg.dtype = compute_dtype(dtype)
    checkpoint = None if hf_model is not None else Checkpoint.open(source, hf_config)
    if checkpoint is not None and raw_cfg.normalization_type == "LN" and raw_cfg.gated_mlp and options.get("fold_ln"):
        checkpoint = None  # fold_layer_norm checks ln2.b's values before it folds: load in RAM
    if checkpoint is None:
        return _place_in_ram(name_or_path, hf_model, tokenizer, dtype, overrides, options, bnb_config, device_map,
                             max_memory, offload_folder, n_devices)

    model, applied = _meta_model(raw_cfg, tokenizer, options, dtype)
    device_map = pl.resolve_device_map(model, device_map, max_memory, n_devices)
    _refuse_offloaded_quantisation(device_map, bnb_config)
    folder = _folder(device_map, offload_folder)
    layout = {k: (p.shape, p.stride()) for k, p in _meta_model(raw_cfg, tokenizer, {}, dtype)[0].state_dict().items()}
    for lens_part, hf_part in groups(adapter.layout, raw_cfg.n_layers):
        if any(lens_part(k) for k in layout):
            _put(model, _group_values(checkpoint, adapter, raw_cfg, layout, applied, lens_part, hf_part), device_map, folder)
    return _finish(model, device_map, folder, bnb_config)


def _refuse_offloaded_quantisation(device_map: dict, bnb_config) -> None:
    offloaded = [n for n, d in device_map.items() if d == "disk" or (d == "cpu" and pl.main_device(device_map) != "cpu")]
    if bnb_config is not None and offloaded:
        raise pl.PlacementError(
            f"A quantised model cannot be offloaded: the device map offloads {', '.join(offloaded[:6])} (to disk, or to "
            "the CPU beside a GPU), and bitsandbytes weights are quantised on the device that runs them. HuggingFace "
            "refuses the same unless llm_int8_enable_fp32_cpu_offload=True keeps those modules unquantised. Give "
            "max_memory enough room (4-bit weights take about a quarter of bfloat16's; the device map is sized for the "
            "unquantised weights, so it errs on the safe side), or load unquantised with offload_folder=..."
        )


# ---- the checkpoint, tensor by tensor ------------------------------------------------------------


class Checkpoint:
    """A checkpoint's tensors under the names the HuggingFace model's state_dict has, read one at a time.

    Read with plain file reads rather than safetensors' memory map: pages of a mapped file count in
    the process's RSS while the file stays mapped, so reading a whole checkpoint through one mapping
    would hold all of it "in memory" by the end of loading.
    """

    def __init__(self, where: dict[str, tuple[str, dict]], aliases: dict[str, str], shapes: dict[str, torch.Size]):
        self.where, self.aliases, self.shapes = where, aliases, shapes

    @classmethod
    def open(cls, source: str, hf_config) -> "Checkpoint | None":
        """None when the files cannot stand in for the HF model's state dict (then the model loads in RAM)."""
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        files = sorted(glob.glob(os.path.join(source, "*.safetensors")))
        if not files:
            return None
        with init_empty_weights():
            hf_meta = AutoModelForCausalLM.from_config(hf_config)
        hf_meta.tie_weights()  # from_config leaves a tied lm_head untied on the meta device
        shapes = {k: v.shape for k, v in hf_meta.state_dict().items()}
        where = {k: (f, entry) for f in files for k, entry in _safetensors_header(f).items() if k in shapes}
        aliases = {}
        # A tied lm_head is not saved: HuggingFace's lm_head.weight is the embedding's Parameter itself.
        params = dict(hf_meta.named_parameters(remove_duplicate=False))
        embedding = hf_meta.get_input_embeddings().weight
        saved = [n for n, p in params.items() if p is embedding and n in where]
        for k in set(shapes) - set(where):
            if saved and params.get(k) is embedding:
                aliases[k] = saved[0]
        if set(shapes) - set(where) - set(aliases):  # names transformers renames on load (e.g. fused experts)
            return None
        return cls(where, aliases, shapes)

    def read(self, key: str) -> torch.Tensor:
        path, entry = self.where[self.aliases.get(key, key)]
        start, end = entry["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(entry["base"] + start)
            f.readinto(memoryview(raw.numpy()))
        t = raw.view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        # float32, as load_hf loads the HuggingFace model: the adapter then sees the in-RAM path's tensors.
        return t.to(torch.float32)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _safetensors_header(path: str) -> dict[str, dict]:
    """The tensors of a .safetensors file: its JSON header (8-byte little-endian length, then JSON), each
    entry with the offset where the data starts ("base")."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return {k: {**v, "base": 8 + length} for k, v in header.items()}


def groups(layout, n_layers: int) -> list[tuple]:
    """(lensutil keys, HF keys) of each piece loaded at once: the embeddings, the unembedding with the final
    norm (fold_ln folds one into the other), anything else outside the blocks, then each block."""
    layers = layout.layers + "."
    wpe = layout.embed.rsplit(".", 1)[0] + ".wpe."
    outside = ("blocks.", "embed.", "pos_embed.", "ln_final.", "unembed.")
    out = [
        (lambda k: k.startswith("embed."), lambda k: k.startswith(layout.embed + ".")),
        (lambda k: k.startswith("pos_embed."), lambda k: k.startswith(wpe)),
        (lambda k: k.startswith(("ln_final.", "unembed.")), lambda k: k.startswith(("lm_head.", layout.final_norm + "."))),
        (lambda k: not k.startswith(outside), lambda k: not k.startswith(layers)),
    ]
    return out + [(lambda k, i=i: k.startswith(f"blocks.{i}."), lambda k, i=i: k.startswith(f"{layers}{i}."))
                  for i in range(n_layers)]


def _group_values(checkpoint: Checkpoint, adapter, raw_cfg, layout: dict, applied: list[str], lens_part, hf_part) -> dict:
    """The processed float32 weights whose lensutil names `lens_part` accepts, read from the HF tensors
    `hf_part` accepts (all tensors outside the blocks if the adapter needs more: then a weight comes out meta)."""
    def converted(hf_part):
        hf_sd = {k: checkpoint.read(k) if hf_part(k) else torch.empty(s, device="meta") for k, s in checkpoint.shapes.items()}
        return adapter.convert(hf_sd, raw_cfg)

    out = converted(hf_part)
    if any(lens_part(k) and v.is_meta for k, v in out.items()):
        layers = adapter.layout.layers + "."
        out = converted(lambda k: not k.startswith(layers))
    sd = {}
    for k in list(out):
        v = out.pop(k)  # one converted weight alive at a time beside the laid-out copies
        if lens_part(k):  # laid out as the model's parameter, so processing rounds as process_weights_ does
            shape, stride = layout[k]
            v = v.detach()
            same = v.shape == shape and v.stride() == stride and v.dtype == raw_cfg.dtype
            sd[k] = v if same else torch.empty_strided(shape, stride, dtype=raw_cfg.dtype).copy_(v)
        else:
            sd[k] = torch.empty(layout[k][0], dtype=raw_cfg.dtype, device="meta")
        del v
    steps = {"fold_ln": lambda s: fold_layer_norm(s, raw_cfg),
             "center_writing_weights": lambda s: center_writing_weights(s, raw_cfg),
             "center_unembed": center_unembed, "fold_value_biases": lambda s: fold_value_biases(s, raw_cfg)}
    for option in applied:
        sd = steps[option](sd)
    return {k: v for k, v in sd.items() if lens_part(k)}


# ---- the model on meta, and putting weights in place --------------------------------------------


def _meta_model(cfg, tokenizer, options: dict, dtype) -> tuple[HookedTransformer, list[str]]:
    """The model on the meta device, processed as `options` say (its structure and flags), in `dtype`."""
    from accelerate import init_empty_weights

    cfg = dataclasses.replace(cfg, device="meta")
    with init_empty_weights(), torch.device("meta"), loading_weights():
        model = HookedTransformer(cfg, tokenizer)
    applied: list[str] = []
    if any(v is not False for v in options.values()):
        applied = process_weights_(model, **options).applied
    return model.to(dtype).eval(), applied


def _folder(device_map: dict, offload_folder) -> str | None:
    if "disk" not in device_map.values():
        return None
    if offload_folder is None:
        on_disk = [n for n, d in device_map.items() if d == "disk"]
        raise pl.PlacementError(
            f"The device map puts {', '.join(on_disk[:6])}{' ...' if len(on_disk) > 6 else ''} on disk, but no "
            "offload_folder was given to hold them. If you passed max_memory, it is too small for those to fit "
            "in memory (accelerate also keeps room for the largest module it offloads): pass offload_folder='some/dir' "
            "to offload them to disk, or raise max_memory. lensutil.loading.placement.memory_footprint(model) gives each module's size."
        )
    return pl.offload_dir(offload_folder)


def _put(model, values: dict, device_map: dict, folder: str | None) -> None:
    """Each weight into its parameter on its device, or (for "disk") into the offload folder, in memory order."""
    from accelerate.utils import set_module_tensor_to_device

    own = model.state_dict()
    index = {}
    for key in list(values):
        value, meta = values.pop(key), own[key]
        device = pl.device_for(device_map, key)
        if device == "disk":
            pl.offload(value.to(meta.dtype), key, folder, index, memory_order(meta))
        else:
            set_module_tensor_to_device(model, key, device, value=empty_in_order(meta, device).copy_(value))
        del value
    if index:
        pl.save_index(index, folder)
    for module in model.modules():  # fused weights in one storage again, as without a device map: one matmul
        if hasattr(module, "share_fused_storage"):  # weights left on disk (meta here) stay apart
            module.share_fused_storage()


def _finish(model, device_map, folder, bnb_config=None, quantized_hf=None) -> HookedTransformer:
    """Dispatch, then quantise; `quantized_hf`: the HF model bitsandbytes quantised it was converted from."""
    pl.dispatch(model, device_map, folder)
    model.setup()
    if bnb_config is not None:  # quantised last, on the device each weight is on (quantization.quantize_'s contract)
        quantize_(model, bnb_config, hf_linears(quantized_hf, model) if quantized_hf is not None else None)
    return model.eval()


def _place_in_ram(name_or_path, hf_model, tokenizer, dtype, overrides, options, bnb_config, device_map, max_memory,
                  offload_folder, n_devices):
    """Convert and process in RAM (from_pretrained's usual path), then place the weights the same way."""
    if hf_model is None:
        hf_model, loaded_tokenizer = hf_source.load_hf(name_or_path)
        tokenizer = tokenizer or loaded_tokenizer
    # An hf_model that bitsandbytes already quantised: converted dequantised, then its quantised modules copied.
    hf_state_dict, bnb_config = prepare_from_hf(hf_model, bnb_config, options)
    full = convert_into(HookedTransformer, hf_model, tokenizer, dtype, overrides, hf_state_dict)
    if any(v is not False for v in options.values()):
        process_weights_(full, **options)
    values = full.state_dict()
    model, _ = _meta_model(full.cfg, tokenizer, {}, dtype)
    device_map = pl.resolve_device_map(model, device_map, max_memory, n_devices)
    _refuse_offloaded_quantisation(device_map, bnb_config)
    folder = _folder(device_map, offload_folder)
    _put(model, values, device_map, folder)
    del full, values
    return _finish(model, device_map, folder, bnb_config, hf_model if hf_state_dict is not None else None)


# ---- where the files are ----------------------------------------------------------------------


def _local_source(name_or_path: str, revision, token, want_weights: bool) -> tuple[str, dict]:
    """A local directory for the model: a zoo entry, a directory, or a hub snapshot (config, tokenizer, safetensors)."""
    source = resolve_source(name_or_path)
    if os.path.isdir(source):
        return source, {}
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "*.model", "*.jinja"] + (["*.safetensors"] if want_weights else [])
        return snapshot_download(source, revision=revision, token=token, allow_patterns=patterns), {}
    except Exception as err:  # offline, gated, unknown name: the same advice as load_hf gives
        raise _explain_hub_error(name_or_path, err) from err


def _config_and_tokenizer(name_or_path, source, hub, hf_model, tokenizer):
    from transformers import AutoConfig, AutoTokenizer

    if hf_model is not None:
        return hf_model.config, tokenizer
    with quiet_local_loading(True):
        _refuse_encoder(name_or_path, source, hub)
        return AutoConfig.from_pretrained(source, **hub), tokenizer or AutoTokenizer.from_pretrained(source, **hub)


def empty_model(name_or_cfg, *, dtype=torch.float32, revision=None, token=None, **options) -> HookedTransformer:
    """The model on the meta device, processed as from_pretrained would process it, without reading a weight.

    Its module names (placement.units) and sizes (placement.memory_footprint) say what fits where
    before anything is loaded. `name_or_cfg` is a name as from_pretrained takes it, or a
    HookedTransformerConfig (e.g. a 7B model's sizes, to estimate it). lensutil's own; accelerate's
    equivalent for a HuggingFace model is `with init_empty_weights(): AutoModelForCausalLM.from_config(config)`.
    """
    if isinstance(name_or_cfg, str):
        from transformers import AutoConfig

        source, hub = _local_source(name_or_cfg, revision, token, want_weights=False)
        hf_config = AutoConfig.from_pretrained(source, **hub)
        cfg = get_adapter(hf_config).config_from_hf(hf_config, **name_overrides(name_or_cfg, "eager"))
    else:
        cfg = dataclasses.replace(name_or_cfg)
    cfg.dtype = compute_dtype(dtype)
    unknown = set(options) - set(DEFAULT_PROCESSING)
    if unknown:
        raise ConfigError(f"Unknown options {sorted(unknown)}; the processing options are {tuple(DEFAULT_PROCESSING)}.")
    return _meta_model(cfg, None, {**DEFAULT_PROCESSING, **options}, dtype)[0]


def describe(model) -> str:
    """One line per placed module: its device and its weights' size (lensutil's own)."""
    sizes = pl.memory_footprint(model)
    device_map = getattr(model, "hf_device_map", None) or {"": model.cfg.device}
    lines = [f"{unit:<12} {pl.device_for(device_map, unit + '.'):<8} {size / 2**20:8.1f} MiB" for unit, size in sizes.items()]
    return "\n".join(lines)

