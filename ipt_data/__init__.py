"""ipt_data: build the six IPT pretraining tasks' corrupted patch pairs as WebDataset shard sets.

This package never imports torch; ``ipt_train`` uses its public pieces (task table, decode,
corruptions) and the on-disk shard format.
"""

__version__ = "0.1.0"
