# The passes bench/ocr/low_rank_*.hc run around low_rank, without it: the "reference" compile
# of each changed model (bench/ocr/low_rank.py), for what factorization itself adds to the
# latency, since cleanup and fuse_activations alone already speed up the shipped models.
schedule {
    cleanup
    fuse_activations
}
