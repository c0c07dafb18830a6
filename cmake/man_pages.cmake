# The man pages of the handoff command, made from docs/man/*.scd with scdoc (Debian: scdoc) by
# the target handoff_man, part of ALL. HANDOFF_MAN: AUTO (the default) builds them when scdoc
# is found and says at configure time that they are left out when it is not; ON (the ci and
# clang presets) makes a missing scdoc a configure error, so CI never ships without them; OFF
# builds none.
#
# Each page goes through configure_file first (@PROJECT_VERSION@ in its header). A page whose
# NAME names several commands documents them together: handoff-status(1), handoff-stop(1)
# and handoff-reexec(1) are one-line pages (.so) that man(1) follows to handoff-reload(1).
# The pages land in ${PROJECT_BINARY_DIR}/man/man1; cmake/install.cmake installs the list in the target's
# HANDOFF_PAGES property to share/man/man1.
set(HANDOFF_MAN AUTO CACHE STRING "Build the man pages with scdoc: AUTO, ON or OFF")
set_property(CACHE HANDOFF_MAN PROPERTY STRINGS AUTO ON OFF)
if(NOT HANDOFF_MAN MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "handoff: HANDOFF_MAN is \"${HANDOFF_MAN}\": AUTO, ON or OFF")
endif()
if(HANDOFF_MAN STREQUAL "OFF")
  return()
endif()
find_program(HANDOFF_SCDOC scdoc)
if(NOT HANDOFF_SCDOC)
  if(HANDOFF_MAN STREQUAL "ON")
    message(FATAL_ERROR "handoff: HANDOFF_MAN is ON but scdoc is not installed "
                        "(apt-get install scdoc, or scripts/setup-debian)")
  endif()
  message(WARNING "handoff: scdoc not found: the man pages are not built or installed "
                  "(apt-get install scdoc, or -DHANDOFF_MAN=OFF to silence this)")
  return()
endif()

# scdoc dates each page with SOURCE_DATE_EPOCH when it is set, else with today: the date of the
# last commit (or the SOURCE_DATE_EPOCH of the configure step) makes the pages, and so the
# Debian package, the same bytes whenever they are built from one commit.
set(man_epoch "$ENV{SOURCE_DATE_EPOCH}")
if(man_epoch STREQUAL "")
  execute_process(COMMAND git -C ${PROJECT_SOURCE_DIR} log -1 --format=%ct
                  OUTPUT_VARIABLE man_epoch OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE git_status ERROR_QUIET)
  if(NOT git_status EQUAL 0)
    set(man_epoch "")
  endif()
endif()
set(man_env "")
if(NOT man_epoch STREQUAL "")
  set(man_env ${CMAKE_COMMAND} -E env SOURCE_DATE_EPOCH=${man_epoch})
endif()

set(man_dir ${PROJECT_BINARY_DIR}/man/man1)
set(man_pages "")
foreach(page handoff handoff-run handoff-check handoff-reload)
  set(source ${PROJECT_BINARY_DIR}/man/${page}.1.scd)
  configure_file(${PROJECT_SOURCE_DIR}/docs/man/${page}.1.scd ${source} @ONLY)
  add_custom_command(OUTPUT ${man_dir}/${page}.1
    COMMAND ${man_env} sh -c "\"$1\" <\"$2\" >\"$3.tmp\" && mv \"$3.tmp\" \"$3\"" scdoc
            ${HANDOFF_SCDOC} ${source} ${man_dir}/${page}.1
    DEPENDS ${source}
    COMMENT "scdoc docs/man/${page}.1.scd"
    VERBATIM)
  list(APPEND man_pages ${man_dir}/${page}.1)
endforeach()
foreach(alias handoff-status handoff-stop handoff-reexec)
  file(CONFIGURE OUTPUT ${man_dir}/${alias}.1 CONTENT ".so man1/handoff-reload.1\n")
  list(APPEND man_pages ${man_dir}/${alias}.1)
endforeach()
# HANDOFF_MAN_GZIP (the package preset): the installed pages are gzip -9n copies, as Debian
# policy (12.1) wants them; man reads both.
option(HANDOFF_MAN_GZIP "Install the man pages gzip-compressed" OFF)
set(installed_pages ${man_pages})
if(HANDOFF_MAN_GZIP)
  set(installed_pages "")
  foreach(page IN LISTS man_pages)
    get_filename_component(name ${page} NAME)
    add_custom_command(OUTPUT ${man_dir}.gz/${name}.gz
      COMMAND ${CMAKE_COMMAND} -E make_directory ${man_dir}.gz
      COMMAND sh -c "gzip -9n <\"$1\" >\"$2.tmp\" && mv \"$2.tmp\" \"$2\"" gzip ${page}
              ${man_dir}.gz/${name}.gz
      DEPENDS ${page}
      VERBATIM)
    list(APPEND installed_pages ${man_dir}.gz/${name}.gz)
  endforeach()
endif()
add_custom_target(handoff_man ALL DEPENDS ${man_pages} ${installed_pages})
set_target_properties(handoff_man PROPERTIES HANDOFF_PAGES "${installed_pages}"
                      HANDOFF_MAN_DIR ${PROJECT_BINARY_DIR}/man)
