// Engine hooks for tests: wrap each stage backend and link as Engine::open builds them (fault
// injection doubles, instrumentation). Not part of the public API.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>

#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/engine.hpp"

namespace conveyor::detail {

struct EngineHooks {
  // Replaces stage `stage`'s backend (usually by a decorator around it).
  std::function<std::unique_ptr<StageBackend>(int stage, std::unique_ptr<StageBackend>)> wrap_stage;
  // Replaces the link from stage `from` to from + 1.
  std::function<std::unique_ptr<Link>(int from, std::unique_ptr<Link>)> wrap_link;

  // Engine::open with these hooks installed.
  Engine open(const std::filesystem::path& model, const EngineOptions& options) const {
    return Engine::open(model, options, this);
  }
};

}  // namespace conveyor::detail
