// Distributed's collectives over any transport, and Distributed::create without MPI: the error
// that says how to get it.
#include "dist/distributed.hpp"

#include "core/check.hpp"

namespace conveyor::dist {

std::string Distributed::decided_by_rank0(const std::function<std::string()>& decide) {
  std::string value;
  std::string error;
  if (rank() == 0) {
    try {
      value = decide();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const std::string sent = broadcast(error.empty() ? "ok " + value : "error " + error);
  if (sent.starts_with("error ")) fail(ErrorCode::kInvalidArgument, "{}", sent.substr(6));
  return sent.substr(3);
}

void Distributed::check_same_everywhere(const std::string& mine, std::string_view what) {
  std::string verdict;
  const std::vector<std::string> all = gather(mine);  // rank 0 compares ...
  for (size_t r = 1; r < all.size() && verdict.empty(); ++r) {
    if (all[r] != all[0]) {
      verdict = fmt::format(
          "rank {} opened a different {} than rank 0 ({} there, {} on rank 0); start every rank "
          "with the same model and options",
          r, what, all[r], all[0]);
    }
  }
  verdict = broadcast(verdict);  // ... and every rank learns the verdict
  if (!verdict.empty()) fail(ErrorCode::kInvalidArgument, "{}", verdict);
}

void Distributed::fail_together(const std::function<void()>& check) {
  std::string error;  // "<code> <message>"
  try {
    check();
  } catch (const Error& e) {
    error = fmt::format("{} {}", static_cast<int>(e.code()), e.what());
  } catch (const std::exception& e) {
    error = fmt::format("{} {}", static_cast<int>(ErrorCode::kInternal), e.what());
  }
  const std::vector<std::string> all = gather(error);
  std::string verdict;
  for (size_t r = 0; r < all.size() && verdict.empty(); ++r) {
    if (!all[r].empty()) verdict = fmt::format("{} {}", r, all[r]);
  }
  verdict = broadcast(verdict);
  if (verdict.empty()) return;
  // "<rank> <code> <message>"
  const size_t rank_end = verdict.find(' ');
  const size_t code_end = verdict.find(' ', rank_end + 1);
  const auto code =
      static_cast<ErrorCode>(std::stoi(verdict.substr(rank_end + 1, code_end - rank_end - 1)));
  fail(code, "rank {}: {}", verdict.substr(0, rank_end), verdict.substr(code_end + 1));
}

#if !CONVEYOR_HAVE_MPI
std::shared_ptr<Distributed> Distributed::create(const ProcessGroup&, std::chrono::milliseconds) {
  fail(ErrorCode::kInvalidArgument,
       "conveyor was built without MPI, so a pipeline cannot span processes; install Open MPI "
       "(apt-get install openmpi-bin libopenmpi-dev) and rebuild");
}
#endif

}  // namespace conveyor::dist
