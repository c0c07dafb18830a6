# install(EXPORT) with a package config and version file, so that find_package(handoff) works,
# and a pkg-config file for everybody else. tests/consumer proves both.
include(CMakePackageConfigHelpers)

install(TARGETS handoff_core handoff_http EXPORT handoff-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/handoff DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")

set(HANDOFF_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/handoff)
install(EXPORT handoff-targets NAMESPACE handoff:: DESTINATION ${HANDOFF_CMAKE_DIR})
configure_package_config_file(cmake/handoff-config.cmake.in
  ${PROJECT_BINARY_DIR}/handoff-config.cmake INSTALL_DESTINATION ${HANDOFF_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/handoff-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/handoff-config.cmake
              ${PROJECT_BINARY_DIR}/handoff-config-version.cmake
        DESTINATION ${HANDOFF_CMAKE_DIR})

# Relocatable: the prefix is found from where the .pc file lies, so a copied or --prefix'ed
# install works without reconfiguring.
file(RELATIVE_PATH HANDOFF_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
configure_file(cmake/handoff-core.pc.in ${PROJECT_BINARY_DIR}/handoff-core.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/handoff-core.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
