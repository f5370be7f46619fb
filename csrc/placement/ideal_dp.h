// Exact max-load placement over contiguous splits: dynamic programming over
// the ideals (down-sets) of a DAG of "units" (colour classes, fused where the
// order forces it). Plain C++17, no torch; bound to Python in bindings.cpp.
//
// Model (see kfac_ext/placement/dp.py for the full statement): a split is a
// chain of ideals  {} = I_0 ⊂ I_1 ⊂ ... ⊂ I_m = all units,  and device t
// holds the units of I_t \ I_{t-1}. Up to k of the devices are accelerators
// (load = accelerator time + transfer cost of every distinct node output
// that crosses the device's node set; memory <= cap; accel-capable units
// only) and up to l are CPUs (load = CPU time). Minimise the largest load.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfac_placement {

// A node whose output can cross a device boundary: it lives in `unit` and
// feeds the (distinct, != unit) units `succ_units`; moving its output costs
// `cost` on every accelerator it enters or leaves.
struct CommNode {
    int unit = 0;
    double cost = 0.0;
    std::vector<int> succ_units;
};

struct Problem {
    int num_units = 0;
    std::vector<std::pair<int, int>> unit_edges;  // order: first must precede second
    std::vector<double> accel_time, cpu_time, size;
    std::vector<char> accel_ok;
    std::vector<CommNode> comm_nodes;
    int num_accelerators = 0;
    int num_cpus = 0;
    double memory_cap = 0.0;
    double lower_bound = 0.0;     // no split has a smaller max load
    double upper_bound = 1e300;   // some contiguous split reaches it (or "none known")
    long long max_ideals = 4'000'000;
    // Bounds on the work itself (LimitExceeded names the one that was hit):
    // the solver's approximate memory in bytes, and wall-clock seconds.
    double max_memory_bytes = 1.0 * (1LL << 30);
    double time_limit = std::numeric_limits<double>::infinity();
    double time_used = 0.0;  // seconds the caller already spent of time_limit
    double growth = 0.04;         // first relative step of the threshold search
};

struct Device {
    bool is_cpu = false;
    std::vector<int> units;
    double load = 0.0;
};

struct PassInfo {
    double threshold = 0.0;
    long long pairs_visited = 0;
    long long pairs_examined = 0;
    bool feasible = false;
    double seconds = 0.0;
};

struct Result {
    bool feasible = false;
    double value = 0.0;            // the optimal max load (if feasible)
    std::vector<Device> devices;   // in pipeline order
    long long ideals = 0;
    long long ideal_links = 0;     // lattice edges (ideal, ideal minus a maximal unit)
    long long pairs_visited = 0;   // sub-ideal pairs reached by the pruned enumeration (all passes)
    long long pairs_examined = 0;  // pairs whose load was evaluated against the DP states
    std::vector<PassInfo> passes;
    double enumerate_seconds = 0.0;
    double seconds = 0.0;
    std::string message;
};

// The solve stopped at one of its limits (ideal count, memory, time) before
// finding the optimum; what() names the limit and the figure reached.
class LimitExceeded : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Throws std::invalid_argument on malformed input, LimitExceeded when the
// lattice (or the time) exceeds the problem's limits.
Result solve(const Problem& problem);

}  // namespace kfac_placement
