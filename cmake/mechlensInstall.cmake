include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mechlens EXPORT mechlensTargets)
install(EXPORT mechlensTargets NAMESPACE mechlens:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens)
configure_package_config_file(cmake/mechlensConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mechlensConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mechlensConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/mechlensConfig.cmake ${PROJECT_BINARY_DIR}/mechlensConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens)
