# The Debian package: `cmake --preset package && cmake --build build/package --target package`
# makes build/package/handoff_VERSION_ARCH.deb from what `cmake --install` puts under /usr (the
# command, example_server, the static and shared libraries, headers, CMake and pkg-config files,
# the units, the man pages and the bash completion). tests/package/run builds it, installs it in
# a Debian 12 root file system under real systemd, reloads the shipped units under load and
# removes it again.
#
# Depends is computed by dpkg-shlibdeps (Debian: dpkg-dev) from the ELF files in the package; the
# libraries' own shlibs file and ldconfig trigger come from CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS.
# What the headers need to be compiled against (Boost 1.81, OpenSSL's headers) is Suggests: the
# command alone needs neither. cmake/debian/triggers runs ldconfig after the shared libraries come
# or go (CPack adds no trigger of its own once the control files are ours). The maintainer scripts (cmake/debian) stop and disable the shipped
# units before removal, so `dpkg -r` leaves no enabled unit pointing at a removed file.
set(CPACK_GENERATOR DEB)
# The package preset sets what the package needs (shared libraries, gzipped pages, /usr and its
# multiarch libdir); the target package of another build packs what that build installs.
# Installed with DESTDIR under the prefix /usr, so that what is computed at install time (the
# units' paths, cmake/install_units.cmake) names /usr and not CPack's staging directory.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_NAME handoff)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
# Whoever builds a package to hand out sets HANDOFF_PACKAGE_MAINTAINER to their name and address;
# the default's domain is reserved (RFC 2606) so that it can reach nobody by mistake.
set(HANDOFF_PACKAGE_MAINTAINER "handoff maintainers <maintainers@handoff.invalid>" CACHE STRING
    "The Maintainer field of the Debian package: who builds it")
set(CPACK_PACKAGE_CONTACT "${HANDOFF_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # handoff_VERSION_ARCH.deb, Debian's own naming
set(CPACK_DEBIAN_PACKAGE_RELEASE "")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "zero-downtime restarts for network servers")
set(CPACK_PACKAGE_DESCRIPTION
    "handoff restarts and upgrades network servers without failing a request.\n"
    "It keeps the listening sockets open across generations of an app, starts the\n"
    "new generation before the old one stops and hands over once the new one is\n"
    "ready, with the systemd protocols (LISTEN_FDS, NOTIFY_SOCKET).\n"
    "\n"
    "This package contains the handoff command (run, reload, status, stop, check),\n"
    "the C++ libraries handoff::core and handoff::http (shared and static, with\n"
    "headers, CMake and pkg-config files), an example server with systemd units,\n"
    "man pages and bash completion.")
string(REPLACE ";" "" CPACK_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# libhandoff_http.so needs libhandoff_core.so, found in the package itself (dpkg-shlibdeps runs in
# the staging directory, so the path is relative to it).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS "usr/${CMAKE_INSTALL_LIBDIR}")
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY "=")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "libboost1.81-dev, libssl-dev, pkg-config, bash-completion")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/cmake/debian/postinst ${PROJECT_SOURCE_DIR}/cmake/debian/prerm
    ${PROJECT_SOURCE_DIR}/cmake/debian/postrm ${PROJECT_SOURCE_DIR}/cmake/debian/triggers)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
include(CPack)
