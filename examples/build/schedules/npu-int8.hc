# Models for the int8 NPU: the same float clean-up; the target then quantizes the graph with
# the calibration samples (--calib) and puts QDQ in the form the NPU runs.
include "common.hc"
schedule {
  tidy
  fold_batchnorm
  fixpoint(max=10) { tidy }
}
