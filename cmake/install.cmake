# install(EXPORT) with a package config and version file, so that find_package(handoff) works,
# and pkg-config files for everybody else; tests/consumer/run proves all of it.
#
# One export set per component: handoff-core-targets.cmake (no dependency) and
# handoff-http-targets.cmake (Boost, threads), so that the package config loads the second, and
# looks for Boost, only when the http component is asked for (handoff-config.cmake.in).
# The command and example_server are installed to the same bin directory, and the units of
# deploy/systemd to lib/systemd/system, naming that bin directory (cmake/install_units.cmake);
# the command's man pages to share/man/man1, its bash completion to
# share/bash-completion/completions/handoff.
include(CMakePackageConfigHelpers)

install(TARGETS handoff_core EXPORT handoff-core-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS handoff_http EXPORT handoff-http-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/handoff DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
if(TARGET example_server)
  install(TARGETS example_server RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  # The units run example_server (and handoff): installed with the server they run.
  install(CODE "set(handoff_unit_source \"${PROJECT_SOURCE_DIR}/deploy/systemd\")
                set(handoff_unit_bindir \"${CMAKE_INSTALL_BINDIR}\")
                set(handoff_unit_staging \"${PROJECT_BINARY_DIR}/units\")")
  install(SCRIPT cmake/install_units.cmake)
endif()
# The command's man pages (cmake/man_pages.cmake) and its bash completion, both under the
# prefix: man finds share/man beside bin on the PATH, and bash-completion looks in
# share/bash-completion/completions of every XDG_DATA_DIRS entry (/usr/local/share included by
# default). Not pkg-config's completionsdir of bash-completion: that is /usr/share, outside any
# other prefix.
if(TARGET handoff_man)
  get_target_property(handoff_pages handoff_man HANDOFF_PAGES)
  install(FILES ${handoff_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endif()
if(TARGET handoff)
  install(FILES tools/handoff/completion.bash
          DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME handoff)
endif()

set(HANDOFF_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/handoff)
install(EXPORT handoff-core-targets NAMESPACE handoff:: DESTINATION ${HANDOFF_CMAKE_DIR})
install(EXPORT handoff-http-targets NAMESPACE handoff:: DESTINATION ${HANDOFF_CMAKE_DIR})
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
foreach(component core http)
  configure_file(cmake/handoff-${component}.pc.in ${PROJECT_BINARY_DIR}/handoff-${component}.pc
                 @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/handoff-${component}.pc
          DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endforeach()
