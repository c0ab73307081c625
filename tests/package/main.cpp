// Consumer of the installed package: uses the public headers and the umbrella target only.
#include <conveyor/engine.hpp>
#include <conveyor/error.hpp>
#include <conveyor/partition.hpp>

#include <iostream>

int main() {
  conveyor::Partition partition = conveyor::Partition::even(10, 4);
  if (partition.to_string() != "3,3,2,2") return 1;
  try {
    conveyor::Engine::open("/nonexistent-conveyor-model", {});
    return 1;
  } catch (const conveyor::Error& e) {
    if (e.code() != conveyor::ErrorCode::kInvalidArgument) return 1;
  }
  std::cout << "consumer ok: partition " << partition.to_string() << "\n";
  return 0;
}
