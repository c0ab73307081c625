// Distributed::create without MPI: the error that says how to get it.
#include "dist/distributed.hpp"

#include "core/check.hpp"

namespace conveyor::dist {

#if !CONVEYOR_HAVE_MPI
std::shared_ptr<Distributed> Distributed::create(const ProcessGroup&, std::chrono::milliseconds) {
  fail(ErrorCode::kInvalidArgument,
       "conveyor was built without MPI, so a pipeline cannot span processes; install Open MPI "
       "(apt-get install openmpi-bin libopenmpi-dev) and rebuild");
}
#endif

}  // namespace conveyor::dist
