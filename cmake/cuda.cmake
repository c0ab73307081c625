# conveyor_cuda: the CUDA kernel layer (kernels/) and CUDA backend (src/backend/cuda/: CudaStage,
# NCCL communicator when NCCL was found), linked into the engine with CONVEYOR_WITH_CUDA=1.
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

# The engine builds CUDA stages (src/engine/stage_factory.cpp) when this is defined.
target_link_libraries(conveyor PRIVATE conveyor_cuda)
target_compile_definitions(conveyor PRIVATE CONVEYOR_WITH_CUDA=1)

# conveyor is static, so its private link to conveyor_cuda is part of its exported interface:
# conveyor_cuda must be in the export set (and the package config must find CUDAToolkit).
install(TARGETS conveyor_cuda EXPORT conveyorTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})

# The gpu-labelled tests are added by tests/CMakeLists.txt when this target exists.
