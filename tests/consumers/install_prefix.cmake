# cmake -DBINARY_DIR=<build tree> -DPREFIX=<dir> -P install_prefix.cmake
# Installs mechlens's development files into a fresh PREFIX, so no header left over from an earlier run can mask
# one missing from the install rules.
foreach(var IN ITEMS BINARY_DIR PREFIX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_prefix.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BINARY_DIR}" --prefix "${PREFIX}" --component mechlens_development
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BINARY_DIR} --prefix ${PREFIX} failed (${result})")
endif()
foreach(expected IN ITEMS include/mechlens/mechlens.hpp include/mechlens/detail/namespace.hpp)
  if(NOT EXISTS "${PREFIX}/${expected}")
    message(FATAL_ERROR "install did not produce ${PREFIX}/${expected}")
  endif()
endforeach()
file(GLOB_RECURSE configs "${PREFIX}/*/mechlensConfig.cmake")
if(NOT configs)
  message(FATAL_ERROR "install did not produce a mechlensConfig.cmake under ${PREFIX}")
endif()
