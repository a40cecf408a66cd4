// The acceptance rules and the distributions they are judged with (accept.h).

#include "accept.h"
#include "internal.h"

#include <algorithm>
#include <numeric>
#include <string>

namespace sirius {

double log_sum_exp(const float * l, int32_t n, float T) {
    const float mx = *std::max_element(l, l + n);
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) sum += std::exp((double) (l[i] - mx) / T);
    return (double) mx / T + std::log(sum);
}

bool accept_greedy(const sirius_correction_params & cp, int32_t n_vocab, DenseRow & row, llama_token d, float * prob) {
    if (cp.acceptance == SIRIUS_ACCEPT_STRICT) {
        if (row.best < 0) row.best = argmax(row.logits, n_vocab);
        *prob = row.best == d ? 1.0f : 0.0f;
        return row.best == d;
    }
    const float T = cp.accept_temperature;
    if (std::isnan(row.lse)) row.lse = log_sum_exp(row.logits, n_vocab, T);
    *prob = (float) std::exp((double) row.logits[d] / T - row.lse);
    return *prob >= cp.threshold;
}

void warp(const float * l, int32_t n, const sirius_sampling & sp, std::vector<float> & probs, std::vector<int32_t> & idx) {
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), 0);
    auto by_logit = [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
    int32_t keep = n;
    if (sp.top_k > 0 && sp.top_k < n) {
        std::partial_sort(idx.begin(), idx.begin() + sp.top_k, idx.end(), by_logit);
        keep = sp.top_k;
    } else if (sp.top_p < 1.0f) {
        std::sort(idx.begin(), idx.end(), by_logit);
    } else {
        std::swap(idx[0], idx[argmax(l, n)]);  // only the maximum needs to be first
    }
    const float mx = l[idx[0]];
    if (sp.top_p < 1.0f) {
        double z = 0.0;
        for (int32_t i = 0; i < keep; ++i) z += std::exp((double) (l[idx[i]] - mx));
        double cum = 0.0;
        for (int32_t i = 0; i < keep; ++i) {
            cum += std::exp((double) (l[idx[i]] - mx)) / z;
            if (cum >= sp.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    probs.assign(n, 0.0f);
    const float floor_l = sp.min_p > 0.0f ? mx + std::log(sp.min_p) : -INFINITY;
    double z = 0.0;
    for (int32_t i = 0; i < keep; ++i) {
        const int32_t t = idx[i];
        if (l[t] < floor_l) continue;
        const double e = std::exp((double) (l[t] - mx) / sp.temperature);
        probs[t] = (float) e;
        z += e;
    }
    for (int32_t i = 0; i < keep; ++i) probs[idx[i]] = (float) (probs[idx[i]] / z);
}

llama_token sample_from(const std::vector<float> & probs, std::mt19937_64 & rng) {
    double total = 0.0;
    for (float p : probs) total += p;
    double u = std::uniform_real_distribution<double>(0.0, total)(rng);
    int32_t last = 0;
    for (int32_t i = 0; i < (int32_t) probs.size(); ++i) {
        if (probs[i] <= 0.0f) continue;
        last = i;
        u -= probs[i];
        if (u < 0.0) return i;
    }
    return last;  // rounding
}

llama_token speculative_accept(std::vector<float> & p, const std::vector<float> & q, llama_token d, std::mt19937_64 & rng,
                               bool * kept) {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    *kept = q[d] > 0.0f && u * q[d] < p[d];
    if (*kept) return d;
    double z = 0.0;
    for (size_t t = 0; t < p.size(); ++t) {
        p[t] = std::max(0.0f, p[t] - q[t]);
        z += p[t];
    }
    if (z <= 0.0) {  // p == q up to rounding: the draft stands
        *kept = true;
        return d;
    }
    return sample_from(p, rng);
}

}  // namespace sirius

extern "C" int32_t sirius_test_speculative_sample(const float * p, const float * q, int32_t n, uint32_t seed, int32_t n_trials,
                                                  int32_t * out_tokens, int32_t * n_kept) {
    using namespace sirius;
    if (!p || !q || n <= 0 || n_trials < 0 || (!out_tokens && n_trials > 0)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "speculative_sample needs p, q, n > 0 and an output");
    }
    std::mt19937_64 rng(seed);
    std::vector<float> qv(q, q + n), pv;
    int32_t kept_total = 0;
    for (int32_t i = 0; i < n_trials; ++i) {
        const llama_token d = sample_from(qv, rng);
        pv.assign(p, p + n);
        bool kept;
        out_tokens[i] = speculative_accept(pv, qv, d, rng, &kept);
        kept_total += kept ? 1 : 0;
    }
    if (n_kept) *n_kept = kept_total;
    return SIRIUS_OK;
}
