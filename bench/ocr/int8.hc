# PP-OCRv4 det/rec/cls -> int8 for onnxruntime on CPU (bench/ocr/int8.py).
# cleanup lifts the Constant-node weights and folds BatchNorm; fuse_activations turns the
# exported x*clip(x+3,0,6)/6 into HardSwish; quantize calibrates with the mse method, which
# chose better ranges than minmax/percentile/entropy on a validation set disjoint from the
# evaluation images; round_shifts drops the learnable-affine Adds whose shift is not a whole
# number of steps (each value moves by under half a step; 3% faster det, same validation CER);
# fold_qdq makes the integer kernels explicit (QLinearConv/QLinearMatMul);
# the last cleanup merges the scale/zero-point constants that came out equal.
schedule {
    cleanup
    fuse_activations
    quantize(method="mse", round_shifts=true)
    fold_qdq(form="integer")
    cleanup
}
