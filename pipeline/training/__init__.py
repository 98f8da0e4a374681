"""Distillation of the 3D student from the cached teacher features. Import each name from the
file that holds it:

* `config`: `DistillConfig`, the `distill:` params section, read as it is by the loop and the schedule.
* `loop`: `distill_student`, the training loop (one optimiser step per global batch), and `StepRecord`.
* `objective`: `normalized_l2_loss`, the loss the student minimises, and `multi_head_loss`, its
  weighted sum over the heads of a student of several teachers.
* `schedule`: `build_optimizer` and `lr_factor`: AdamW and its warmup / rsqrt / cooldown schedule.
* `sampling`: which scans each step draws on which rank, and the epoch's random draws.
* `recipe`: `training_view`: which camera teaches a drawn scan and which of its points the
  network sees (`distill.camera`, `distill.points`: ScaLR+, DITR or our first recipe).
* `data`: `DistillSample`, `SourceLoader`, `DistillationSet` (the training scans and their
  teacher targets, read from the caches) and `run_fingerprint` (which run a checkpoint is of).
* `checkpoint`: `Checkpoints`, `TrainingState`: an interrupted run continues where it stopped.
* `ddp`: `data_parallel`: W processes train as one (global BatchNorm, global padding).

Precision (`pipeline.precision`) and the process group (`pipeline.distributed`) are shared
with the other stages and live beside this package.
"""
