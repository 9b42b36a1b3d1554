"""Evaluation of frozen backbones, a library below the app layer: weighted kNN, linear probes, the
online kNN monitor, the batch-size comparison's plan and table, retrieval, embedding maps, detection
transfer, plots and the HTML report. Installed as `sslkit.evaluation`; `sslkit.app` runs it.

Modules (each one job): `context` (a checkpoint's backbone and what an evaluation works on),
`features` (cached feature extraction), `records` (the kNN and linear-probe records), `knn`,
`linear`, `monitor`, `plots`, `batch_compare`, `retrieval`, `embedding`, `report`, `detection/`.
"""
