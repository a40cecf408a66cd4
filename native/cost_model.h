// The correction loop's cost model and the auto-period policy built on it (one home: the loop and bench's
// predictions, through sirius_cost_predict, use this and nothing else).
#pragma once

#include <cstdint>
#include <vector>

namespace sirius {

// Per-period cost model.
//   A period of K tokens costs T(K) = (K-1)·s + v(K): K-1 sparse steps of s ms and one dense K-token batch
//   of v(K) ms (v(1) = a dense decode step). With each draft accepted with probability a, independently, it
//   advances E(K) = 1 + a + a^2 + ... + a^(K-1) tokens. A tree of width W drafts with 1 + (K-2)·W sparse steps
//   and verifies (K-1)·W + 1 tokens; a is then the acceptance rate along the winning beams.
//
// Costs follow the machine: the curve's shape is measured once per session, and its level (scale) follows the
// loop's own timed dense batches (an exponential moving average, weight kRefresh), so a session whose curve was
// measured while something else held the CPUs prices K right once that load is gone. A sparse step is kept at
// the curve's level too (its timings over the level at the time), so a load that slows the dense steps that
// are timed slows the sparse steps that are not, and does not make drafting look cheap.
struct CostModel {
    static constexpr double kRefresh = 0.1;  // weight of the newest timing in the moving averages
    std::vector<double> v;  // v[n] ms, n = 1..nodes(kmax), from the measured curve (interpolate_curve)
    int32_t width = 1;
    double  scale = 1.0;    // now vs when the curve was measured: realized dense batch ms over v[n] (moving average)
    double  s_level = 0.0;  // a sparse step's ms at the curve's level (moving average of timings over scale)
    double  s_sum = 0.0;    // sparse steps timed so far (their plain mean is reported in stats)
    int32_t s_n = 0;
    double  s_prior = 0.0;  // a sparse step's cost before any is timed, at the curve's level (scaled with it)
    double  acc = 9.0, rej = 1.0;  // accepted drafts and rejections, with a prior of 9 : 1

    double dense_ms(int32_t n) const { return v[n] * scale; }
    double sparse_ms() const { return (s_n > 0 ? s_level : s_prior) * scale; }
    double accept_rate() const { return acc / (acc + rej); }
    static double advance(double a, int32_t k);
    int32_t nodes(int32_t k) const { return (k - 1) * width + 1; }
    int32_t steps(int32_t k) const { return width == 1 ? k - 1 : 1 + (k - 2) * width; }
    // Tokens per ms of periods of K at acceptance a.
    double rate(int32_t k, double a) const { return advance(a, k) / (steps(k) * sparse_ms() + dense_ms(nodes(k))); }
    // Best K in [2, kmax] if its rate beats dense decoding's by the factor `margin`, else 1 (decode densely).
    int32_t choose(int32_t kmax, double a, double margin) const;
    // Smallest K in [2, kmax] whose rate beats dense decoding's by `margin`, else 1.
    int32_t shortest(int32_t kmax, double a, double margin) const;
    // After a verification that kept j of k - 1 drafts.
    void judged(int32_t k, int32_t j) { acc += j; rej += j < k - 1 ? 1 : 0; }
    // A dense batch of n tokens took ms. One timing counts as at most 4x the level before weighting, so a single
    // preempted step cannot swing it (nothing runs faster than the machine can: no floor is needed).
    void timed_dense(int32_t n, double ms);
    // A sparse step took ms.
    void timed_sparse(double ms);
};

// Fills v[1..n] from a measured curve (measured[k] ms for a k-token batch, 0 where not measured): linear between
// measured points and through the last two past them, never below the cheapest; one point: proportional to k.
void interpolate_curve(const std::vector<double> & measured, int32_t n, std::vector<double> & v);

// period = auto: each period's K from the cost model. Dense (K = 1) while the estimate says drafting does not
// pay; if even a = 1 could not beat dense by 10%, dense to the end (gave_up); while the estimate says dense but
// a = 1 would pay, one probing period after 32, 64, 128, ... dense steps, at the shortest K that a = 1 would pay
// for: a probe re-measures acceptance, and one that finds it still low then costs the least.
class AutoPeriod {
public:
    AutoPeriod(const CostModel & cost, int32_t kmax) : cost_(cost), kmax_(kmax) {}
    int32_t next();
    bool gave_up() const { return gave_up_; }

private:
    const CostModel & cost_;
    int32_t kmax_;
    int32_t dense_run_ = 0;     // dense steps since the last probe
    int32_t probe_every_ = 32;  // doubles after each probe
    bool    gave_up_ = false;
};

}  // namespace sirius
