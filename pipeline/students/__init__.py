"""3D point networks distilled from the 2D teacher (the "students").

`waffleiron`: WaffleIron as ScaLR+ builds it (loads released ScaLR / ScaLR+ checkpoints).
`point_inputs`: the point pre-processing that turns a raw scan into WaffleIron's inputs.
"""
