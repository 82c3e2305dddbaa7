"""stchat: chat with SmallThinker mixture-of-experts models offline, on the CPU.

The package is the user-facing half (commands, model lookup, paths); the inference engine is
the sibling package `runtime`, used only through its public API. Importing this package must
stay cheap: nothing heavy (numpy, onnxruntime, textual) is imported here.
"""

__version__ = "0.1.0"
