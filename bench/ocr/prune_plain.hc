# PP-OCRv4 det, the same pruning as prune.hc without reconstruction (bench/ocr/prune.py,
# issue 5): the consumers keep their original weights for the kept channels, so the
# difference between the two rows is what the least-squares re-fit buys.
schedule {
    cleanup
    fuse_activations
    prune_channels(ratio="auto", budget=0.32, objective="macs", criterion="data",
                   sensitivity_samples=2,
                   reconstruct=false, align=8)
    cleanup
}
