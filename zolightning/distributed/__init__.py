"""Several processes: data-parallel ZO without gradient buckets (zo_ddp) and sharded ZO (zo_fsdp, FSDP2)."""
