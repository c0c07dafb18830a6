# Run by `cmake --install` (install(SCRIPT) in cmake/install.cmake): installs the units of
# deploy/systemd to lib/systemd/system under the prefix, with their /usr/local/bin/ paths
# replaced by the bin directory of this install. The prefix is the one of the install, not of
# the configure step: CPack installs under /usr whatever the build was configured with, and
# `cmake --install --prefix P` under P. systemd reads units from /usr/local/lib/systemd/system
# and /usr/lib/systemd/system alike (systemd.unit(5), "Unit File Load Path").
#
# Set by the install(CODE) before this: handoff_unit_source (deploy/systemd),
# handoff_unit_bindir (CMAKE_INSTALL_BINDIR), handoff_unit_staging (a directory of the build).
if(IS_ABSOLUTE "${handoff_unit_bindir}")
  set(bindir "${handoff_unit_bindir}")
else()
  set(bindir "${CMAKE_INSTALL_PREFIX}/${handoff_unit_bindir}")
endif()
file(GLOB units "${handoff_unit_source}/*.service" "${handoff_unit_source}/*.socket")
file(MAKE_DIRECTORY "${handoff_unit_staging}")
set(staged "")
foreach(unit IN LISTS units)
  get_filename_component(name "${unit}" NAME)
  file(READ "${unit}" text)
  string(REPLACE "/usr/local/bin/" "${bindir}/" text "${text}")
  file(WRITE "${handoff_unit_staging}/${name}" "${text}")
  list(APPEND staged "${handoff_unit_staging}/${name}")
endforeach()
file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ FILES ${staged})
