#include "common/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace brainkernels {
namespace cpu {
namespace {

constexpr const char* kEnvVar = "BRAINKERNELS_CPU_ISA";

bool runs(Isa isa) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

Isa parse(const std::string& name, const std::string& source) {
  Isa isa;
  if (name == "avx512") {
    isa = Isa::kAvx512;
  } else if (name == "avx2") {
    isa = Isa::kAvx2;
  } else if (name == "baseline") {
    isa = Isa::kBaseline;
  } else {
    throw std::invalid_argument(source + ": unknown instruction set '" + name +
                                "'; expected avx512, avx2 or baseline");
  }
  if (!runs(isa)) throw std::invalid_argument(source + ": this CPU cannot run " + name);
  return isa;
}

constexpr int32_t kUnset = -1;
std::atomic<int32_t> forced{kUnset};
std::atomic<bool> env_read{false};

}  // namespace

const char* cpu_isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

Isa cpu_isa_best() {
  static const Isa best = runs(Isa::kAvx512) ? Isa::kAvx512 : runs(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
  return best;
}

Isa cpu_isa_active() {
  if (!env_read.exchange(true)) {
    const char* value = std::getenv(kEnvVar);
    if (value != nullptr && *value != '\0') {
      env_read = false;  // say it again on the next call instead of running with another ISA
      forced = static_cast<int32_t>(parse(value, std::string(kEnvVar) + "=" + value));
      env_read = true;
    }
  }
  const int32_t isa = forced.load();
  return isa == kUnset ? cpu_isa_best() : static_cast<Isa>(isa);
}

bool cpu_isa_is_forced() {
  cpu_isa_active();  // reads the environment variable
  return forced.load() != kUnset;
}

void cpu_isa_force(const std::string& name) {
  env_read = true;  // an explicit choice overrides the environment variable
  forced = name.empty() ? kUnset : static_cast<int32_t>(parse(name, "cpu_isa_force"));
}

}  // namespace cpu
}  // namespace brainkernels
