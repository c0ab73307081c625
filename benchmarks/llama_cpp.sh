# Sourced by the benchmarks that compare with llama.cpp (cpu_vs_llama.sh, serving_vs_llama.sh).
# llama_cpp_build DIR VERSION TARGET...: builds llama.cpp's TARGETs (into DIR/build/bin) from the
# sources vendored in PyPI's llama-cpp-python VERSION sdist, unpacked into DIR/src; reused when
# they are all built. llama_cpp_f32 DIR Q4 OUT: converts SmolLM2's Q4_1 GGUF to F32 once.
llama_cpp_build() {
  local dir=$1 version=$2
  shift 2
  local missing=0 target
  for target in "$@"; do [ -x "$dir/build/bin/$target" ] || missing=1; done
  [ "$missing" = 0 ] && return 0
  if [ ! -d "$dir/src" ]; then
    (cd "$dir" && pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" &&
      tar xzf "llama_cpp_python-$version.tar.gz" && mv "llama_cpp_python-$version" src)
  fi
  cmake -S "$dir/src/vendor/llama.cpp" -B "$dir/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$dir/build" -j "$(nproc)" --target "$@"
}

llama_cpp_f32() {
  local dir=$1 q4=$2 out=$3
  [ -f "$out" ] || "$dir/build/bin/llama-quantize" --allow-requantize "$q4" "$out" F32 >/dev/null 2>&1
}
