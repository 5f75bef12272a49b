// The instruction set the CPU kernels run with, chosen at run time so one portable build uses
// the widest vectors the CPU has. Forced (to test every path on one machine) by
// BRAINKERNELS_CPU_ISA=avx512|avx2|baseline, read on first use, or by cpu_isa_force.
#pragma once
#include <cstdint>
#include <string>

namespace brainkernels {
namespace cpu {

enum class Isa : int32_t { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest instruction set this CPU runs (and this build has code for).
Isa cpu_isa_best();
// The instruction set the kernels run with now: the forced one, else the best.
Isa cpu_isa_active();
// Force `name` ("avx512", "avx2", "baseline"); "" returns to the best. Throws
// std::invalid_argument for an unknown name or one this CPU cannot run.
void cpu_isa_force(const std::string& name);
bool cpu_isa_is_forced();
const char* cpu_isa_name(Isa isa);

}  // namespace cpu
}  // namespace brainkernels
