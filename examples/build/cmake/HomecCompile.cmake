# homec_compile(): compile an ONNX model with homec as a build step.
#
#   include(cmake/HomecCompile.cmake)
#   homec_compile(<name>
#                 MODEL <model.onnx>
#                 TARGET <cpu | npu-int8 | mcu | board.toml>
#                 [SCHEDULE <schedule.hc>]
#                 [OUTPUT <out.onnx>]          # default: <name>.onnx in the current binary dir
#                 [MANIFEST <out.json>]        # default: <OUTPUT stem>.manifest.json
#                 [CALIB <file.npz | folder>]
#                 [INPUT_SHAPE <name=dims>...]
#                 [EXTRA_ARGS <homec options>...])
#
# Defines a custom target <name> (built by default, so `cmake --build` builds it) whose
# HOMEC_OUTPUT and HOMEC_MANIFEST properties are the absolute paths of the compiled model and
# of its JSON manifest (placement, memory plan, estimates, I/O quantization). Relative MODEL,
# SCHEDULE, CALIB and target-file paths are relative to the current source dir; relative
# OUTPUT and MANIFEST paths to the current binary dir.
#
# Incremental rebuilds: the command depends on the model, the schedule, the calibration data
# and a target file directly, and on everything else homec read (the model's external data,
# the schedule's includes, a built-in target's descriptor, the files of a calibration folder)
# through the depfile homec writes with --depfile; CMake >= 3.20 reads it with both the
# Makefile and the Ninja generators.
#
# The homec executable: HOMEC_EXECUTABLE (a cache variable; -DHOMEC_EXECUTABLE=... to choose),
# found on PATH by default.

if(CMAKE_VERSION VERSION_LESS 3.20)
  message(FATAL_ERROR "homec_compile needs CMake 3.20 or newer (DEPFILE with every generator)")
endif()

find_program(HOMEC_EXECUTABLE homec DOC "the homec compiler")

function(homec_compile name)
  cmake_parse_arguments(PARSE_ARGV 1 HC "" "MODEL;SCHEDULE;TARGET;OUTPUT;MANIFEST;CALIB"
                        "INPUT_SHAPE;EXTRA_ARGS")
  if(HC_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "homec_compile(${name}): unknown arguments: ${HC_UNPARSED_ARGUMENTS}")
  endif()
  foreach(required MODEL TARGET)
    if(NOT HC_${required})
      message(FATAL_ERROR "homec_compile(${name}): ${required} is required")
    endif()
  endforeach()
  if(NOT HOMEC_EXECUTABLE)
    message(FATAL_ERROR "homec_compile(${name}): homec not found; "
                        "put it on PATH or pass -DHOMEC_EXECUTABLE=/path/to/homec")
  endif()

  # Absolute paths everywhere: the depfile then names files the same way whichever folder
  # the generator runs the command in.
  get_filename_component(model "${HC_MODEL}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  set(args "${model}")
  set(depends "${model}")
  if(HC_SCHEDULE)
    get_filename_component(schedule "${HC_SCHEDULE}" ABSOLUTE
                           BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND args -p "${schedule}")
    list(APPEND depends "${schedule}")
  endif()
  set(target "${HC_TARGET}")
  if(target MATCHES "\\.toml$" OR target MATCHES "/")  # a descriptor file, not a built-in
    get_filename_component(target "${target}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND depends "${target}")
  endif()
  list(APPEND args -t "${target}")
  if(HC_CALIB)
    get_filename_component(calib "${HC_CALIB}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND args --calib "${calib}")
    list(APPEND depends "${calib}")
  endif()
  foreach(shape IN LISTS HC_INPUT_SHAPE)
    list(APPEND args --input-shape "${shape}")
  endforeach()
  if(HC_OUTPUT)
    get_filename_component(output "${HC_OUTPUT}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  else()
    set(output "${CMAKE_CURRENT_BINARY_DIR}/${name}.onnx")
  endif()
  # The manifest is named explicitly and declared as a second output of the command, so
  # the build knows where it is and that this step writes it.
  if(HC_MANIFEST)
    get_filename_component(manifest "${HC_MANIFEST}" ABSOLUTE
                           BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  else()
    string(REGEX REPLACE "\\.onnx$" "" stem "${output}")
    set(manifest "${stem}.manifest.json")
  endif()
  get_filename_component(output_dir "${output}" DIRECTORY)
  get_filename_component(manifest_dir "${manifest}" DIRECTORY)
  set(depfile "${output}.d")

  add_custom_command(
    OUTPUT "${output}" "${manifest}"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${output_dir}" "${manifest_dir}"
    COMMAND "${HOMEC_EXECUTABLE}" ${args} ${HC_EXTRA_ARGS}
            -o "${output}" --manifest "${manifest}" --depfile "${depfile}" -q
    DEPENDS ${depends}
    DEPFILE "${depfile}"
    COMMENT "homec: compiling ${name} for ${HC_TARGET}"
    VERBATIM)
  add_custom_target(${name} ALL DEPENDS "${output}")
  set_target_properties(${name} PROPERTIES HOMEC_OUTPUT "${output}"
                                           HOMEC_MANIFEST "${manifest}")
endfunction()
