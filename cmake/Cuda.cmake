# CUDA builds (CMAKE_ARGS="-DGGML_CUDA=ON"): what llama.cpp's ggml-cuda CMake needs that a build machine may
# lack, settled before it runs. Provides SIRIUS_CUDA_RPATH (extra run-time library dirs for ggml-cuda).
find_package(CUDAToolkit REQUIRED)
set(SIRIUS_CUDA_RPATH "")

# 1. Architectures. llama.cpp's default with GGML_NATIVE (ours) is "native", which CMake resolves by running a
# probe on the GPUs present; on a machine without one (a CI box, a build host) it turns into a bogus
# "No CUDA devices found.-real" and nvcc fails. Without a GPU, build llama.cpp's own portable list
# (ggml/src/ggml-cuda/CMakeLists.txt, the non-native branch) and say how to build one architecture only.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  find_program(SIRIUS_NVIDIA_SMI nvidia-smi)
  set(_gpus "")
  if(SIRIUS_NVIDIA_SMI)
    execute_process(COMMAND "${SIRIUS_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                    OUTPUT_VARIABLE _gpus RESULT_VARIABLE _rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT _rc EQUAL 0 OR NOT _gpus MATCHES "^[0-9]+\\.[0-9]+")
      set(_gpus "")
    endif()
  endif()
  if(NOT _gpus)
    set(_archs 75-virtual 80-virtual 86-real)
    if(CUDAToolkit_VERSION VERSION_LESS "13")
      list(PREPEND _archs 50-virtual 61-virtual 70-virtual)
    endif()
    list(APPEND _archs 89-real 90-virtual)
    if(CUDAToolkit_VERSION VERSION_GREATER_EQUAL "12.8")
      list(APPEND _archs 120a-real)
    endif()
    if(CUDAToolkit_VERSION VERSION_GREATER_EQUAL "12.9")
      list(APPEND _archs 121a-real)
    endif()
    set(CMAKE_CUDA_ARCHITECTURES "${_archs}" CACHE STRING "CUDA architectures to build for" FORCE)
    list(LENGTH _archs _n)
    message(WARNING "sirius-local: no NVIDIA GPU visible at build time, so ggml-cuda is built for ${_n} "
            "architectures (${_archs}), each about as long as one alone. For one GPU, "
            "pass its compute capability, e.g. CMAKE_ARGS=\"-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90\" "
            "for an H100/H200 or 89 for an RTX 40xx.")
  endif()
endif()

# 2. cuBLAS. ggml-cuda links it; some CUDA installs (a bare nvcc, as on this project's build machines) ship
# without it. Then take it from NVIDIA's pip wheel (`pip install nvidia-cublas` for CUDA 13,
# nvidia-cublas-cu12 for 12) in the active virtual environment, or from SIRIUS_CUBLAS_DIR (the folder holding
# include/cublas_v2.h and lib/libcublas.so.N), and put its lib folder on ggml-cuda's run path.
if(NOT CUDA_cublas_LIBRARY)
  set(SIRIUS_CUBLAS_DIR "$ENV{SIRIUS_CUBLAS_DIR}" CACHE PATH "cuBLAS folder (include/, lib/) when the toolkit lacks it")
  set(_m ${CUDAToolkit_VERSION_MAJOR})
  set(_dirs "")
  if(SIRIUS_CUBLAS_DIR)
    list(APPEND _dirs "${SIRIUS_CUBLAS_DIR}")
  endif()
  foreach(_prefix "$ENV{VIRTUAL_ENV}" "$ENV{CONDA_PREFIX}")
    if(_prefix)
      file(GLOB _found "${_prefix}/lib/python3*/site-packages/nvidia/cu${_m}"
                       "${_prefix}/lib/python3*/site-packages/nvidia/cublas")
      list(APPEND _dirs ${_found})
    endif()
  endforeach()
  foreach(_d IN LISTS _dirs)
    file(GLOB _lib "${_d}/lib/libcublas.so.${_m}")
    file(GLOB _lt "${_d}/lib/libcublasLt.so.${_m}")
    if(_lib AND _lt AND EXISTS "${_d}/include/cublas_v2.h")
      set(CUDA_cublas_LIBRARY "${_lib}" CACHE FILEPATH "cuBLAS" FORCE)
      set(CUDA_cublasLt_LIBRARY "${_lt}" CACHE FILEPATH "cuBLASLt" FORCE)
      include_directories(SYSTEM "${_d}/include")
      set(SIRIUS_CUDA_RPATH "${_d}/lib")
      message(STATUS "sirius-local: cuBLAS from ${_d}")
      break()
    endif()
  endforeach()
  if(NOT CUDA_cublas_LIBRARY)
    message(FATAL_ERROR "sirius-local: cuBLAS not found: the CUDA toolkit in ${CUDAToolkit_LIBRARY_DIR} has no "
            "libcublas. Install it with the toolkit, or in this virtual environment with `pip install "
            "nvidia-cublas` (CUDA 13; nvidia-cublas-cu12 for CUDA 12) and build again with the environment "
            "active, or pass -DSIRIUS_CUBLAS_DIR=<folder with include/cublas_v2.h and lib/libcublas.so.${_m}>.")
  endif()
else()
  # found by the toolkit, or by a previous configure in a wheel: for a wheel, keep its headers and run path
  get_filename_component(_d "${CUDA_cublas_LIBRARY}" DIRECTORY)
  get_filename_component(_root "${_d}" DIRECTORY)
  if(EXISTS "${_root}/include/cublas_v2.h" AND NOT _d STREQUAL CUDAToolkit_LIBRARY_DIR)
    include_directories(SYSTEM "${_root}/include")
    set(SIRIUS_CUDA_RPATH "${_d}")
  endif()
endif()

# 3. The driver. With VMM (llama.cpp's default) ggml-cuda links libcuda.so, the driver's library, so a CUDA
# build would not even load on a machine without the NVIDIA driver. Without it, libcudart finds the driver at
# run time: with no driver or no GPU, ggml-cuda reports no devices and everything runs on the CPU. The legacy
# memory pool replaces VMM's.
if(NOT DEFINED GGML_CUDA_NO_VMM)
  set(GGML_CUDA_NO_VMM ON CACHE BOOL "ggml-cuda without the driver API (loads without the NVIDIA driver)")
endif()
