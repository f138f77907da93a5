"""Test support shipped with homec: random model generation and an onnxruntime oracle.

    homec.testing.graphgen   seeded random ONNX models (`random_model`), large synthetic
                             graphs for benchmarks (`synthetic_chain`, `synthetic_wide`) and
                             hypothesis strategies (`models`, `seeds`)
    homec.testing.oracle     run models in onnxruntime, random feeds, output comparison
                             against a pass's `Tolerance`, saving regression models
    homec.testing.models     real models shipped in pip packages (`ocr_model("det")`)

Nothing here is imported by the compiler itself; hypothesis is needed only for the
strategies and is imported lazily.
"""
