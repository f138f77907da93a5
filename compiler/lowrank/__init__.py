"""Low-rank factorization on the IR: the numerics of the decompositions (`factor`), the
layers that can be factorized and their rewrite into cheaper products (`layers`), and the
calibration statistics that make a factorization data-aware (`stats`)."""
