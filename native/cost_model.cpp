// The correction loop's cost model, the auto-period policy, and sirius_cost_predict (bench's predictions).

#include "cost_model.h"
#include "internal.h"

#include <algorithm>
#include <string>

namespace sirius {

double CostModel::advance(double a, int32_t k) {
    double e = 1.0, ai = 1.0;
    for (int32_t i = 1; i < k; ++i) e += (ai *= a);
    return e;
}

int32_t CostModel::choose(int32_t kmax, double a, double margin) const {
    int32_t best = 1;
    double best_rate = margin / dense_ms(1);
    for (int32_t k = 2; k <= kmax && nodes(k) < (int32_t) v.size(); ++k) {
        if (rate(k, a) > best_rate) best_rate = rate(k, a), best = k;
    }
    return best;
}

int32_t CostModel::shortest(int32_t kmax, double a, double margin) const {
    for (int32_t k = 2; k <= kmax && nodes(k) < (int32_t) v.size(); ++k) {
        if (rate(k, a) > margin / dense_ms(1)) return k;
    }
    return 1;
}

void CostModel::timed_dense(int32_t n, double ms) {
    if (n < 1 || n >= (int32_t) v.size() || !(v[n] > 0.0) || !(ms > 0.0)) return;
    const double r = std::min(ms / v[n], scale * 4.0);
    scale += (r - scale) * kRefresh;
}

void CostModel::timed_sparse(double ms) {
    s_sum += ms;
    s_n++;
    s_level += (ms / scale - s_level) * std::max(1.0 / s_n, kRefresh);  // the plain mean until 1/n < kRefresh
}

void interpolate_curve(const std::vector<double> & measured, int32_t n, std::vector<double> & v) {
    std::vector<int32_t> ks;
    for (int32_t k = 1; k < (int32_t) measured.size(); ++k) {
        if (measured[k] > 0.0) ks.push_back(k);
    }
    v.assign(n + 1, 0.0);
    if (ks.size() < 2) {  // one point: assume cost proportional to K (the CPU's compute-bound case)
        for (int32_t k = 1; k <= n; ++k) v[k] = measured[ks[0]] * k / ks[0];
        return;
    }
    for (int32_t k = 1; k <= n; ++k) {
        size_t hi = 0;
        while (hi < ks.size() && ks[hi] < k) ++hi;
        if (hi < ks.size() && ks[hi] == k) {
            v[k] = measured[k];
            continue;
        }
        const size_t a = hi == 0 ? 0 : (hi == ks.size() ? ks.size() - 2 : hi - 1);
        const size_t b = std::min(a + 1, ks.size() - 1);
        const double ka = ks[a], kb = ks[b];
        v[k] = kb == ka ? measured[ks[a]] * k / ka
                        : measured[ks[a]] + (measured[ks[b]] - measured[ks[a]]) * (k - ka) / (kb - ka);
        v[k] = std::max(v[k], measured[ks[0]]);
    }
}

int32_t AutoPeriod::next() {
    if (gave_up_) return 1;
    int32_t k = cost_.choose(kmax_, cost_.accept_rate(), 1.0);
    if (k > 1) return k;
    if (cost_.choose(kmax_, 1.0, 1.1) == 1) {
        gave_up_ = true;  // even perfect acceptance would not pay: stop asking
    } else if (++dense_run_ >= probe_every_) {
        k = cost_.shortest(kmax_, 1.0, 1.1);  // re-probe the acceptance rate, less and less often
        dense_run_ = 0;
        probe_every_ *= 2;
    }
    return k;
}

}  // namespace sirius

extern "C" int32_t sirius_cost_predict(const int32_t * curve_k, const double * curve_ms, int32_t n_curve, int32_t k,
                                       int32_t width, double accept_rate, double sparse_ms, double * verify_ms,
                                       double * tokens_per_second) {
    using namespace sirius;
    if (!curve_k || !curve_ms || n_curve < 1) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "cost_predict needs a measured curve");
    if (k < 2 || k > SIRIUS_MAX_PERIOD || width < 1 || width > SIRIUS_MAX_WIDTH) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "cost_predict: K must be in [2, " + std::to_string(SIRIUS_MAX_PERIOD) +
                                                     "] and width in [1, " + std::to_string(SIRIUS_MAX_WIDTH) + "]");
    }
    if (!(accept_rate >= 0.0 && accept_rate <= 1.0) || !(sparse_ms >= 0.0)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "cost_predict: accept_rate must be in [0, 1] and sparse_ms >= 0");
    }
    std::vector<double> measured;
    for (int32_t i = 0; i < n_curve; ++i) {
        if (curve_k[i] < 1 || curve_k[i] > SIRIUS_MAX_PERIOD * SIRIUS_MAX_WIDTH || !(curve_ms[i] > 0.0)) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "cost_predict: curve points need K in [1, " +
                                                         std::to_string(SIRIUS_MAX_PERIOD * SIRIUS_MAX_WIDTH) + "] and ms > 0");
        }
        if ((int32_t) measured.size() <= curve_k[i]) measured.resize(curve_k[i] + 1, 0.0);
        measured[curve_k[i]] = curve_ms[i];
    }
    CostModel cost;
    cost.width = width;
    cost.s_prior = sparse_ms;
    interpolate_curve(measured, cost.nodes(k), cost.v);
    if (verify_ms) *verify_ms = cost.v[cost.nodes(k)];
    if (tokens_per_second) *tokens_per_second = 1000.0 * cost.rate(k, accept_rate);
    return SIRIUS_OK;
}
