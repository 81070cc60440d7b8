"""``fastlstm bench``: fastlstm against torch and ONNX Runtime, in one process.

``command`` (the command: options, the run, the summary), ``cases`` (the grids), ``timing``
(interleaved blocks, the GEMM peak), ``report`` (tables, JSON, Markdown, plot), ``memory``
(peak memory of one forward, in a child process), ``streams`` (Python threads stepping
streams) and ``onnx_graph`` (the ONNX Runtime graph of the peer).
"""
