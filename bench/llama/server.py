"""llama.cpp's OpenAI-compatible server (llama-cpp-python), as a user would run it, for the bench.

Usage: server.py --model GGUF --n_threads N --port P [other llama_cpp.server options]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import amx  # noqa: E402,F401  (must patch before the server creates its model)
from llama_cpp.server.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
