// conveyor::mpi_world and friends: MPI when conveyor was built with it, a clear error otherwise.
#include <cstdlib>

#include "conveyor/process_group.hpp"
#include "core/check.hpp"

#if CONVEYOR_HAVE_MPI
#include "dist/mpi_session.hpp"
#endif

namespace conveyor {

bool mpi_available() {
  return CONVEYOR_HAVE_MPI != 0;
}

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

std::shared_ptr<ProcessGroup> mpi_world(int* argc, char*** argv) {
#if CONVEYOR_HAVE_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (initialized) {
    MPI_Query_thread(&provided);
  } else {
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  }
  if (provided < MPI_THREAD_MULTIPLE) {
    fail(ErrorCode::kCommunication,
         "MPI provides thread level {} but conveyor's stages need MPI_THREAD_MULTIPLE ({}); use "
         "an MPI built with thread support (Debian's Open MPI has it){}",
         provided, static_cast<int>(MPI_THREAD_MULTIPLE),
         initialized ? ", or initialise MPI with MPI_Init_thread(MPI_THREAD_MULTIPLE)" : "");
  }
  return std::make_shared<dist::MpiGroup>(!initialized, MPI_COMM_WORLD);
#else
  (void)argc;
  (void)argv;
  fail(ErrorCode::kInvalidArgument,
       "conveyor was built without MPI, so its stages cannot run as MPI ranks; install Open MPI "
       "(apt-get install openmpi-bin libopenmpi-dev) and rebuild");
#endif
}

}  // namespace conveyor
