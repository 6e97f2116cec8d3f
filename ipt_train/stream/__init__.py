"""The training stream: everything between a training source and the training loop's units.

The loop asks for its steps' micro-batches and gets them in order; this package owns the rest:

* :mod:`~ipt_train.stream.order`: the run's one global sample order, a function of the seed,
  the data and the step (epochs of shuffle blocks; flips and rotations by position);
* :mod:`~ipt_train.stream.loader`: who reads which positions (ranks, loader workers), the
  units and their pixel digests, the DataLoader;
* :mod:`~ipt_train.stream.shardset`: a shard set as a source, with read-ahead;
* :mod:`~ipt_train.stream.store`: shards checked against the manifest before use, indexed,
  read by position; remote ones fetched with retries;
* :mod:`~ipt_train.stream.cache`: the node's shared disk cache under a size limit;
* :mod:`~ipt_train.stream.folders`: fine-tuning's folder sources and the source interface.

docs/training.md#the-training-stream describes the behaviour and its guarantees.
"""
