// The acceptance rules and the distributions they are judged with (accept.h).

#include "accept.h"
#include "internal.h"

#include <algorithm>
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

Warp::Warp(const sirius_sampling & sp) : chain_(make_filters(sp)) {}

Warp::~Warp() { llama_sampler_free(chain_); }

void Warp::operator()(const float * logits, int32_t n, std::vector<float> & probs) {
    cur_.resize(n);
    for (int32_t i = 0; i < n; ++i) cur_[i] = {i, logits[i], 0.0f};
    llama_token_data_array arr{cur_.data(), (size_t) n, -1, false};
    llama_sampler_apply(chain_, &arr);  // keeps the survivors in arr.data[0, arr.size), logits / temperature
    probs.assign(n, 0.0f);
    float mx = -INFINITY;
    for (size_t i = 0; i < arr.size; ++i) mx = std::max(mx, arr.data[i].logit);
    double z = 0.0;
    for (size_t i = 0; i < arr.size; ++i) z += std::exp((double) (arr.data[i].logit - mx));
    for (size_t i = 0; i < arr.size; ++i) probs[arr.data[i].id] = (float) (std::exp((double) (arr.data[i].logit - mx)) / z);
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
