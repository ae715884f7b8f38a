# Issue #14's short table (configs/compare/sst2_optimizers_short.yaml) on one GPU. After `source benchmarks/gpu/setup.sh join`:
#   BUDGET=540 bash benchmarks/gpu/optimizers_sst2.sh start|wait|collect    (see grid.sh)
GRID=configs/compare/sst2_optimizers_short.yaml exec bash benchmarks/gpu/grid.sh "$@"
