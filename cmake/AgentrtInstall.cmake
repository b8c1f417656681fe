# Installs the libraries, their headers and a CMake package so that applications can
# find_package(agentrt) and link agentrt::runtime (examples/embed shows how).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(_agentrt_libs agentrt_engine agentrt_grammars agentrt_sandbox agentrt_tools agentrt_runtime)
if(TARGET agentrt_engine_cuda)
  list(APPEND _agentrt_libs agentrt_engine_cuda)
endif()
install(TARGETS ${_agentrt_libs} agentrt EXPORT agentrtTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
foreach(_dir engine grammars sandbox tools runtime)
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/${_dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/agentrt/${_dir}
          FILES_MATCHING PATTERN "*.h" PATTERN "*.inc")
endforeach()
install(EXPORT agentrtTargets NAMESPACE agentrt:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/agentrt)
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/agentrtConfig.cmake.in
  ${CMAKE_BINARY_DIR}/agentrtConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/agentrt)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/agentrtConfigVersion.cmake COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/agentrtConfig.cmake ${CMAKE_BINARY_DIR}/agentrtConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/agentrt)
