// pybind11 face of the ideal DP: kfac_ext.placement._dp.solve(...) -> dict.
// The Python side (kfac_ext/placement/dp.py) builds the units and checks the
// graph; this file only converts types and releases the GIL while solving.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <stdexcept>

#include "ideal_dp.h"

namespace py = pybind11;
using namespace kfac_placement;

namespace {

py::dict solve_py(int num_units, std::vector<std::pair<int, int>> unit_edges,
                  std::vector<double> accel_time, std::vector<double> cpu_time,
                  std::vector<double> size, std::vector<bool> accel_ok,
                  std::vector<std::tuple<int, double, std::vector<int>>> comm_nodes,
                  int num_accelerators, int num_cpus, double memory_cap, double lower_bound,
                  double upper_bound, long long max_ideals, double growth, double max_memory_bytes,
                  double time_limit, double time_used) {
    Problem p;
    p.num_units = num_units;
    p.unit_edges = std::move(unit_edges);
    p.accel_time = std::move(accel_time);
    p.cpu_time = std::move(cpu_time);
    p.size = std::move(size);
    p.accel_ok.assign(accel_ok.begin(), accel_ok.end());
    for (auto& [unit, cost, succ] : comm_nodes) p.comm_nodes.push_back({unit, cost, std::move(succ)});
    p.num_accelerators = num_accelerators;
    p.num_cpus = num_cpus;
    p.memory_cap = memory_cap;
    p.lower_bound = lower_bound;
    p.upper_bound = upper_bound;
    p.max_ideals = max_ideals;
    p.growth = growth;
    p.max_memory_bytes = max_memory_bytes;
    p.time_limit = time_limit;
    p.time_used = time_used;
    Result r;
    {
        py::gil_scoped_release release;
        r = solve(p);
    }
    py::list devices, passes;
    for (const Device& d : r.devices) {
        py::dict dd;
        dd["is_cpu"] = d.is_cpu;
        dd["units"] = d.units;
        dd["load"] = d.load;
        devices.append(dd);
    }
    for (const PassInfo& pi : r.passes) {
        py::dict pd;
        pd["threshold"] = pi.threshold;
        pd["pairs_visited"] = pi.pairs_visited;
        pd["pairs_examined"] = pi.pairs_examined;
        pd["feasible"] = pi.feasible;
        pd["seconds"] = pi.seconds;
        passes.append(pd);
    }
    py::dict out;
    out["feasible"] = r.feasible;
    out["value"] = r.value;
    out["devices"] = devices;
    out["ideals"] = r.ideals;
    out["ideal_links"] = r.ideal_links;
    out["pairs_visited"] = r.pairs_visited;
    out["pairs_examined"] = r.pairs_examined;
    out["passes"] = passes;
    out["enumerate_seconds"] = r.enumerate_seconds;
    out["seconds"] = r.seconds;
    out["message"] = r.message;
    return out;
}

}  // namespace

PYBIND11_MODULE(_dp, m) {
    m.doc() = "Exact contiguous max-load placement by DP over the ideals of a DAG (C++17).";
    py::register_exception<LimitExceeded>(m, "LimitExceeded", PyExc_RuntimeError);
    m.def("solve", &solve_py, py::arg("num_units"), py::arg("unit_edges"), py::arg("accel_time"),
          py::arg("cpu_time"), py::arg("size"), py::arg("accel_ok"), py::arg("comm_nodes"),
          py::arg("num_accelerators"), py::arg("num_cpus"), py::arg("memory_cap"),
          py::arg("lower_bound") = 0.0, py::arg("upper_bound") = 1e300,
          py::arg("max_ideals") = 4000000LL, py::arg("growth") = 0.04,
          py::arg("max_memory_bytes") = 1073741824.0,
          py::arg("time_limit") = std::numeric_limits<double>::infinity(), py::arg("time_used") = 0.0,
          "Solve; returns a dict (feasible, value, devices, ideals, pairs_visited, pairs_examined, passes, ...). "
          "Raises LimitExceeded when the ideals, the memory or the time go over their limits.");
}
