# conveyor_cuda: the CUDA kernel layer (kernels/) and CUDA backend (src/backend/cuda/: CudaStage,
# NCCL communicator when NCCL was found), a static library the GPU tests link; and
# conveyor_cuda_plugin, the same code as the shared module the engine loads when a run uses CUDA
# (src/backend/cuda/plugin.hpp; the engine is built with CONVEYOR_WITH_CUDA=1).
# Included from the top-level CMakeLists.txt when CONVEYOR_HAVE_CUDA; the gpu tests compile
# everywhere and skip at run time without a device.

# A100 (sm_80, also runs on sm_86/89) and H100/H200 (sm_90) by default; override with
# -DCMAKE_CUDA_ARCHITECTURES=90 (or "native" on a machine with a GPU).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures to compile for" FORCE)
endif()
enable_language(CUDA)
if(NOT TARGET CUDA::cudart)
  find_package(CUDAToolkit REQUIRED)
endif()

file(GLOB CONVEYOR_CUDA_SOURCES CONFIGURE_DEPENDS
  ${PROJECT_SOURCE_DIR}/kernels/*.cu ${PROJECT_SOURCE_DIR}/kernels/*.cpp
  ${PROJECT_SOURCE_DIR}/src/backend/cuda/*.cu ${PROJECT_SOURCE_DIR}/src/backend/cuda/*.cpp)
if(NOT CONVEYOR_HAVE_NCCL)
  list(FILTER CONVEYOR_CUDA_SOURCES EXCLUDE REGEX "/nccl_[^/]*\\.cpp$")
endif()
list(FILTER CONVEYOR_CUDA_SOURCES EXCLUDE REGEX "/plugin\\.cpp$")
add_library(conveyor_cuda STATIC ${CONVEYOR_CUDA_SOURCES})
add_library(conveyor::cuda ALIAS conveyor_cuda)
# The kernels need C++17 only; use C++20 where this CMake knows how to ask nvcc for it
# (CMake 3.25 does not for nvcc 13).
if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
  set(CONVEYOR_CUDA_STANDARD 20)
else()
  set(CONVEYOR_CUDA_STANDARD 17)
endif()
set_target_properties(conveyor_cuda PROPERTIES
  EXPORT_NAME cuda
  POSITION_INDEPENDENT_CODE ON
  CUDA_STANDARD ${CONVEYOR_CUDA_STANDARD}
  CUDA_STANDARD_REQUIRED ON
  CUDA_EXTENSIONS OFF
  CUDA_SEPARABLE_COMPILATION OFF)
# kernels/ is included as "kernels/<file>", backend code as "backend/cuda/<file>".
target_include_directories(conveyor_cuda
  PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
  PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_compile_options(conveyor_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:$<$<CONFIG:Debug>:-lineinfo>>)
target_link_libraries(conveyor_cuda
  PUBLIC conveyor_core CUDA::cudart CUDA::cublas CUDA::cublasLt
  PRIVATE $<BUILD_INTERFACE:conveyor_options> fmt::fmt spdlog::spdlog)
if(CONVEYOR_HAVE_NCCL)
  target_include_directories(conveyor_cuda PRIVATE ${CONVEYOR_NCCL_INCLUDE_DIR})
  target_link_libraries(conveyor_cuda PRIVATE ${CONVEYOR_NCCL_LIBRARY})
  # Tests see it through the build interface only (the NCCL header is internal).
  target_compile_definitions(conveyor_cuda PUBLIC $<BUILD_INTERFACE:CONVEYOR_HAVE_NCCL=1>)
endif()

# The plug-in: one exported symbol (conveyor_cuda_plugin_v1); everything else, the copies of
# conveyor_core and conveyor_cuda inside it included, stays hidden so nothing in the module
# interposes on the program that loads it.
add_library(conveyor_cuda_plugin MODULE ${PROJECT_SOURCE_DIR}/src/backend/cuda/plugin.cpp)
target_include_directories(conveyor_cuda_plugin PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(conveyor_cuda_plugin PRIVATE conveyor_cuda conveyor_options)
target_compile_definitions(conveyor_cuda_plugin PRIVATE CONVEYOR_BUILD_ID="${CONVEYOR_BUILD_ID}")
set_target_properties(conveyor_cuda_plugin PROPERTIES
  CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
  LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
target_link_options(conveyor_cuda_plugin PRIVATE -Wl,--exclude-libs,ALL -Wl,--as-needed)
if(NOT CONVEYOR_SANITIZE)  # clang links no sanitizer runtime into a shared object
  target_link_options(conveyor_cuda_plugin PRIVATE -Wl,--no-undefined)
endif()
install(TARGETS conveyor_cuda_plugin LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})

# The engine loads the module (src/engine/cuda_plugin_loader.cpp) from beside the executable,
# (build/lib for the build tree's binaries) or the install prefix; it is built whenever the
# engine is.
add_dependencies(conveyor conveyor_cuda_plugin)
set_source_files_properties(${PROJECT_SOURCE_DIR}/src/engine/cuda_plugin_loader.cpp PROPERTIES
  COMPILE_DEFINITIONS
  "CONVEYOR_CUDA_PLUGIN_INSTALL_PATH=\"${CMAKE_INSTALL_FULL_LIBDIR}/$<TARGET_FILE_NAME:conveyor_cuda_plugin>\"")
target_compile_definitions(conveyor PRIVATE CONVEYOR_WITH_CUDA=1)

# The gpu-labelled tests are added by tests/CMakeLists.txt when this target exists.
