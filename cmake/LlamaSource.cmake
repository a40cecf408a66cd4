# Provides SIRIUS_LLAMA_SRC: a patched llama.cpp source tree inside the build directory.
#
# The source is the llama.cpp tree vendored by the llama-cpp-python sdist (pinned version and sha256), fetched
# with `pip download` into a cache that survives rebuilds, or a local tree named by SIRIUS_LLAMA_CPP_DIR.
# Either way it is copied into the build directory and patches/*.patch are applied there, in order, so the
# cached tarball and the user's tree stay pristine.

set(SIRIUS_LLAMA_CPP_PYTHON_VERSION "0.3.36")
set(SIRIUS_LLAMA_CPP_PYTHON_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")

set(SIRIUS_LLAMA_CPP_DIR "$ENV{SIRIUS_LLAMA_CPP_DIR}" CACHE PATH
    "Local llama.cpp source tree to use instead of the pinned llama-cpp-python sdist")

if(DEFINED ENV{SIRIUS_CACHE_DIR})
  set(_sirius_cache "$ENV{SIRIUS_CACHE_DIR}")
elseif(DEFINED ENV{XDG_CACHE_HOME})
  set(_sirius_cache "$ENV{XDG_CACHE_HOME}/sirius-local")
else()
  set(_sirius_cache "$ENV{HOME}/.cache/sirius-local")
endif()
set(SIRIUS_SOURCE_CACHE "${_sirius_cache}/sources" CACHE PATH "Where the pinned llama.cpp sdist is cached")

file(GLOB SIRIUS_PATCHES "${CMAKE_CURRENT_SOURCE_DIR}/patches/*.patch")
list(SORT SIRIUS_PATCHES)

# Everything that decides the tree's content goes into a stamp: a change re-extracts and re-patches.
set(_stamp_text "pin=${SIRIUS_LLAMA_CPP_PYTHON_VERSION}:${SIRIUS_LLAMA_CPP_PYTHON_SHA256};local=${SIRIUS_LLAMA_CPP_DIR}")
foreach(p IN LISTS SIRIUS_PATCHES)
  file(SHA256 "${p}" _h)
  get_filename_component(_n "${p}" NAME)
  string(APPEND _stamp_text ";${_n}=${_h}")
endforeach()
foreach(p IN LISTS SIRIUS_PATCHES)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${p}")
endforeach()

set(SIRIUS_LLAMA_SRC "${CMAKE_BINARY_DIR}/llama.cpp-src")
set(_stamp_file "${CMAKE_BINARY_DIR}/llama.cpp-src.stamp")
set(_have "")
if(EXISTS "${_stamp_file}")
  file(READ "${_stamp_file}" _have)
endif()

# The parts of the tree that the product builds (no tools, examples, server, tests, models).
set(_parts CMakeLists.txt cmake ggml src include vendor licenses LICENSE)

if(NOT _have STREQUAL _stamp_text OR NOT EXISTS "${SIRIUS_LLAMA_SRC}/CMakeLists.txt")
  file(REMOVE_RECURSE "${SIRIUS_LLAMA_SRC}")
  if(SIRIUS_LLAMA_CPP_DIR)
    if(NOT EXISTS "${SIRIUS_LLAMA_CPP_DIR}/include/llama.h")
      message(FATAL_ERROR "SIRIUS_LLAMA_CPP_DIR=${SIRIUS_LLAMA_CPP_DIR} is not a llama.cpp source tree (no include/llama.h)")
    endif()
    message(STATUS "sirius-local: llama.cpp from local tree ${SIRIUS_LLAMA_CPP_DIR}")
    file(MAKE_DIRECTORY "${SIRIUS_LLAMA_SRC}")
    foreach(part IN LISTS _parts)
      if(EXISTS "${SIRIUS_LLAMA_CPP_DIR}/${part}")
        file(COPY "${SIRIUS_LLAMA_CPP_DIR}/${part}" DESTINATION "${SIRIUS_LLAMA_SRC}")
      endif()
    endforeach()
  else()
    set(_tarball "${SIRIUS_SOURCE_CACHE}/llama_cpp_python-${SIRIUS_LLAMA_CPP_PYTHON_VERSION}.tar.gz")
    set(_ok FALSE)
    if(EXISTS "${_tarball}")
      file(SHA256 "${_tarball}" _h)
      if(_h STREQUAL SIRIUS_LLAMA_CPP_PYTHON_SHA256)
        set(_ok TRUE)
      else()
        message(WARNING "sirius-local: cached ${_tarball} has sha256 ${_h}; fetching it again")
        file(REMOVE "${_tarball}")
      endif()
    endif()
    if(NOT _ok)
      find_package(Python COMPONENTS Interpreter REQUIRED)
      message(STATUS "sirius-local: pip download llama-cpp-python==${SIRIUS_LLAMA_CPP_PYTHON_VERSION} (sdist) into ${SIRIUS_SOURCE_CACHE}")
      # --no-build-isolation: pip only reads the sdist's metadata, with the scikit-build-core we already have.
      execute_process(
        COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary :all: --no-build-isolation
                --disable-pip-version-check -d "${SIRIUS_SOURCE_CACHE}"
                "llama-cpp-python==${SIRIUS_LLAMA_CPP_PYTHON_VERSION}"
        RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
      if(NOT _rc EQUAL 0 OR NOT EXISTS "${_tarball}")
        message(FATAL_ERROR "sirius-local: could not download the llama-cpp-python ${SIRIUS_LLAMA_CPP_PYTHON_VERSION} sdist "
                            "(pip exit ${_rc}).\n${_err}\nFix: check network access to PyPI, put the sdist at ${_tarball}, "
                            "or set SIRIUS_LLAMA_CPP_DIR to a llama.cpp source tree.")
      endif()
      file(SHA256 "${_tarball}" _h)
      if(NOT _h STREQUAL SIRIUS_LLAMA_CPP_PYTHON_SHA256)
        file(REMOVE "${_tarball}")
        message(FATAL_ERROR "sirius-local: llama-cpp-python sdist sha256 mismatch: got ${_h}, pinned ${SIRIUS_LLAMA_CPP_PYTHON_SHA256}")
      endif()
    endif()
    message(STATUS "sirius-local: extracting llama.cpp from ${_tarball}")
    set(_members "")
    foreach(part IN LISTS _parts)
      list(APPEND _members "llama_cpp_python-${SIRIUS_LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/${part}")
    endforeach()
    set(_x "${CMAKE_BINARY_DIR}/llama.cpp-extract")
    file(REMOVE_RECURSE "${_x}")
    file(ARCHIVE_EXTRACT INPUT "${_tarball}" DESTINATION "${_x}" PATTERNS ${_members})
    file(RENAME "${_x}/llama_cpp_python-${SIRIUS_LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp" "${SIRIUS_LLAMA_SRC}")
    file(REMOVE_RECURSE "${_x}")
  endif()

  execute_process(
    COMMAND "${CMAKE_COMMAND}" -DSRC=${SIRIUS_LLAMA_SRC} "-DPATCHES=${SIRIUS_PATCHES}"
            -P "${CMAKE_CURRENT_SOURCE_DIR}/cmake/apply_patches.cmake"
    RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    file(REMOVE_RECURSE "${SIRIUS_LLAMA_SRC}")
    message(FATAL_ERROR "sirius-local: patching llama.cpp failed (see the patch named above)")
  endif()
  file(WRITE "${_stamp_file}" "${_stamp_text}")
endif()
