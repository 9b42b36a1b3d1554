"""Evaluation of frozen backbones: weighted kNN, linear probes, the online kNN monitor and the
MoCo v2 Table 2 batch-size comparison. Installed as `sslkit.evaluation`.

Modules (each one job): `entry` (the `sslkit eval` commands), `context` (checkpoint, config and
output directory of one evaluation), `features` (cached feature extraction), `knn`, `linear`,
`monitor`, `plots`, `batch_compare`, `child` (a training subprocess that reports its peak memory).
"""
