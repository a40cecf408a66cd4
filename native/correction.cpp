// The Sirius correction loop (DESIGN.md §1.2-1.3): the sparse FFN drafts K-1 tokens, the dense model checks
// the period's K tokens in one batch (which also rewrites their KV with full-model KV), the leading drafts that
// pass the acceptance rule are kept, the KV past them is removed and the dense model's own token is appended.
//
// Invariant between periods: the session holds dense KV for every kept token, and `pending` (the verified
// token at position c) is not yet in the cache. Only verified tokens reach the caller.

#include "internal.h"
#include "text.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace sirius {
namespace {

// softmax(l / T)[tok]
float softmax_prob(const float * l, int32_t n, float T, llama_token tok) {
    const float mx = *std::max_element(l, l + n);
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) sum += std::exp((double) (l[i] - mx) / T);
    return (float) (std::exp((double) (l[tok] - mx) / T) / sum);
}

// The sampling distribution of `sp` (top-k, top-p, min-p, then temperature; the order of the dense sampler
// chain) as a dense probability vector. Speculative sampling needs it explicitly for both models.
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

// Speculative sampling (Leviathan et al.; Chen et al.) for a draft d drawn from q: keep it with probability
// min(1, p[d] / q[d]); otherwise draw from the residual max(0, p - q), renormalised. The token that results is
// then distributed exactly as p. p is overwritten.
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

// Per-period cost model behind period = auto.
//   A period of K tokens costs T(K) = (K-1)·s + v(K): K-1 sparse steps of s ms and one dense K-token batch
//   of v(K) ms (v(1) = a dense decode step). With each draft accepted with probability a, independently, it
//   advances E(K) = 1 + a + a^2 + ... + a^(K-1) tokens. K maximises E(K)/T(K); if that rate is below
//   dense decoding's 1/v(1) the loop decodes densely. v comes from sirius_measure_verify (measured on this
//   session, linear in between), s from the sparse steps taken so far (before any: v(1) times the fraction
//   of parameters a sparse step reads), a from the drafts checked so far with a prior of 9 accepted, 1 not.
//   If even a = 1 could not beat dense by 10%, the call decodes densely to the end (stats say so); while the
//   estimate says dense but a = 1 would pay, one probing period runs after 32, 64, 128, ... dense steps.
//   A tree of width W drafts with 1 + (K-2)·W sparse steps and verifies (K-1)·W + 1 tokens; a is then the
//   acceptance rate along the winning beams.
struct CostModel {
    std::vector<double> v;  // v[n], n = 1..nodes(kmax)
    int32_t width = 1;
    double s_sum = 0.0;
    int32_t s_n = 0;
    double s_prior = 0.0;
    double acc = 9.0, rej = 1.0;

    double sparse_ms() const { return s_n > 0 ? s_sum / s_n : s_prior; }
    double accept_rate() const { return acc / (acc + rej); }
    static double advance(double a, int32_t k) {
        double e = 1.0, ai = 1.0;
        for (int32_t i = 1; i < k; ++i) e += (ai *= a);
        return e;
    }
    int32_t nodes(int32_t k) const { return (k - 1) * width + 1; }
    int32_t steps(int32_t k) const { return width == 1 ? k - 1 : 1 + (k - 2) * width; }
    double rate(int32_t k, double a) const { return advance(a, k) / (steps(k) * sparse_ms() + v[nodes(k)]); }
    // Best K in [2, kmax] if its rate beats dense decoding's by the factor `margin`, else 1 (decode densely).
    int32_t choose(int32_t kmax, double a, double margin) const {
        int32_t best = 1;
        double best_rate = margin / v[1];
        for (int32_t k = 2; k <= kmax && nodes(k) < (int32_t) v.size(); ++k) {
            if (rate(k, a) > best_rate) best_rate = rate(k, a), best = k;
        }
        return best;
    }
};

// Fills v[1..kmax] from the session's measured curve by linear interpolation (and extrapolation).
void interpolate_curve(const std::vector<double> & measured, int32_t kmax, std::vector<double> & v) {
    std::vector<int32_t> ks;
    for (int32_t k = 1; k < (int32_t) measured.size(); ++k) {
        if (measured[k] > 0.0) ks.push_back(k);
    }
    v.assign(kmax + 1, 0.0);
    if (ks.size() < 2) {  // one point: assume cost proportional to K (the CPU's compute-bound case)
        for (int32_t k = 1; k <= kmax; ++k) v[k] = measured[ks[0]] * k / ks[0];
        return;
    }
    for (int32_t k = 1; k <= kmax; ++k) {
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

// Verified tokens go out one at a time through the text stream and the callback; decides when to stop.
struct Emitter {
    sirius_session * s;
    const sirius_generate_params & p;
    TextStream & text;
    sirius_token_callback callback;
    void * user_data;
    sirius_generate_result & res;
    int32_t stop_pos = -1;  // position of the token that ended generation (the KV keeps what precedes it)

    // false: generation ends here.
    bool emit(llama_token tok, int32_t pos) {
        if (!p.ignore_eos && llama_vocab_is_eog(s->model->vocab, tok)) {
            res.finish_reason = SIRIUS_FINISH_STOP;
            stop_pos = pos;
            return false;
        }
        res.n_generated++;
        const std::string out = text.push(token_piece(s->model->vocab, tok));
        const int cancel = callback ? callback(user_data, &tok, 1, out.data(), (int32_t) out.size()) : 0;
        if (text.stopped() || cancel || res.n_generated >= p.max_tokens || pos >= (int32_t) s->n_ctx) {
            res.finish_reason = text.stopped() ? SIRIUS_FINISH_STOP : cancel ? SIRIUS_FINISH_CANCELLED : SIRIUS_FINISH_LENGTH;
            stop_pos = pos;
            return false;
        }
        return true;
    }
};

const int32_t kCurveKs[] = {1, 2, 4, 8, 16, 24, 32};

}  // namespace

int32_t check_correction_params(const sirius_generate_params & p) {
    const sirius_correction_params & c = p.sirius;
    if (c.period != 0 && c.period < 2) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "period must be >= 2 (or auto), got " + std::to_string(c.period));
    }
    if (c.period > SIRIUS_MAX_PERIOD) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "period must be <= " + std::to_string(SIRIUS_MAX_PERIOD) + ", got " +
                                                     std::to_string(c.period));
    }
    if (c.period == 0 && (c.max_period < 2 || c.max_period > SIRIUS_MAX_PERIOD)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "max_period must be in [2, " + std::to_string(SIRIUS_MAX_PERIOD) +
                                                     "], got " + std::to_string(c.max_period));
    }
    if (c.acceptance < SIRIUS_ACCEPT_RELAXED || c.acceptance > SIRIUS_ACCEPT_SAMPLE) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown acceptance rule " + std::to_string(c.acceptance) +
                                                     " (0 = relaxed, 1 = strict, 2 = sample)");
    }
    const bool sampled = p.sampling.temperature > 0.0f;
    if (sampled && c.acceptance != SIRIUS_ACCEPT_SAMPLE) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "with temperature > 0 use acceptance 'sample' (relaxed and strict "
                                                 "acceptance are greedy: set temperature 0)");
    }
    if (!sampled && c.acceptance == SIRIUS_ACCEPT_SAMPLE) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "acceptance 'sample' needs temperature > 0 (at temperature 0 use strict)");
    }
    if (c.acceptance == SIRIUS_ACCEPT_RELAXED) {
        if (!(c.threshold > 0.0f && c.threshold <= 1.0f)) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "threshold must be in (0, 1], got " + std::to_string(c.threshold));
        }
        if (!(c.accept_temperature > 0.0f) || !std::isfinite(c.accept_temperature)) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "accept_temperature must be > 0, got " + std::to_string(c.accept_temperature));
        }
    }
    if (c.width < 1 || c.width > SIRIUS_MAX_WIDTH) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "width must be in [1, " + std::to_string(SIRIUS_MAX_WIDTH) + "], got " +
                                                     std::to_string(c.width));
    }
    if (c.width > 1 && c.acceptance == SIRIUS_ACCEPT_SAMPLE) {
        return fail(SIRIUS_ERR_UNSUPPORTED, "width > 1 (tree verification) is greedy: use relaxed or strict acceptance "
                                            "at temperature 0, or width 1 to sample");
    }
    return SIRIUS_OK;
}

int32_t correction_loop(sirius_session * s, const sirius_generate_params & p, TextStream & text,
                        sirius_token_callback callback, void * user_data, sirius_generate_result & res) {
    const sirius_correction_params & cp = p.sirius;
    sirius_correction_stats & st = res.sirius;
    const int32_t n_vocab = s->model->n_vocab;
    const bool sampled = cp.acceptance == SIRIUS_ACCEPT_SAMPLE;
    const bool can_draft = res.sparse.n_layers_sparse > 0;
    const bool auto_k = cp.period == 0;
    std::mt19937_64 rng(p.sampling.seed);
    std::vector<float> pw(sampled ? n_vocab : 0);  // warped dense distribution
    std::vector<int32_t> idx;
    std::vector<std::vector<float>> q;             // warped sparse distributions of the drafts (sample mode)
    std::vector<float> logits;                      // the verify batch's rows
    std::vector<llama_token> batch;
    std::vector<float> probs;

    auto pick = [&](const float * row) -> llama_token {
        if (!sampled) return argmax(row, n_vocab);
        warp(row, n_vocab, p.sampling, pw, idx);
        return sample_from(pw, rng);
    };

    // The first token comes from the prompt's logits.
    llama_token pending = pick(s->prompt_logits.data());

    CostModel cost;
    cost.width = cp.width;
    int32_t kmax = auto_k ? cp.max_period : cp.period;
    {
        // The session's dense cost curve, measured once (a few dense batches, then removed): v(1) for the
        // speed-up estimate in stats, the whole curve for the auto period.
        const int32_t room = (int32_t) s->n_ctx - (int32_t) s->tokens.size();
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<int32_t> ks;
        if (room > 1 && (s->verify_ms.size() < 2 || s->verify_ms[1] <= 0)) {
            double ms1 = 0.0;
            const int32_t one = 1;
            if (int32_t rc = sirius_measure_verify(s, &one, 1, 3, &ms1)) return rc;
        }
        if (auto_k && room > 1) {
            for (int32_t k : kCurveKs) {
                const bool known = k < (int32_t) s->verify_ms.size() && s->verify_ms[k] > 0;
                if (k <= std::min(cost.nodes(kmax), room) && !known) ks.push_back(k);
            }
        }
        if (!ks.empty()) {
            std::vector<double> ms(ks.size());
            if (int32_t rc = sirius_measure_verify(s, ks.data(), (int32_t) ks.size(), 1, ms.data())) return rc;
        }
        st.t_calibrate_ms = ms_since(t0);
        st.dense_step_ms = s->verify_ms.size() > 1 ? s->verify_ms[1] : 0.0;
        if (auto_k) {
            if (st.dense_step_ms > 0) {
                interpolate_curve(s->verify_ms, cost.nodes(kmax), cost.v);
                // Before any draft is timed: a sparse step costs its share of the weight bytes a dense one reads
                // (the compact FFN and the trimmed head included), then the measured mean replaces it.
                const double frac = res.sparse.dense_step_bytes > 0
                                        ? (double) res.sparse.step_bytes / (double) res.sparse.dense_step_bytes
                                        : res.sparse.param_fraction;
                cost.s_prior = cost.v[1] * std::max(0.05, frac);
            } else {
                kmax = 1;  // no room left to measure: decode densely
            }
        }
    }

    Emitter out{s, p, text, callback, user_data, res};
    int32_t c = (int32_t) s->tokens.size();
    int32_t status = SIRIUS_OK;
    int32_t dense_run = 0;     // auto: dense steps since the last probe
    int32_t probe_every = 32;  // auto: dense steps between probing periods (doubles after each)
    bool final_dense = false;

    // After a verification that kept j of the period's k - 1 drafts (batch = the period's tokens, the KV already
    // rolled back): statistics, the trace, then the verified tokens go out. false: generation ends.
    auto finish_period = [&](int32_t k, int32_t j, llama_token correction) -> bool {
        st.periods++;
        st.drafted += k - 1;
        st.accepted += j;
        st.advanced += j + 1;
        st.corrections += j < k - 1 ? 1 : 0;
        st.last_period = k;
        if (cp.on_period) cp.on_period(cp.period_user_data, c, k, batch.data() + 1, probs.data(), j, correction);
        cost.acc += j;
        cost.rej += j < k - 1 ? 1 : 0;
        bool go = true;
        for (int32_t i = 1; i <= j && go; ++i) go = out.emit(batch[i], c + i);
        if (go) go = out.emit(correction, c + j + 1);
        pending = correction;
        c += j + 1;
        return go;
    };

    if (out.emit(pending, c)) {
        while (true) {
            // Choose this period's K, bounded by the context and by the tokens still wanted.
            int32_t k = can_draft ? kmax : 1;
            if (auto_k && k > 1 && !final_dense) {
                k = cost.choose(kmax, cost.accept_rate(), 1.0);
                if (k == 1 && cost.choose(kmax, 1.0, 1.1) == 1) {
                    final_dense = true;  // even perfect acceptance would not pay: say so and stop asking
                    st.auto_dense = 1;
                } else if (k == 1 && ++dense_run >= probe_every) {
                    k = cost.choose(kmax, 1.0, 1.1);  // re-probe the acceptance rate, less and less often
                    dense_run = 0;
                    probe_every *= 2;
                }
            } else if (final_dense) {
                k = 1;
            }
            k = std::min({k, (int32_t) s->n_ctx - c, p.max_tokens - res.n_generated});
            if (cp.width > 1) {  // the whole tree must fit in the context and in one batch
                k = std::min(k, (std::min((int32_t) s->n_ctx - c, (int32_t) s->n_batch) - 1) / cp.width + 1);
            }
            if (k < 2) {
                // One dense step: pending goes into the cache, the dense model picks the next token.
                const auto t0 = std::chrono::steady_clock::now();
                set_ffn_mode(s, SIRIUS_MODE_DENSE);
                if ((status = decode(s, &pending, 1, false, nullptr)) != SIRIUS_OK) break;
                pending = pick(logits_ith(s, -1));
                st.dense_steps++;
                st.t_dense_ms += ms_since(t0);
                if (!out.emit(pending, ++c)) break;
                continue;
            }

            if (cp.width > 1) {
                TreeOutcome t;
                if ((status = tree_period(s, p, pending, k, t)) != SIRIUS_OK) break;
                batch = std::move(t.path);
                probs = std::move(t.probs);
                const int32_t j = t.accepted;
                k = (int32_t) batch.size();
                cost.s_sum += t.sparse_ms;
                cost.s_n += t.sparse_steps;
                st.draft_steps += t.sparse_steps;
                st.tree_nodes += t.nodes + t.rewritten;
                st.t_draft_ms += t.draft_ms;
                st.t_verify_ms += t.verify_ms;
                if (!finish_period(k, j, t.correction)) break;
                continue;
            }

            // Draft: K-1 sparse steps from pending (writes sparse KV at c..c+K-2).
            auto t0 = std::chrono::steady_clock::now();
            set_ffn_mode(s, SIRIUS_MODE_SPARSE);
            batch.assign(1, pending);
            if (sampled) q.resize(k);
            for (int32_t i = 1; i < k; ++i) {
                const auto ts = std::chrono::steady_clock::now();
                if ((status = decode(s, &batch.back(), 1, false, nullptr)) != SIRIUS_OK) break;
                const float * row = logits_ith(s, -1);
                llama_token d;
                if (sampled) {
                    q[i].resize(n_vocab);
                    warp(row, n_vocab, p.sampling, q[i], idx);
                    d = sample_from(q[i], rng);
                } else {
                    d = argmax(row, n_vocab);
                }
                cost.s_sum += ms_since(ts);
                cost.s_n++;
                batch.push_back(d);
                // A drafted end of generation ends the draft: nothing after it could be kept.
                if (!p.ignore_eos && llama_vocab_is_eog(s->model->vocab, d)) break;
            }
            if (status != SIRIUS_OK) break;
            k = (int32_t) batch.size();
            st.t_draft_ms += ms_since(t0);

            // Verify: the K tokens in one dense batch at c..c+K-1, logits at every position.
            t0 = std::chrono::steady_clock::now();
            truncate_to(s, c);
            set_ffn_mode(s, SIRIUS_MODE_DENSE);
            logits.resize((size_t) k * n_vocab);
            if ((status = decode(s, batch.data(), k, true, logits.data())) != SIRIUS_OK) break;

            // Accept the leading drafts that pass the rule; row i-1 holds the dense prediction for draft i.
            probs.assign(k - 1, 0.0f);
            int32_t j = 0;
            llama_token correction = -1;
            for (int32_t i = 1; i < k; ++i) {
                const float * row = logits.data() + (size_t) (i - 1) * n_vocab;
                const llama_token d = batch[i];
                bool ok;
                if (cp.acceptance == SIRIUS_ACCEPT_RELAXED) {
                    probs[i - 1] = softmax_prob(row, n_vocab, cp.accept_temperature, d);
                    ok = probs[i - 1] >= cp.threshold;
                } else if (cp.acceptance == SIRIUS_ACCEPT_STRICT) {
                    ok = argmax(row, n_vocab) == d;
                    probs[i - 1] = ok ? 1.0f : 0.0f;
                } else {
                    warp(row, n_vocab, p.sampling, pw, idx);
                    probs[i - 1] = pw[d];
                    const llama_token t = speculative_accept(pw, q[i], d, rng, &ok);
                    if (!ok) correction = t;
                }
                if (!ok) break;
                ++j;
            }
            if (correction < 0) correction = pick(logits.data() + (size_t) j * n_vocab);

            // Roll back past the last accepted draft; the correction comes after it.
            truncate_to(s, c + j + 1);
            st.draft_steps += k - 1;
            st.tree_nodes += k;
            st.t_verify_ms += ms_since(t0);
            if (!finish_period(k, j, correction)) break;
        }
    }
    // The cache keeps exactly the tokens before the one that ended generation (as dense decoding leaves it), or
    // the verified prefix after an error.
    if (status != SIRIUS_OK) {
        truncate_to(s, std::min<int32_t>(c, (int32_t) s->tokens.size()));
    } else if (out.stop_pos >= 0) {
        truncate_to(s, std::min<int32_t>(out.stop_pos, (int32_t) s->tokens.size()));
    }
    set_ffn_mode(s, SIRIUS_MODE_DENSE);
    st.sparse_step_ms = cost.s_n > 0 ? cost.s_sum / cost.s_n : 0.0;
    return status;
}

}  // namespace sirius

extern "C" int32_t sirius_speculative_sample(const float * p, const float * q, int32_t n, uint32_t seed, int32_t n_trials,
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

extern "C" int32_t sirius_measure_verify(sirius_session * s, const int32_t * ks, int32_t n, int32_t repeats, double * ms_out) {
    using namespace sirius;
    if (!s || !ks || n <= 0 || !ms_out) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "measure_verify needs a session, K values and an output");
    if (repeats < 1) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "repeats must be >= 1, got " + std::to_string(repeats));
    const int32_t n_past = (int32_t) s->tokens.size();
    for (int32_t i = 0; i < n; ++i) {
        if (ks[i] < 1 || ks[i] > SIRIUS_MAX_PERIOD) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "K must be in [1, " + std::to_string(SIRIUS_MAX_PERIOD) + "], got " +
                                                         std::to_string(ks[i]));
        }
        if (n_past + ks[i] > (int32_t) s->n_ctx) {
            return fail(SIRIUS_ERR_CONTEXT_OVERFLOW, "a " + std::to_string(ks[i]) + "-token batch after " + std::to_string(n_past) +
                                                         " held tokens does not fit in the context of " + std::to_string(s->n_ctx));
        }
    }
    const bool was_sparse = s->sparse_on;
    set_ffn_mode(s, SIRIUS_MODE_DENSE);
    // Token ids do not change the cost; any valid id will do.
    const llama_token filler = n_past > 0 ? s->tokens.back() : 0;
    int32_t kbig = *std::max_element(ks, ks + n);
    std::vector<llama_token> toks(kbig, filler);
    std::vector<float> logits((size_t) kbig * s->model->n_vocab);
    int32_t rc = decode(s, toks.data(), 1, false, nullptr);  // warm-up: first use of a graph shape
    truncate_to(s, n_past);
    for (int32_t i = 0; i < n && rc == SIRIUS_OK; ++i) {
        std::vector<double> t;
        for (int32_t r = 0; r < repeats && rc == SIRIUS_OK; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            rc = decode(s, toks.data(), ks[i], true, logits.data());
            t.push_back(ms_since(t0));
            truncate_to(s, n_past);
        }
        if (rc != SIRIUS_OK) break;
        std::sort(t.begin(), t.end());
        ms_out[i] = t[t.size() / 2];
        if ((int32_t) s->verify_ms.size() <= ks[i]) s->verify_ms.resize(ks[i] + 1, 0.0);
        s->verify_ms[ks[i]] = ms_out[i];
    }
    if (was_sparse) set_ffn_mode(s, SIRIUS_MODE_SPARSE);
    return rc;
}
