# PP-OCRv4 rec at one uniform rank ratio, for the equal-rank comparison of bench/ocr/low_rank.py
# (issue 6): every factorizable layer keeps ceil(0.30 x its full rank), a layer the product
# would not make cheaper in MACs and parameters is left alone; data-aware: each layer's factors
# fit its output on the rec calibration inputs (the SVD whitened by the input covariance, the
# mean output kept). low_rank_rec_r30_plain.hc differs only in data_aware, so both get the same
# ranks. cleanup and fuse_activations run first, as in low_rank_rec.hc.
schedule {
    cleanup
    fuse_activations
    low_rank(ratio=0.30, data_aware=true)
    cleanup
}
