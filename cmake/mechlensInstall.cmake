include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# One component, so `cmake --install <build> --component mechlens_development` needs nothing to have been built.
install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT mechlens_development)
# INCLUDES DESTINATION: the target's $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}> is evaluated before
# GNUInstallDirs is included, so it is empty; this puts <prefix>/include on the exported target.
install(TARGETS mechlens EXPORT mechlensTargets INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT mechlensTargets NAMESPACE mechlens:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens
  COMPONENT mechlens_development)
configure_package_config_file(cmake/mechlensConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mechlensConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mechlensConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/mechlensConfig.cmake ${PROJECT_BINARY_DIR}/mechlensConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mechlens COMPONENT mechlens_development)
