# PP-OCRv4 det, structured channel pruning with reconstruction (bench/ocr/prune.py, issue 5).
# cleanup lifts the Constant-node weights and folds BatchNorm into the convolutions, so the
# pruned channels take their BN scale with them; fuse_activations turns the exported
# x*clip(x+3,0,6)/6 into HardSwish (one node between producer and consumer instead of four);
# prune_channels removes output channels of the convolutions together with the input channels
# that read them (options: see `homec passes prune_channels`; MAC objective, channels ranked
# on the det calibration inputs, kept counts multiples of 8) and re-fits each consumer's kept
# weights by least squares on the calibration data (reconstruct); the last cleanup drops
# what the rewrite left unused.
schedule {
    cleanup
    fuse_activations
    prune_channels(ratio="auto", budget=0.32, objective="macs", criterion="data",
                   sensitivity_samples=2,
                   reconstruct=true, align=8)
    cleanup
}
