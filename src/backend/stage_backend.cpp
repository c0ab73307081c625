// The head-row selection every backend's sample() starts from.
#include "backend/stage_backend.hpp"

namespace conveyor {

std::vector<HeadRow> head_rows(const MicroBatch& mb, const StepContext& ctx) {
  std::vector<HeadRow> rows;
  int64_t index = 0;
  for (const SeqChunk& chunk : mb.chunks) {
    const LogitsCapture capture = ctx.capture(chunk.seq);
    for (int64_t p = chunk.begin; p < chunk.end; ++p, ++index) {
      const bool sampled = chunk.sample && p == chunk.end - 1;
      if (sampled || capture == LogitsCapture::kAll) {
        rows.push_back({chunk.seq, p, index, sampled, capture != LogitsCapture::kNone});
      }
    }
  }
  return rows;
}

}  // namespace conveyor
