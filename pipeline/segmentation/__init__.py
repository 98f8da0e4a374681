"""Segmenters trained on labels, true or pseudo: a segmentation head, and optionally the backbone.

One training loop (`loop.train_segmenter`) serves four stages (issue #14):

- `linear_probe` (ScaLR / ScaLR+): a linear head on the frozen cached point features of a
  labelled split (`models.FeatureProbe`);
- `finetune` (ScaLR+, D-DITR): the distilled student, or the same architecture from random
  init, plus a linear head, trained end to end on a labelled fraction of the training split
  (`models.BackboneSegmenter`);
- `inject` (DITR): a sparse UNet whose decoder stages receive the frozen teacher features of
  each point's camera, max-pooled into their voxels and added through linear + BatchNorm +
  GELU (`inject.InjectedSparseUNet`; zero for points no camera sees);
- `self_train` (SAS section 3.4): the distilled student with a head trained on IGLOSS
  pseudo-labels, with temporal-ensembling targets (`ensembling.TemporalEnsemble`).

`data` gathers what a scan offers (points, labels, cached features, teacher features),
`config` the stages' params sections, `evaluate` the metrics on the evaluation split beside
the zero-shot labels. Nothing here knows where the caches live.
"""
