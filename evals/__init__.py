"""Benchmarks: segmentation and reasoning-segmentation sets scored per dataset, concept and mode.

- ``evals.loaders``: manifests (``../shared/data``), reasoning-set JSONL, LISA ReasonSeg folders,
  COCO instance files -> ``evals.cases.EvalCase``.
- ``evals.metrics``: Dice, IoU, gIoU, cIoU, HD95, presence accuracy.
- ``evals.runner`` / ``medsam3-agent eval``: direct / box / agent modes, resumable results.jsonl,
  summary.json, report.md (``evals.report``, with the paper's numbers from ``evals.paper``);
  ``evals.identity`` (what a run's numbers mean; a mixed resume is refused), ``evals.runtime``
  (one process's segmenter and agent), ``evals.worker`` / ``evals.volumes`` (the cases of one image /
  one volume, with ``evals.measures`` for CDR/CTR), ``evals.executors`` (threads, processes or a Ray cluster).
- ``evals.bench`` / ``medsam3-agent bench``: encoder, decoder, agent and eval speed, peak memory.
- ``evals/data/dev_questions.jsonl``: the dev reasoning set over the shared val images.
"""
