# cmake -DSRC=<tree> -DPATCHES=<a;b;c> -P apply_patches.cmake
# Applies each patch in order with `patch -p1`, after a dry run; the first one that does not apply cleanly
# stops everything with its name (no fuzz, no partial trees).
find_program(PATCH_EXECUTABLE patch)
if(NOT PATCH_EXECUTABLE)
  message(FATAL_ERROR "sirius-local: the 'patch' program is needed to apply patches/ (apt-get install patch)")
endif()
foreach(p IN LISTS PATCHES)
  get_filename_component(name "${p}" NAME)
  execute_process(
    COMMAND "${PATCH_EXECUTABLE}" -p1 --dry-run --forward --batch --fuzz=0 -i "${p}"
    WORKING_DIRECTORY "${SRC}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sirius-local: patch ${name} does not apply to ${SRC}:\n${out}${err}")
  endif()
  execute_process(
    COMMAND "${PATCH_EXECUTABLE}" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch -i "${p}"
    WORKING_DIRECTORY "${SRC}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sirius-local: patch ${name} failed to apply to ${SRC}:\n${out}${err}")
  endif()
  message(STATUS "sirius-local: applied ${name}")
endforeach()
