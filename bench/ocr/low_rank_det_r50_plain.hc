# PP-OCRv4 det at one uniform rank ratio, for the equal-rank comparison of bench/ocr/low_rank.py
# (issue 6): every factorizable layer keeps ceil(0.50 x its full rank), a layer the product
# would not make cheaper in MACs and parameters is left alone; plain: the truncated SVD of each
# weight (AIMET's weight SVD), no calibration data read. low_rank_det_r50_data.hc differs only
# in data_aware, so both get the same ranks. cleanup and fuse_activations run first, as in
# low_rank_det.hc.
schedule {
    cleanup
    fuse_activations
    low_rank(ratio=0.50, data_aware=false)
    cleanup
}
