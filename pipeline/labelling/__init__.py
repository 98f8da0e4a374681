"""Labelling points from their features, and asking free-text questions of them. Import each
name from the file that holds it:

* `classifier`: the classifiers fitted on the template features (`fit_classifier`,
  `fit_from_templates`), `prompt_to_eval_label`, and the `label:` params section `LabelConfig`.
* `point_features`: `PointFeatureReader`, one split's cached point features read scan by scan,
  full or PCA-reduced.
* `feature_pca`: the PCA-reduced point-feature cache (basis, coefficients, `reduce_store`) and
  its params section `FeaturePcaConfig` (`point_features.pca`).
* `query`: free-text queries: the prototype cache (`PrototypeCache`), point scores and matches.
"""
