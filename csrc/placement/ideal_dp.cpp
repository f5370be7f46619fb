// Exact contiguous max-load placement: DP over the ideals of the unit DAG,
// pruned by a threshold search (see ideal_dp.h for the model).
//
// Why it is fast enough: a pass at threshold T only pairs ideals I' ⊂ I whose
// difference I \ I' could fit on one device, i.e. whose compute time is <= T
// (and memory <= cap on an accelerator). The pass runs in "push" form: once
// I' is final, a walk up the lattice (adding one addable unit at a time)
// offers every superset I; compute time and memory only grow on the way up,
// so the walk stops at the first set that is too heavy, and it carries the
// transfer cost of the growing set incrementally (O(edges of the added unit)
// per step). I' starts no walk at all unless one of its states is finite and
// the work outside it can still fit the devices left; on the paper's graphs
// that skips most ideals. Any T at or above the optimum gives the exact
// optimum (every device set of the optimal chain has load <= OPT <= T); a
// pass below it reports "infeasible". T climbs geometrically from a lower
// bound and is capped by a known split, so the last pass overshoots little.
#include "ideal_dp.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace kfac_placement {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// The lattice of ideals: bitsets in one pool, per-ideal sums, and for each
// ideal the links to the ideals one maximal unit smaller.
struct Lattice {
    int words = 1;
    std::vector<uint64_t> pool;
    std::vector<double> accel, cpu, mem;
    std::vector<int> not_accel;  // units that cannot go on an accelerator
    std::vector<double> cpu_only, accel_of_cpu_only;  // CPU / accelerator time of those units
    // Up-links: from each ideal to the ideals one addable unit larger.
    std::vector<int64_t> up_start;
    std::vector<int> up_unit, up_super;

    int64_t size() const { return static_cast<int64_t>(accel.size()); }
    const uint64_t* bits(int64_t id) const { return pool.data() + id * words; }
};

class IdealTable {  // open addressing: bitset -> ideal id
  public:
    explicit IdealTable(const Lattice& l) : lattice_(l), slots_(1 << 12, -1) {}

    uint64_t hash(const uint64_t* b) const {
        uint64_t h = 0x1234567;
        for (int w = 0; w < lattice_.words; ++w) h = mix(h ^ b[w]);
        return h;
    }
    // Returns the id of `b`, or -1 with `slot` set to where it would go.
    int64_t find(const uint64_t* b, size_t& slot) const {
        size_t mask = slots_.size() - 1;
        for (slot = hash(b) & mask;; slot = (slot + 1) & mask) {
            int64_t id = slots_[slot];
            if (id < 0) return -1;
            if (std::memcmp(lattice_.bits(id), b, sizeof(uint64_t) * lattice_.words) == 0) return id;
        }
    }
    void insert_at(size_t slot, int64_t id) {
        slots_[slot] = id;
        if (++count_ * 2 > slots_.size()) grow();
    }

  private:
    void grow() {
        std::vector<int64_t> old(slots_.size() * 2, -1);
        old.swap(slots_);
        size_t mask = slots_.size() - 1;
        for (int64_t id : old) {
            if (id < 0) continue;
            size_t s = hash(lattice_.bits(id)) & mask;
            while (slots_[s] >= 0) s = (s + 1) & mask;
            slots_[s] = id;
        }
    }
    const Lattice& lattice_;
    std::vector<int64_t> slots_;
    size_t count_ = 0;
};

void check_problem(const Problem& p) {
    const int U = p.num_units;
    if (U <= 0) throw std::invalid_argument("num_units must be positive");
    auto check_len = [&](size_t n, const char* what) {
        if (n != static_cast<size_t>(U))
            throw std::invalid_argument(std::string(what) + " must have one entry per unit");
    };
    check_len(p.accel_time.size(), "accel_time");
    check_len(p.cpu_time.size(), "cpu_time");
    check_len(p.size.size(), "size");
    check_len(p.accel_ok.size(), "accel_ok");
    for (auto [a, b] : p.unit_edges) {
        if (a < 0 || a >= U || b < 0 || b >= U || a == b)
            throw std::invalid_argument("unit edge out of range or a self-loop");
    }
    for (const CommNode& c : p.comm_nodes) {
        if (c.unit < 0 || c.unit >= U) throw std::invalid_argument("comm node unit out of range");
        for (int s : c.succ_units)
            if (s < 0 || s >= U || s == c.unit)
                throw std::invalid_argument("comm node successor unit out of range or equal to its own unit");
    }
    if (p.num_accelerators < 0 || p.num_cpus < 0 || p.num_accelerators + p.num_cpus == 0)
        throw std::invalid_argument("need at least one device");
    if ((static_cast<long long>(p.num_accelerators) + 1) * (static_cast<long long>(p.num_cpus) + 1) > 4096)
        throw std::invalid_argument("at most 4096 (accelerators+1)*(CPUs+1) device-count states");
    if (!(p.max_memory_bytes > 0) || !(p.time_limit > 0))
        throw std::invalid_argument("max_memory_bytes and time_limit must be positive");
}

// Wall-clock budget of one solve; `check` is cheap enough to call often.
class Deadline {
  public:
    Deadline(Clock::time_point t0, double limit, double used_before)
        : t0_(t0), limit_(limit), used_before_(used_before) {}
    void check(const char* where) const {
        if (limit_ == std::numeric_limits<double>::infinity()) return;
        if (used_before_ + seconds_since(t0_) > limit_) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "time limit of %g s reached while %s", limit_, where);
            throw LimitExceeded(msg);
        }
    }

  private:
    Clock::time_point t0_;
    double limit_, used_before_;
};

// Approximate bytes the solver holds per ideal and per lattice link: the
// bitset and sums (x2 for vector growth), the hash slots, the DP's states
// (best, type, back pointer) and the per-ideal walk info.
double bytes_per_ideal(const Problem& p) {
    const double words = (p.num_units + 63) / 64;
    const double states = (p.num_accelerators + 1.0) * (p.num_cpus + 1.0);
    return 2.0 * (8.0 * words + 44.0) + 32.0 + 40.0 + 13.0 * states;
}
constexpr double kBytesPerLink = 56.0;

// The most ideals the limits allow.
long long ideal_budget(const Problem& p) {
    const double by_memory = p.max_memory_bytes / bytes_per_ideal(p);
    return static_cast<long long>(std::min<double>(static_cast<double>(p.max_ideals), by_memory));
}

std::string format(const char* fmt, double a, double b = 0, double c = 0, double d = 0) {
    char buf[256];
    std::snprintf(buf, sizeof buf, fmt, a, b, c, d);
    return buf;
}

double mib(double bytes) { return bytes / (1 << 20); }

// A lower bound on the number of ideals, from the unit order's levels
// (longest-path depth): "every unit of depth < d, plus any subset of the
// units of depth d" is an ideal for each d, so a wide level alone makes the
// lattice explode. O(units + edges); lets a hopeless DP refuse at once.
struct IdealCountBound {
    double count;   // a lower bound on the number of ideals
    int max_width;  // the widest level: at least 2^max_width ideals
};

IdealCountBound ideal_count_lower_bound(const Problem& p) {
    const int U = p.num_units;
    std::vector<std::vector<int>> succ(U);
    std::vector<int> indeg(U, 0), depth(U, 0), ready;
    for (auto [a, b] : p.unit_edges) {
        succ[a].push_back(b);
        ++indeg[b];
    }
    for (int u = 0; u < U; ++u)
        if (indeg[u] == 0) ready.push_back(u);
    int max_depth = 0;
    while (!ready.empty()) {
        const int u = ready.back();
        ready.pop_back();
        max_depth = std::max(max_depth, depth[u]);
        for (int v : succ[u]) {
            depth[v] = std::max(depth[v], depth[u] + 1);
            if (--indeg[v] == 0) ready.push_back(v);
        }
    }
    std::vector<int> width(max_depth + 1, 0);
    for (int u = 0; u < U; ++u) ++width[depth[u]];
    double count = 1.0;  // the empty ideal
    for (int w : width) count += std::ldexp(1.0, std::min(w, 1000)) - 1.0;
    return {count, *std::max_element(width.begin(), width.end())};
}

Lattice enumerate_ideals(const Problem& p, const Deadline& deadline) {
    const int U = p.num_units;
    const long long budget = ideal_budget(p);  // ideals the memory limit allows
    const double per_ideal = bytes_per_ideal(p);
    Lattice L;
    L.words = (U + 63) / 64;
    const int W = L.words;
    // Predecessor bitsets, kept sparse (word index, bits): a unit has few
    // predecessors, so the readiness test costs O(its words), not O(W).
    std::vector<uint64_t> dense(static_cast<size_t>(U) * W, 0);
    for (auto [a, b] : p.unit_edges) dense[static_cast<size_t>(b) * W + a / 64] |= 1ULL << (a % 64);
    std::vector<int> pred_start(U + 1, 0);
    std::vector<std::pair<int, uint64_t>> pred;
    for (int v = 0; v < U; ++v) {
        for (int w = 0; w < W; ++w)
            if (uint64_t bits = dense[static_cast<size_t>(v) * W + w]) pred.emplace_back(w, bits);
        pred_start[v + 1] = static_cast<int>(pred.size());
    }
    std::vector<uint64_t>().swap(dense);

    L.pool.assign(W, 0);
    L.accel.push_back(0.0);
    L.cpu.push_back(0.0);
    L.mem.push_back(0.0);
    L.not_accel.push_back(0);
    L.cpu_only.push_back(0.0);
    L.accel_of_cpu_only.push_back(0.0);
    IdealTable table(L);
    size_t slot;
    table.find(L.bits(0), slot);
    table.insert_at(slot, 0);

    struct RawLink { int64_t ideal; int unit; int64_t sub; };
    std::vector<RawLink> raw;
    std::vector<uint64_t> cur(W), next(W);
    // Breadth first: ideals come out by size, so a sub-ideal has a smaller id.
    for (int64_t id = 0; id < L.size(); ++id) {
        if ((id & 255) == 0) deadline.check("enumerating the ideals");
        std::copy(L.bits(id), L.bits(id) + W, cur.begin());
        for (int v = 0; v < U; ++v) {
            if (cur[v / 64] >> (v % 64) & 1ULL) continue;
            bool ready = true;
            for (int i = pred_start[v]; i < pred_start[v + 1] && ready; ++i)
                ready = (pred[i].second & ~cur[pred[i].first]) == 0;
            if (!ready) continue;
            next = cur;
            next[v / 64] |= 1ULL << (v % 64);
            int64_t nid = table.find(next.data(), slot);
            if (nid < 0) {
                nid = L.size();
                if (nid >= p.max_ideals)
                    throw LimitExceeded(format("the unit order has more than %.0f ideals, the DP's cap",
                                               static_cast<double>(p.max_ideals)));
                const double need = nid * per_ideal + raw.size() * kBytesPerLink;
                if (nid >= budget || need > p.max_memory_bytes)
                    throw LimitExceeded(format(
                        "the ideals of the unit order need more than the DP's memory limit of %.0f MiB "
                        "(%.0f ideals at %.0f B and %.0f lattice links so far)",
                        mib(p.max_memory_bytes), static_cast<double>(nid), per_ideal,
                        static_cast<double>(raw.size())));
                L.pool.insert(L.pool.end(), next.begin(), next.end());
                L.accel.push_back(L.accel[id] + p.accel_time[v]);
                L.cpu.push_back(L.cpu[id] + p.cpu_time[v]);
                L.mem.push_back(L.mem[id] + p.size[v]);
                L.not_accel.push_back(L.not_accel[id] + (p.accel_ok[v] ? 0 : 1));
                L.cpu_only.push_back(L.cpu_only[id] + (p.accel_ok[v] ? 0.0 : p.cpu_time[v]));
                L.accel_of_cpu_only.push_back(L.accel_of_cpu_only[id] + (p.accel_ok[v] ? 0.0 : p.accel_time[v]));
                table.insert_at(slot, nid);
            }
            raw.push_back({nid, v, id});
        }
    }
    const int64_t N = L.size();
    L.up_start.assign(N + 1, 0);
    for (const RawLink& r : raw) ++L.up_start[r.sub + 1];
    for (int64_t i = 0; i < N; ++i) L.up_start[i + 1] += L.up_start[i];
    L.up_unit.resize(raw.size());
    L.up_super.resize(raw.size());
    std::vector<int64_t> fill(L.up_start.begin(), L.up_start.end() - 1);
    for (const RawLink& r : raw) {
        int64_t at = fill[r.sub]++;
        L.up_unit[at] = r.unit;
        L.up_super[at] = static_cast<int>(r.ideal);
    }
    return L;
}

// Transfer cost of a growing set of units, updated one unit at a time.
class CommTracker {
  public:
    explicit CommTracker(const Problem& p) : in_set_(p.num_units, 0) {
        const int U = p.num_units;
        const int M = static_cast<int>(p.comm_nodes.size());
        unit_.resize(M);
        cost_.resize(M);
        nsucc_.resize(M);
        count_.assign(M, 0);
        own_start_.assign(U + 1, 0);
        feeds_start_.assign(U + 1, 0);
        for (const CommNode& c : p.comm_nodes) {
            ++own_start_[c.unit + 1];
            for (int s : c.succ_units) ++feeds_start_[s + 1];
        }
        for (int u = 0; u < U; ++u) {
            own_start_[u + 1] += own_start_[u];
            feeds_start_[u + 1] += feeds_start_[u];
        }
        own_.resize(own_start_[U]);
        feeds_.resize(feeds_start_[U]);
        std::vector<int> of(own_start_.begin(), own_start_.end() - 1);
        std::vector<int> ff(feeds_start_.begin(), feeds_start_.end() - 1);
        for (int m = 0; m < M; ++m) {
            const CommNode& c = p.comm_nodes[m];
            unit_[m] = c.unit;
            cost_[m] = c.cost;
            nsucc_[m] = static_cast<int>(c.succ_units.size());
            own_[of[c.unit]++] = m;
            for (int s : c.succ_units) feeds_[ff[s]++] = m;
        }
    }

    // Adds unit x to the set; returns the change of the set's transfer cost.
    double add(int x) {
        double delta = 0.0;
        for (int i = own_start_[x]; i < own_start_[x + 1]; ++i) {
            int m = own_[i];  // was outside: crossing iff a consumer inside; now inside: iff one outside
            delta += cost_[m] * ((count_[m] < nsucc_[m]) - (count_[m] > 0));
        }
        in_set_[x] = 1;
        for (int i = feeds_start_[x]; i < feeds_start_[x + 1]; ++i) {
            int m = feeds_[i];
            bool before = crossing(m);
            ++count_[m];
            delta += cost_[m] * (crossing(m) - before);
        }
        return delta;
    }
    void remove(int x) {
        for (int i = feeds_start_[x]; i < feeds_start_[x + 1]; ++i) --count_[feeds_[i]];
        in_set_[x] = 0;
    }
    double cost_of(const std::vector<int>& units) {
        double total = 0.0;
        for (int x : units) total += add(x);
        for (int x : units) remove(x);
        return total;
    }

  private:
    bool crossing(int m) const {
        return in_set_[unit_[m]] ? count_[m] < nsucc_[m] : count_[m] > 0;
    }
    std::vector<char> in_set_;
    std::vector<int> unit_, nsucc_, count_;
    std::vector<double> cost_;
    std::vector<int> own_start_, own_, feeds_start_, feeds_;
};

enum : int8_t { kNone = 0, kAccel = 1, kCpu = 2, kFewerAccel = 3, kFewerCpu = 4 };

// One pass of the DP restricted to device sets with load <= threshold.
//
// "Push" form: ideals are finished in size order; a finished ideal I' whose
// states can still lead to a full split walks *up* the lattice over the
// supersets I with compute(I \ I') <= T and offers max(state, load) to I.
// An ideal whose every state is infinite, or cannot be completed (the work
// left outside it does not fit the devices left, a bound computed from sums
// alone), pushes nothing, so the walk only starts where a split can pass.
class ThresholdDP {
  public:
    ThresholdDP(const Problem& p, const Lattice& L, CommTracker& comm, const Deadline& deadline)
        : p_(p), L_(L), comm_(comm), deadline_(deadline), k_(p.num_accelerators), l_(p.num_cpus),
          ns_((k_ + 1) * (l_ + 1)) {
        // Best accelerator time saved per unit of CPU time (bounds what CPUs can absorb).
        ratio_ = 0.0;
        for (int u = 0; u < p.num_units; ++u) {
            if (!p.accel_ok[u] || p.accel_time[u] <= 0) continue;
            ratio_ = p.cpu_time[u] > 0 ? std::max(ratio_, p.accel_time[u] / p.cpu_time[u]) : kInf;
        }
        const int64_t N = L.size();
        info_.resize(N);
        for (int64_t i = 0; i < N; ++i)
            info_[i] = {L.accel[i], L.cpu[i], L.mem[i], L.not_accel[i], -1};
    }

    PassInfo run(double threshold) {
        auto t0 = Clock::now();
        const int64_t N = L_.size();
        T_ = threshold + 1e-12 * std::max(1.0, threshold);
        cap_ = p_.memory_cap * (1 + 1e-12);
        best_.assign(static_cast<size_t>(N) * ns_, kInf);
        type_.assign(static_cast<size_t>(N) * ns_, kNone);
        sub_.assign(static_cast<size_t>(N) * ns_, -1);
        for (auto& x : info_) x.stamp = -1;
        visited_ = examined_ = 0;
        for (int s = 0; s < ns_; ++s) best_[s] = 0.0;
        for (int64_t I = 0; I < N; ++I) {
            if ((I & 255) == 0) deadline_.check("running a DP pass");
            close_states(I);
            if (!select_sources(I)) continue;
            src_ = I;
            info_[I].stamp = static_cast<int32_t>(I);
            walk_up(I, 0.0);
        }
        PassInfo info;
        info.threshold = threshold;
        info.pairs_visited = visited_;
        info.pairs_examined = examined_;
        info.feasible = value() < kInf;
        info.seconds = seconds_since(t0);
        return info;
    }

    double value() const { return best_[static_cast<size_t>(L_.size() - 1) * ns_ + ns_ - 1]; }

    // Follows the back pointers from the full ideal; devices in pipeline order.
    std::vector<Device> devices() const {
        std::vector<Device> out;
        int64_t I = L_.size() - 1;
        int j = k_, c = l_;
        while (I != 0) {
            size_t at = static_cast<size_t>(I) * ns_ + j * (l_ + 1) + c;
            int8_t t = type_[at];
            if (t == kFewerAccel) { --j; continue; }
            if (t == kFewerCpu) { --c; continue; }
            if (t != kAccel && t != kCpu) throw std::logic_error("broken DP back pointer");
            int64_t sub = sub_[at];
            Device d;
            d.is_cpu = (t == kCpu);
            const uint64_t* a = L_.bits(I);
            const uint64_t* b = L_.bits(sub);
            for (int u = 0; u < p_.num_units; ++u)
                if ((a[u / 64] & ~b[u / 64]) >> (u % 64) & 1ULL) d.units.push_back(u);
            out.push_back(std::move(d));
            if (t == kCpu) --c; else --j;
            I = sub;
        }
        std::reverse(out.begin(), out.end());
        return out;
    }

  private:
    // The states of I worth extending: finite, with a device left to add,
    // and with the remaining work fitting the remaining devices.
    bool select_sources(int64_t I) {
        n_acc_src_ = n_cpu_src_ = 0;
        const double* b = &best_[static_cast<size_t>(I) * ns_];
        const double slack = T_ * (1 + 1e-9);
        const double cpu_only_rest = L_.cpu_only.back() - L_.cpu_only[I];
        // Accelerator time of the units outside I that may run on accelerators.
        const double acc_ok_rest = (L_.accel.back() - L_.accel[I]) -
                                   (L_.accel_of_cpu_only.back() - L_.accel_of_cpu_only[I]);
        for (int j = 0; j <= k_; ++j) {
            for (int c = 0; c <= l_; ++c) {
                const int s = j * (l_ + 1) + c;
                if (!(b[s] < kInf)) continue;
                const int ka = k_ - j, lc = l_ - c;
                const double cpu_room = lc * slack - cpu_only_rest;
                if (cpu_room < 0) continue;
                const double absorbed = ratio_ == kInf ? kInf : cpu_room * ratio_;
                if (acc_ok_rest - absorbed > ka * slack) continue;
                if (j < k_) acc_src_[n_acc_src_++] = s;
                if (c < l_) cpu_src_[n_cpu_src_++] = s;
            }
        }
        return n_acc_src_ + n_cpu_src_ > 0;
    }

    void walk_up(int64_t Ip, double comm) {
        const IdealInfo& base = info_[src_];
        const int32_t stamp = static_cast<int32_t>(src_);
        for (int64_t li = L_.up_start[Ip]; li < L_.up_start[Ip + 1]; ++li) {
            const int64_t J = L_.up_super[li];
            IdealInfo& sup = info_[J];
            if (sup.stamp == stamp) continue;
            sup.stamp = stamp;
            const double acc = sup.accel - base.accel;
            const double cpu = sup.cpu - base.cpu;
            const bool acc_ok = n_acc_src_ > 0 && acc <= T_ && sup.not_accel == base.not_accel &&
                                sup.mem - base.mem <= cap_;
            const bool cpu_ok = n_cpu_src_ > 0 && cpu <= T_;
            if (!acc_ok && !cpu_ok) continue;  // and so is every larger superset: prune
            if ((++visited_ & 0xFFFF) == 0) deadline_.check("running a DP pass");
            const int x = L_.up_unit[li];
            const double cm = comm + comm_.add(x);
            push(J, acc_ok ? acc + cm : kInf, cpu_ok ? cpu : kInf);
            walk_up(J, cm);
            comm_.remove(x);
        }
    }

    void push(int64_t J, double acc_load, double cpu_load) {
        const bool use_acc = acc_load <= T_, use_cpu = cpu_load <= T_;
        if (!use_acc && !use_cpu) return;
        ++examined_;
        const double* bs = &best_[static_cast<size_t>(src_) * ns_];
        double* bJ = &best_[static_cast<size_t>(J) * ns_];
        const int row = l_ + 1;
        if (use_acc) {
            for (int i = 0; i < n_acc_src_; ++i) {
                const int s = acc_src_[i];
                const double v = std::max(bs[s], acc_load);
                if (v < bJ[s + row]) set(J, s + row, v, kAccel);
            }
        }
        if (use_cpu) {
            for (int i = 0; i < n_cpu_src_; ++i) {
                const int s = cpu_src_[i];
                const double v = std::max(bs[s], cpu_load);
                if (v < bJ[s + 1]) set(J, s + 1, v, kCpu);
            }
        }
    }

    void set(int64_t J, int s, double v, int8_t t) {
        size_t at = static_cast<size_t>(J) * ns_ + s;
        best_[at] = v;
        type_[at] = t;
        sub_[at] = static_cast<int>(src_);
    }

    // "At most j accelerators and c CPUs": a state may leave devices unused.
    void close_states(int64_t I) {
        const int row = l_ + 1;
        double* b = &best_[static_cast<size_t>(I) * ns_];
        for (int j = 0; j <= k_; ++j) {
            for (int cc = 0; cc <= l_; ++cc) {
                const int s = j * row + cc;
                if (j > 0 && b[s - row] < b[s]) {
                    b[s] = b[s - row];
                    type_[static_cast<size_t>(I) * ns_ + s] = kFewerAccel;
                }
                if (cc > 0 && b[s - 1] < b[s]) {
                    b[s] = b[s - 1];
                    type_[static_cast<size_t>(I) * ns_ + s] = kFewerCpu;
                }
            }
        }
    }

    const Problem& p_;
    const Lattice& L_;
    CommTracker& comm_;
    const Deadline& deadline_;
    const int k_, l_, ns_;
    double T_ = 0.0, cap_ = 0.0, ratio_ = 0.0;
    int64_t src_ = 0;
    int n_acc_src_ = 0, n_cpu_src_ = 0;
    int acc_src_[4096], cpu_src_[4096];
    std::vector<double> best_;
    std::vector<int8_t> type_;
    std::vector<int> sub_;
    // Per-ideal sums packed with the walk's visit stamp: one cache line per visit.
    struct IdealInfo {
        double accel, cpu, mem;
        int32_t not_accel, stamp;
    };
    std::vector<IdealInfo> info_;
    long long visited_ = 0, examined_ = 0;
};

}  // namespace

Result solve(const Problem& p) {
    auto t0 = Clock::now();
    check_problem(p);
    const Deadline deadline(t0, p.time_limit, p.time_used);
    deadline.check("starting");
    const IdealCountBound at_least = ideal_count_lower_bound(p);
    if (at_least.count > static_cast<double>(ideal_budget(p))) {
        const std::string count = at_least.max_width >= 64 ? format("2^%.0f", at_least.max_width)
                                                           : format("%.3g", at_least.count);
        throw LimitExceeded("the unit order has at least " + count + " ideals (" +
                            format("it has %.0f units side by side), over the %.0f ideals the DP may hold "
                                   "(its memory limit of %.0f MiB; cap %.0f)",
                                   at_least.max_width, static_cast<double>(ideal_budget(p)),
                                   mib(p.max_memory_bytes), static_cast<double>(p.max_ideals)));
    }
    Result r;
    Lattice L = enumerate_ideals(p, deadline);
    r.ideals = L.size();
    r.ideal_links = static_cast<long long>(L.up_unit.size());
    r.enumerate_seconds = seconds_since(t0);
    {
        const uint64_t* full = L.bits(L.size() - 1);
        int count = 0;
        for (int w = 0; w < L.words; ++w) count += __builtin_popcountll(full[w]);
        if (count != p.num_units) throw std::invalid_argument("unit edges contain a cycle");
    }

    // No device's load can exceed everything's time plus every transfer.
    double ceiling = 0.0;
    for (int u = 0; u < p.num_units; ++u) ceiling += std::max(p.accel_time[u], p.cpu_time[u]);
    for (const CommNode& c : p.comm_nodes) ceiling += c.cost;
    ceiling = ceiling * (1 + 1e-9) + 1e-9;
    const double cap = std::min(ceiling, p.upper_bound * (1 + 1e-9));

    CommTracker comm(p);
    ThresholdDP dp(p, L, comm, deadline);
    // Passes below the optimum are wasted and a pass costs more the larger T
    // is: climb from the lower bound in small steps, but when a known split
    // is already close to the bound, one pass at its value is cheapest.
    double T = std::max(0.0, p.lower_bound);
    double step = p.growth;
    if (cap <= T * (1 + 2.5 * step)) T = cap;
    for (;;) {
        T = std::min(T, cap);
        if (T < cap && T * (1 + step) >= cap) T = cap;
        PassInfo info = dp.run(T);
        r.passes.push_back(info);
        r.pairs_visited += info.pairs_visited;
        r.pairs_examined += info.pairs_examined;
        if (info.feasible || T >= cap) break;
        T = T > 0 ? T * (1 + step) : cap / 64;
        step *= 1.5;
    }
    r.feasible = r.passes.back().feasible;
    if (r.feasible) {
        r.value = dp.value();
        r.devices = dp.devices();
        for (Device& d : r.devices) {
            double load = 0.0;
            for (int u : d.units) load += d.is_cpu ? p.cpu_time[u] : p.accel_time[u];
            if (!d.is_cpu) load += comm.cost_of(d.units);
            d.load = load;
        }
    } else {
        r.message = "no contiguous split fits the devices (memory cap, CPU-only nodes or too few devices)";
    }
    r.seconds = seconds_since(t0);
    return r;
}

}  // namespace kfac_placement
