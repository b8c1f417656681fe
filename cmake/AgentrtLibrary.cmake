# One library target per top-level folder; sources are globbed so that adding a
# file needs no CMake edit. CUDA sources (*.cu) join the target only when nvcc exists.
function(agentrt_add_library name folder)
  file(GLOB_RECURSE _srcs CONFIGURE_DEPENDS
       ${CMAKE_CURRENT_SOURCE_DIR}/*.cc ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  list(FILTER _srcs EXCLUDE REGEX ".*/cuda/.*")
  if(NOT _srcs)
    set(_srcs ${CMAKE_SOURCE_DIR}/cmake/empty.cc)
  endif()
  add_library(${name} STATIC ${_srcs})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}>
    $<INSTALL_INTERFACE:include/agentrt>)
  target_compile_features(${name} PUBLIC cxx_std_20)
  # Static libraries built with sanitizers need the sanitizers' runtimes wherever they are
  # linked, also by applications of the installed package.
  if(AGENTRT_SANITIZE)
    string(REPLACE "," ";" _san_list "${AGENTRT_SANITIZE}")
    foreach(_san IN LISTS _san_list)
      target_link_options(${name} INTERFACE -fsanitize=${_san})
    endforeach()
  endif()
endfunction()

# One GoogleTest executable per folder of tests/.
function(agentrt_add_test_folder name)
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*_test.cc)
  if(NOT _srcs)
    return()
  endif()
  add_executable(${name} ${_srcs})
  target_link_libraries(${name} PRIVATE ${ARGN} GTest::gtest GTest::gtest_main GTest::gmock)
  target_compile_definitions(${name} PRIVATE
    AGENTRT_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    AGENTRT_SHARED_DATA="${AGENTRT_SHARED_DATA}"
    AGENTRT_HOME="${AGENTRT_HOME}"
    AGENTRT_BINARY_DIR="${CMAKE_BINARY_DIR}")
  # The GPU machine's build (AGENTRT_ENGINE_ONLY) runs its test binary directly: listing the
  # tests at build time would make the build depend on the binary starting there.
  set(_discovery)
  if(AGENTRT_ENGINE_ONLY)
    set(_discovery DISCOVERY_MODE PRE_TEST)
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 ${_discovery}
    PROPERTIES ENVIRONMENT "AGENTRT_HOME=${AGENTRT_HOME}")
endfunction()
