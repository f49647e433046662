"""llama.cpp without its AMX buffer type (weight repacking for AMX tiles).

Where the kernel has not enabled AMX for the process, as on the VMs lmaas is built on, ggml's AMX
kernel dies with SIGILL on its first tile load. With extra buffer types off, llama.cpp runs its
AVX-512 kernels instead. Import this before creating a `Llama`.
"""
import llama_cpp.llama_cpp as llama_cpp_c

_default = llama_cpp_c.llama_model_default_params


def _without_extra_buffers():
    params = _default()
    params.use_extra_bufts = False
    return params


llama_cpp_c.llama_model_default_params = _without_extra_buffers
