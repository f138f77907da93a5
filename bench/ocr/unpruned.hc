# PP-OCRv4 det with the passes bench/ocr/prune.hc runs around prune_channels, and no pruning:
# the reference for what pruning itself adds to latency (bench/ocr/prune.py, row "unpruned").
schedule {
    cleanup
    fuse_activations
}
