"""Reading a checkpoint directory: its configs, index and safetensors headers.

No tensor data is read here, so this is cheap on a 27B checkpoint. It sits
apart from the MTP doctor because the patch reads the same files and because
the index's consistency (what vLLM will load) is a fact of the files, not a
verdict on the MTP head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.safetensors_header import SafetensorsError, SafetensorsHeader, read_header

INDEX_NAME = "model.safetensors.index.json"
QUANT_CONFIG_FILE = "quantization_config.json"
JOURNAL_NAME = ".qtui-mtp-patch.journal"
"""Left in the checkpoint by an interrupted `qtui mtp patch`: the files disagree until it ends."""


class NotACheckpoint(Exception):
    """The path is not a readable checkpoint; the message says why in one line."""


@dataclass
class Checkpoint:
    """Everything the doctor and the patch read: configs, index, headers; no tensor data."""

    path: Path
    config: dict[str, Any]
    quant_file_config: dict[str, Any] | None
    index: dict[str, Any] | None
    headers: dict[str, SafetensorsHeader]
    """Every *.safetensors file in the directory, by file name."""

    @property
    def text_config(self) -> dict[str, Any]:
        text = self.config.get("text_config")
        return text if isinstance(text, dict) else self.config

    @property
    def quant_config(self) -> dict[str, Any] | None:
        """What vLLM reads: config.json's quantization_config."""
        value = self.config.get("quantization_config")
        return value if isinstance(value, dict) else None

    @property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard; without an index, the single shard's tensors."""
        if self.index is not None:
            return dict(self.index.get("weight_map", {}))
        return {name: shard for shard, header in self.headers.items() for name in header.tensors}


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_dir():
        raise NotACheckpoint(f"{path}: not a directory")
    config = _read_json(path / "config.json", required=True)
    assert config is not None
    quant_file = _read_json(path / QUANT_CONFIG_FILE, required=False)
    index = _read_json(path / INDEX_NAME, required=False)
    if index is not None and not isinstance(index.get("weight_map"), dict):
        raise NotACheckpoint(f"{INDEX_NAME}: no weight_map")
    files = sorted(item.name for item in path.glob("*.safetensors") if item.is_file())
    if not files:
        raise NotACheckpoint(f"{path}: no *.safetensors files")
    headers: dict[str, SafetensorsHeader] = {}
    for name in files:
        try:
            headers[name] = read_header(path / name)
        except SafetensorsError as error:
            raise NotACheckpoint(str(error)) from None
    return Checkpoint(path, config, quant_file, index, headers)


def adopt_unindexed_mtp(checkpoint: Checkpoint) -> tuple[Checkpoint, list[str]]:
    """The checkpoint as it would be with unindexed files of mtp.* tensors in its index.

    vLLM loads only what the index names, so an MTP shard left out of it (a
    re-generated index, a copied-in model_extra_tensors.safetensors) is as good
    as missing, yet a patch can adopt it. Only files holding nothing but mtp.*
    tensors, none of them indexed elsewhere, are adopted.
    """
    if checkpoint.index is None:
        return checkpoint, []
    weight_map = checkpoint.weight_map
    indexed_files = set(weight_map.values())
    adopted = []
    for name, header in sorted(checkpoint.headers.items()):
        tensors = list(header.tensors)
        if name in indexed_files or not tensors:
            continue
        if all(t.startswith("mtp.") and t not in weight_map for t in tensors):
            weight_map.update(dict.fromkeys(tensors, name))
            adopted.append(name)
    if not adopted:
        return checkpoint, []
    index = checkpoint.index | {"weight_map": weight_map}
    return replace(checkpoint, index=index), adopted


def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise NotACheckpoint(f"{path.parent}: no {path.name}, not a checkpoint")
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotACheckpoint(f"{path.name}: unreadable ({error})") from None
    if not isinstance(value, dict):
        raise NotACheckpoint(f"{path.name}: not a JSON object")
    return value


# --- index -----------------------------------------------------------------------------


@dataclass
class IndexCheck:
    present: bool
    dangling: list[str] = field(default_factory=list)
    """Index entries whose shard lacks the tensor (or is missing)."""
    unindexed: list[str] = field(default_factory=list)
    """Tensors in an indexed shard that the index does not list."""
    unindexed_files: list[str] = field(default_factory=list)
    """*.safetensors files vLLM will not load because the index does not name them."""
    total_size: int | None = None
    expected_total_size: int = 0

    @property
    def problems(self) -> list[str]:
        """What breaks loading: an index entry whose tensor is not there."""
        if self.dangling:
            return [f"{len(self.dangling)} index entries not in their shard ({self.dangling[0]})"]
        return []

    @property
    def notes(self) -> list[str]:
        """Untidy, but vLLM loads every tensor of an indexed shard and ignores total_size."""
        found = []
        if self.unindexed:
            found.append(f"{len(self.unindexed)} shard tensors not indexed ({self.unindexed[0]})")
        if self.present and self.total_size != self.expected_total_size:
            found.append(
                f"total_size is {self.total_size}, headers sum to {self.expected_total_size}"
            )
        return found


def check_index(checkpoint: Checkpoint) -> IndexCheck:
    if checkpoint.index is None:
        total = sum(header.data_bytes for header in checkpoint.headers.values())
        return IndexCheck(False, expected_total_size=total)
    weight_map = checkpoint.weight_map
    indexed_shards = set(weight_map.values())
    check = IndexCheck(True)
    for name, shard in weight_map.items():
        header = checkpoint.headers.get(shard)
        if header is None or name not in header.tensors:
            check.dangling.append(name)
    for shard in sorted(indexed_shards):
        header = checkpoint.headers.get(shard)
        if header is None:
            continue
        check.expected_total_size += header.data_bytes
        check.unindexed += [name for name in header.tensors if weight_map.get(name) != shard]
    check.unindexed_files = sorted(set(checkpoint.headers) - indexed_shards)
    stored = (checkpoint.index.get("metadata") or {}).get("total_size")
    check.total_size = int(str(stored)) if str(stored).isdigit() else None
    return check
