// Small helpers for reading JSON from files we do not control (config.json, safetensors headers).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace conveyor {

// "an array", "a string", "null": the JSON type of `value`, for error messages.
std::string json_type_phrase(const nlohmann::json& value);

}  // namespace conveyor
