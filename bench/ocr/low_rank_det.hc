# PP-OCRv4 det, low-rank factorization under a MAC budget (bench/ocr/low_rank.py, issue 6).
# cleanup lifts the Constant-node weights and folds BatchNorm into the convolutions (so the
# kernels factorized are the ones that run); fuse_activations turns the exported
# x*clip(x+3,0,6)/6 into HardSwish; low_rank factorizes the convolutions (spatial_svd,
# channel_svd or tucker2 per layer, depthwise ones skipped) so that at least `budget` of the
# model's MACs go, each layer's rank chosen from its measured effect on the det output over
# the smallest `sensitivity_samples` calibration inputs; data_aware is on (calibration data
# given): each factor pair fits the layer's output on the det calibration inputs. The last
# cleanup drops what the rewrite left unused.
schedule {
    cleanup
    fuse_activations
    low_rank(budget=0.22, objective="macs", sensitivity_samples=2)
    cleanup
}
