"""What the ONNX importer (:mod:`.onnx_import`) reads, as plain tables (no torch import).

``nncertify-solver supports`` answers from these tables without loading torch (a harness asks one
capability per process), and the importer and the VNN-LIB 2.0 solver enforce the same tables.
"""

#: ONNX operators :func:`.onnx_import.load_onnx` translates exactly into a ``Network``.
SUPPORTED = ("Gemm", "MatMul", "Conv", "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Flatten", "Reshape", "Add", "Sub",
             "Mul", "Div", "AveragePool", "BatchNormalization", "Identity", "Dropout", "Constant", "Shape")

#: ONNX tensor element types the importer holds exactly.
MODEL_ELEMENT_TYPES = ("float32",)

#: Opset range over which the operators' semantics (Reshape/Gemm/BatchNormalization/Add) are checked.
ONNX_OPSETS = (7, 21)

#: VNN-LIB 2.0 element types the analysis is sound for: the engine bounds the real-valued network
#: (its float margins are not a formal float32/float64 semantics), so only ``real`` is claimed.
ELEMENT_TYPES = ("real",)

#: VNN-LIB versions the 2.0 reader accepts (what the standard's ``vnnlib>=1.0.2`` package parses).
SUPPORTED_VERSIONS = ((2, 0), (2, 0))
