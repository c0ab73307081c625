// ProcessGroup: the processes one pipeline spans, each running a slice of its stages. Engine
// takes one through EngineOptions::processes; without it every stage runs in this process.
#pragma once

#include <memory>
#include <string>

namespace conveyor {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;  // this process, in [0, size())
  virtual int size() const = 0;
  virtual std::string host() const = 0;       // where this process runs
  virtual std::string transport() const = 0;  // e.g. "MPI (Open MPI v4.1.4, THREAD_MULTIPLE)"
  // Ends every process of the group (a fatal error on one of them). Does not return.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// True when conveyor was built with MPI (libopenmpi-dev found at configure time).
bool mpi_available();
// True when this process was started by an MPI launcher (mpirun, srun): the launcher's
// environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK) is present.
bool launched_by_mpi();
// The MPI world this process belongs to: initialises MPI with MPI_THREAD_MULTIPLE (the stages'
// threads talk to their peers at once) unless it is already initialised, in which case the
// caller's MPI is used as it is and the caller finalises it. MPI is finalised when the last
// reference goes, if conveyor initialised it. Throws conveyor::Error(kInvalidArgument) when
// conveyor was built without MPI, and kCommunication when MPI gives less than THREAD_MULTIPLE.
std::shared_ptr<ProcessGroup> mpi_world(int* argc = nullptr, char*** argv = nullptr);

}  // namespace conveyor
