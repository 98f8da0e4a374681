"""IGLOSS pipeline library: pure code, no knowledge of DVC or of where artifacts live.

Importing the package first applies the torchvision compatibility shim (see
`pipeline.compat`), so timm and diffusers import on a CPU-only torch.
"""

from pipeline.compat import install_torchvision_schemas

install_torchvision_schemas()
