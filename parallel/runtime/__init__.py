"""The pipeline runtime: processes, stages, schedules running on torch.distributed.pipelining,
timeouts and faults, timelines (what runs during training)."""
