# The ways a C++ project consumes trainloop, each configured, built and run
# with the compiler, generator and dependencies of the trainloop build.
#
# MODE=install: installs the build tree's (shared) trainloop into a scratch
#   prefix; tests/package finds it with find_package(trainloop), and the
#   installed trainloop-plot runs without LD_LIBRARY_PATH.
# MODE=embed: tests/package/embed includes the source tree, first with
#   add_subdirectory (configured only: a shared library, no build type), then
#   with FetchContent, static and MinSizeRel, built and run: this is the one
#   extra build of the library. Its install tree is then found by
#   tests/package with find_package(trainloop), static.
#
# Arguments: MODE, BUILD_DIR (the trainloop build), SOURCE_DIR (trainloop's
# sources), WORK_DIR, GENERATOR, CXX_COMPILER, DEPENDENCY_DIRS (Torch_DIR=...
# and the like, separated by "|"), EMBED_OPTIONS (the same, for the embedded
# trainloop).
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(package "${SOURCE_DIR}/tests/package")
# No help from the environment: installed programs find their libraries
# through their RUNPATH.
unset(ENV{LD_LIBRARY_PATH})
set(jobs "$ENV{CMAKE_BUILD_PARALLEL_LEVEL}")
if(NOT jobs)
  set(jobs 2)
endif()

set(configure_args -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" --no-warn-unused-cli)
string(REPLACE "|" ";" dependency_dirs "${DEPENDENCY_DIRS}")
foreach(setting ${dependency_dirs})
  list(APPEND configure_args "-D${setting}")
endforeach()

function(run_step)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "run: ${shown}")
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY "${WORK_DIR}" RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${shown}")
  endif()
endfunction()

# Configures, builds and runs tests/package against the trainloop in prefix.
function(find_package_consumer prefix build log)
  run_step(${CMAKE_COMMAND} -S "${package}" -B "${build}" ${configure_args}
           "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_BUILD_TYPE=Release)
  run_step(${CMAKE_COMMAND} --build "${build}" --parallel ${jobs})
  run_step("${build}/consumer" ${log})
endfunction()

if(MODE STREQUAL "install")
  set(prefix "${WORK_DIR}/prefix")
  run_step(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")
  find_package_consumer("${prefix}" "${WORK_DIR}/build" "${WORK_DIR}/log.csv")
  set(svg "${WORK_DIR}/curves.svg")
  run_step("${prefix}/bin/trainloop-plot" "${WORK_DIR}/log.csv" -o "${svg}")
  file(READ "${svg}" picture LIMIT 4096)
  if(NOT picture MATCHES "<svg")
    message(FATAL_ERROR "the installed trainloop-plot wrote no SVG to ${svg}")
  endif()
  message(STATUS "installed trainloop-plot wrote ${svg}")
elseif(MODE STREQUAL "embed")
  string(REPLACE "|" ";" embed_options "${EMBED_OPTIONS}")
  list(TRANSFORM embed_options PREPEND "-D")
  set(embed "${package}/embed")
  run_step(${CMAKE_COMMAND} -S "${embed}" -B "${WORK_DIR}/subdirectory" ${configure_args}
           ${embed_options} "-DTRAINLOOP_SOURCE=${SOURCE_DIR}" -DEMBED_WITH=add_subdirectory
           -DEMBED_SHARED=ON)
  set(build "${WORK_DIR}/fetchcontent")
  run_step(${CMAKE_COMMAND} -S "${embed}" -B "${build}" ${configure_args} ${embed_options}
           "-DTRAINLOOP_SOURCE=${SOURCE_DIR}" -DEMBED_WITH=fetchcontent -DEMBED_SHARED=OFF
           -DCMAKE_BUILD_TYPE=MinSizeRel)
  run_step(${CMAKE_COMMAND} --build "${build}" --parallel ${jobs})
  run_step("${build}/consumer")
  set(prefix "${WORK_DIR}/prefix")
  run_step(${CMAKE_COMMAND} --install "${build}" --prefix "${prefix}")
  file(GLOB static_library "${prefix}/lib*/libtrainloop.a")
  if(NOT static_library)
    message(FATAL_ERROR "no libtrainloop.a under ${prefix}")
  endif()
  find_package_consumer("${prefix}" "${WORK_DIR}/build" "")
else()
  message(FATAL_ERROR "MODE is \"${MODE}\", expected install or embed")
endif()
