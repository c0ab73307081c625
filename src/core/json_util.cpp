// JSON helpers for error messages.
#include "core/json_util.hpp"

namespace conveyor {

std::string json_type_phrase(const nlohmann::json& value) {
  const std::string name = value.type_name();
  if (value.is_null()) return name;
  return (value.is_array() || value.is_object() ? "an " : "a ") + name;
}

}  // namespace conveyor
