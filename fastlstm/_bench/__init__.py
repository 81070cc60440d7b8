"""``fastlstm bench``: fastlstm against torch and ONNX Runtime, in one process.

``command`` (the command: options, the run, the summary), ``cases`` (the grids), ``timing``
(interleaved blocks, the GEMM peak), ``report`` (tables, JSON, Markdown, plot), ``memory``
(peak memory of one forward, in a child process), ``streams`` (Python threads stepping
streams), ``onnx_graph`` (the ONNX Runtime graph of the peer), ``contention`` (``--contention``:
shared CPUs), ``seq2seq`` (``--seq2seq``: a greedy decode with NumPy between the calls) and
``precision`` (``--precision``: bfloat16 weights beside float32 and torch's reduced precision).
"""
