// Judging drafts against the dense model's logits: the acceptance rules (relaxed, strict, sample) and the one
// softmax and sampling distribution they use; shared by the chain (correction.cpp) and the tree (tree.cpp).
#pragma once

#include "llama.h"
#include "sirius.h"

#include <cmath>
#include <random>
#include <vector>

namespace sirius {

// log sum_i exp(l_i / T): softmax(l / T)[t] = exp(l_t / T - log_sum_exp(l, n, T)).
double log_sum_exp(const float * l, int32_t n, float T);

// A dense row's figures, computed on first use: a row judges one draft in a chain, several children in a tree.
struct DenseRow {
    const float * logits = nullptr;
    double      lse = NAN;     // log_sum_exp at the acceptance temperature
    llama_token best = -1;     // argmax
};

// A greedy rule (SIRIUS_ACCEPT_RELAXED or _STRICT) on draft d predicted by `row`: relaxed keeps d if
// softmax(logits / accept_temperature)[d] >= threshold, strict if d is the argmax (ties: the first, as llama.cpp's
// greedy sampler). *prob gets d's probability under the rule (strict: 1 or 0).
bool accept_greedy(const sirius_correction_params & cp, int32_t n_vocab, DenseRow & row, llama_token d, float * prob);

// The sampling distribution of the dense sampler chain as a dense probability vector: llama.cpp's own filters
// (make_filters: top-k, top-p, min-p, temperature) on the row, then the softmax its final draw takes. Speculative
// sampling needs it explicitly, for both models.
class Warp {
public:
    explicit Warp(const sirius_sampling & sp);
    ~Warp();
    Warp(const Warp &) = delete;
    Warp & operator=(const Warp &) = delete;
    void operator()(const float * logits, int32_t n, std::vector<float> & probs);

private:
    llama_sampler * chain_ = nullptr;
    std::vector<llama_token_data> cur_;
};

llama_token sample_from(const std::vector<float> & probs, std::mt19937_64 & rng);

// Speculative sampling (Leviathan et al.; Chen et al.) for a draft d drawn from q: keep it with probability
// min(1, p[d] / q[d]); otherwise draw from the residual max(0, p - q), renormalised. The token that results is
// then distributed exactly as p. p is overwritten.
llama_token speculative_accept(std::vector<float> & p, const std::vector<float> & q, llama_token d, std::mt19937_64 & rng,
                               bool * kept);

}  // namespace sirius
