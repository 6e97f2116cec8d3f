"""ipt_train: the IPT model, streaming DDP pretraining, fine-tuning and evaluation."""
