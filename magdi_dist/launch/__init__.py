"""Every launcher, each preparing the data on the driver and then starting ranks that read shards:

``torchrun``   ``magdi-dist train``: validate, prepare, then train here or spawn local ranks (torchrun)
``rank``       ``python -m magdi_dist.launch.rank``: the per-rank entry point under torchrun and the
               deepspeed launcher (rank 0 prepares while the others wait)
``ray_train``  Ray Train (TorchTrainer + DeepSpeed), restarts from the newest checkpoint
``jobs``       ``ray job submit`` of a ``ray_jobs/`` entrypoint, as a library call

Knows the training entry point and the data preparation, not the model internals."""
