# PP-OCRv4 rec, low-rank factorization under a parameter budget (bench/ocr/low_rank.py,
# issue 6). cleanup lifts the Constant-node weights and folds BatchNorm into the
# convolutions; fuse_activations turns the exported x*clip(x+3,0,6)/6 into HardSwish;
# low_rank factorizes the SVTR attention/MLP MatMuls, the final character classifier and
# the convolutions so that at least `budget` of the weight parameters go, each layer's rank
# chosen from its measured effect on the rec output over the smallest `sensitivity_samples`
# calibration inputs; data_aware is on (calibration data given): each factor pair fits the
# layer's output on the rec calibration inputs. The last cleanup drops what is left unused.
schedule {
    cleanup
    fuse_activations
    low_rank(budget=0.27, objective="params", sensitivity_samples=2)
    cleanup
}
