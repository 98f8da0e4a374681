"""Labelling points from their features, and asking free-text questions of them. Import each
name from the file that holds it:

* `classifier`: the classifiers fitted on the template features (`fit_classifier`,
  `fit_from_templates`), `prompt_to_eval_label`, and the `label:` params section `LabelConfig`.
* `point_features`: `PointFeatureReader`, one split's cached point features read scan by scan,
  full or PCA-reduced.
* `feature_pca`: the PCA-reduced point-feature cache (basis, coefficients, `reduce_store`) and
  its params section `FeaturePcaConfig` (`point_features.pca`).
* `query`: free-text queries: the prototype cache (`PrototypeCache`), point scores and matches.
* `fusion`: several teachers: `TeacherEnsemble` (one classifier per teacher over its head's
  columns, fused by capability as SAS does, averaged, or one teacher alone) and `fit_ensemble`.
* `capability`: each class's held-out recognition on the prototypes (`measure_capability`) and
  the `capability:` params section.
* `regions`: region pooling, one label per geometric 3D segment of a scan (`segment_scan`,
  `region_labels`), and its params section `RegionsConfig` (`label.regions`).
"""
