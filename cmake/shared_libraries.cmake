# HANDOFF_INSTALL_SHARED: shared copies of the libraries, installed beside the static archives
# (the Debian package, cmake/package.cmake, ships both). The targets handoff::core and
# handoff::http, which the command, the examples, the tests and find_package(handoff) use, stay
# as they are (static unless BUILD_SHARED_LIBS): the command is one file with no library of ours
# to find at run time. The copies are built from the same sources, read here from the
# targets, so a source added to handoff_core or handoff_http is in both; they carry the same
# file names (libhandoff_core.so beside libhandoff_core.a), so `-lhandoff_core` (pkg-config)
# links the shared one and `-Wl,-Bstatic` or a path the archive.
option(HANDOFF_INSTALL_SHARED "Also build and install shared copies of the libraries" OFF)
if(NOT HANDOFF_INSTALL_SHARED)
  return()
endif()

foreach(component core http)
  set(static handoff_${component})
  set(shared handoff_${component}_shared)
  get_target_property(sources ${static} SOURCES)
  add_library(${shared} SHARED ${sources})
  set_target_properties(${shared} PROPERTIES OUTPUT_NAME handoff_${component}
                        VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})
  target_compile_features(${shared} PUBLIC cxx_std_20)
  target_include_directories(${shared} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(${shared} PRIVATE handoff_build_flags)
endforeach()
get_target_property(http_definitions handoff_http INTERFACE_COMPILE_DEFINITIONS)
target_compile_definitions(handoff_http_shared PUBLIC ${http_definitions})
target_link_libraries(handoff_http_shared PUBLIC handoff_core_shared Boost::headers
                      Threads::Threads PRIVATE OpenSSL::SSL)
install(TARGETS handoff_core_shared handoff_http_shared
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
