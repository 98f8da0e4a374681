"""Artifact I/O in safe formats only (no pickle). Import each name from the file that holds it:

* `atomic`: `atomic_output`, `AtomicPath`, `save_json`: an artifact is written to a temporary
  sibling and renamed into place only on success, so an interrupted stage never leaves a half
  artifact that DVC could cache.
* `safetensors`: `save_safetensors`, `load_safetensors`, `read_safetensors_metadata`,
  `safetensors_bytes`: tensors plus a str -> str metadata dict, byte-identical files for
  identical inputs.
* `ragged`: `RaggedWriter`, `RaggedPartWriter` + `finish_ragged`, `RaggedReader`, `ColumnSpec`,
  `Chunking`, `scans_per_block`: many scans' variable-length arrays in one zarr v3 group, written
  by one process or several, byte-identical either way.
"""
