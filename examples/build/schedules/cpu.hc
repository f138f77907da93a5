# Float models for application CPUs (onnxruntime): tidy, fold BatchNorm into the
# convolutions, fuse MatMul + Add, tidy again until nothing changes.
include "common.hc"
schedule {
  tidy
  fold_batchnorm
  fuse_matmul_add
  fixpoint(max=10) { tidy }
}
