"""Weights files, read and written without torch and without the module classes.

``files`` (``load``, ``save``, format detection), ``torch_format`` (PyTorch checkpoints through
a restricted unpickler, bounded zip records), ``safetensors``, ``npz`` and ``state_dict``
(modules found by key names and shapes).  These depend on numpy and ``fastlstm._errors`` only;
the public entry points are :mod:`fastlstm.serialization` and ``fastlstm.load``/``save``/
``inspect``.
"""
