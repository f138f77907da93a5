# Tidy a float model before it is quantized or compiled for a target:
# fold constants and shapes, drop no-op and dead nodes, fold BatchNorm into convolutions,
# merge duplicates, and repeat until nothing changes.
pipeline tidy { fold_constants; fold_shapes; eliminate_identity; eliminate_dead; cse }
schedule {
  tidy
  fold_batchnorm
  fuse_matmul_add
  fixpoint(max=10) { tidy }
}
