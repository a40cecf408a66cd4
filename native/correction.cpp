// The Sirius correction loop, in speculative-simple's phases: the sparse FFN drafts K-1 tokens, the dense model
// verifies the period's K tokens in one batch (which also rewrites their KV with full-model KV), the leading
// drafts that pass the acceptance rule are accepted, the KV past them is rolled back and the dense model's own
// token is appended as the correction. K comes from period, or from the cost model (period = auto).
//
// Invariant between periods: the session holds dense KV for every kept token, and `pending` (the verified
// token at position c) is not yet in the cache. Only verified tokens reach the caller.

#include "accept.h"
#include "cost_model.h"
#include "internal.h"
#include "text.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace sirius {
namespace {

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

// The session's measured dense cost curve, every point times factor (its level moved; its shape did not).
void scale_curve(sirius_session * s, double factor) {
    for (double & ms : s->verify_ms) ms *= factor;
}

// The loop's state and its phases. Each phase returns a sirius_status; the ones that emit tokens also say
// whether generation goes on.
struct Loop {
    sirius_session * s;
    const sirius_generate_params & p;
    const sirius_correction_params & cp;
    sirius_generate_result & res;
    sirius_correction_stats & st;
    Emitter out;
    const int32_t n_vocab;
    const bool sampled;  // acceptance = sample
    std::mt19937_64 rng;
    Warp warp;                               // the dense sampler chain's distribution (sample)
    std::vector<float> pw;                   // a warped dense distribution (sample)
    std::vector<std::vector<float>> q;       // the drafts' warped sparse distributions (sample)
    std::vector<llama_token> batch;          // the period: pending, then the drafts
    std::vector<float> logits;               // the verify batch's rows
    std::vector<float> probs;                // each draft's dense probability under the rule
    CostModel cost;
    int32_t c = 0;                           // position of pending
    llama_token pending = -1;

    Loop(sirius_session * s_, const sirius_generate_params & p_, TextStream & text, sirius_token_callback cb, void * ud,
         sirius_generate_result & r)
        : s(s_), p(p_), cp(p_.sirius), res(r), st(r.sirius), out{s_, p_, text, cb, ud, r},
          n_vocab(s_->model->n_vocab), sampled(p_.sirius.acceptance == SIRIUS_ACCEPT_SAMPLE), rng(p_.sampling.seed),
          warp(p_.sampling) {
        cost.width = cp.width;
        c = (int32_t) s->tokens.size();
    }

    // The dense model's choice from a row: argmax, or a draw from the warped distribution.
    llama_token pick(const float * row) {
        if (!sampled) return argmax(row, n_vocab);
        warp(row, n_vocab, pw);
        return sample_from(pw, rng);
    }

    // The session's dense cost curve, measured on its first call (a few dense batches, then removed): v(1) for the
    // speed-up estimate in stats, the whole curve for the auto period, whose level the loop's own dense batches
    // then keep current (CostModel::timed_dense; finish stores it back). kmax: 1 where there is no room to measure.
    int32_t measure_costs(int32_t & kmax) {
        const bool auto_k = cp.period == 0;
        kmax = auto_k ? cp.max_period : cp.period;
        const int32_t room = (int32_t) s->n_ctx - (int32_t) s->tokens.size();
        const auto t0 = std::chrono::steady_clock::now();
        const bool need_one = room > 1 && (s->verify_ms.size() < 2 || s->verify_ms[1] <= 0);
        if (need_one) {
            double ms1 = 0.0;
            const int32_t one = 1;
            if (int32_t rc = sirius_measure_verify(s, &one, 1, 3, &ms1)) return rc;
        }
        std::vector<int32_t> ks;
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
        st.t_calibrate_ms = need_one || !ks.empty() ? ms_since(t0) : 0.0;
        st.dense_step_ms = s->verify_ms.size() > 1 ? s->verify_ms[1] : 0.0;
        if (!auto_k) return SIRIUS_OK;
        if (st.dense_step_ms <= 0) {
            kmax = 1;  // no room left to measure: decode densely
            return SIRIUS_OK;
        }
        interpolate_curve(s->verify_ms, cost.nodes(kmax), cost.v);
        // Before any draft is timed: a sparse step costs its share of the weight bytes a dense one reads (the
        // compact FFN and the trimmed head included), then the measured mean replaces it.
        const double frac = res.sparse.dense_step_bytes > 0
                                ? (double) res.sparse.step_bytes / (double) res.sparse.dense_step_bytes
                                : res.sparse.param_fraction;
        cost.s_prior = cost.v[1] * std::max(0.05, frac);
        return SIRIUS_OK;
    }

    // This period's K, bounded by the context, the tokens still wanted and (a tree) one batch.
    int32_t period(int32_t kmax, AutoPeriod & auto_period) {
        int32_t k = res.sparse.n_layers_sparse > 0 ? kmax : 1;
        if (cp.period == 0 && k > 1) {
            k = auto_period.next();
            st.auto_dense = auto_period.gave_up() ? 1 : 0;
        }
        k = std::min({k, (int32_t) s->n_ctx - c, p.max_tokens - res.n_generated});
        if (cp.width > 1) k = std::min(k, (std::min((int32_t) s->n_ctx - c, (int32_t) s->n_batch) - 1) / cp.width + 1);
        return k;
    }

    // One dense step: pending goes into the cache, the dense model picks the next token.
    int32_t dense_step(bool & go) {
        const auto t0 = std::chrono::steady_clock::now();
        set_ffn_mode(s, SIRIUS_MODE_DENSE);
        if (int32_t rc = decode(s, &pending, 1, false, nullptr)) return rc;
        cost.timed_dense(1, ms_since(t0));  // no-op unless auto filled the curve
        pending = pick(logits_ith(s, -1));
        st.dense_steps++;
        st.t_dense_ms += ms_since(t0);
        go = out.emit(pending, ++c);
        return SIRIUS_OK;
    }

    // Draft: up to K-1 sparse steps from pending (sparse KV at c..c+K-2); batch = pending and the drafts.
    int32_t draft(int32_t k) {
        const auto t0 = std::chrono::steady_clock::now();
        set_ffn_mode(s, SIRIUS_MODE_SPARSE);
        batch.assign(1, pending);
        if (sampled) q.resize(k);
        for (int32_t i = 1; i < k; ++i) {
            const auto ts = std::chrono::steady_clock::now();
            if (int32_t rc = decode(s, &batch.back(), 1, false, nullptr)) return rc;
            const float * row = logits_ith(s, -1);
            llama_token d;
            if (sampled) {
                warp(row, n_vocab, q[i]);
                d = sample_from(q[i], rng);
            } else {
                d = argmax(row, n_vocab);
            }
            cost.timed_sparse(ms_since(ts));
            batch.push_back(d);
            // A drafted end of generation ends the draft: nothing after it could be kept.
            if (!p.ignore_eos && llama_vocab_is_eog(s->model->vocab, d)) break;
        }
        st.draft_steps += (int32_t) batch.size() - 1;
        st.t_draft_ms += ms_since(t0);
        return SIRIUS_OK;
    }

    // Verify: the period's tokens in one dense batch at c.., logits at every position (the draft KV goes first).
    int32_t verify() {
        truncate_to(s, c);
        set_ffn_mode(s, SIRIUS_MODE_DENSE);
        logits.resize(batch.size() * (size_t) n_vocab);
        st.tree_nodes += (int32_t) batch.size();
        const auto t0 = std::chrono::steady_clock::now();
        const int32_t rc = decode(s, batch.data(), (int32_t) batch.size(), true, logits.data());
        if (rc == SIRIUS_OK) cost.timed_dense((int32_t) batch.size(), ms_since(t0));
        return rc;
    }

    // Accept: the leading drafts that pass the rule (row i-1 holds the dense prediction for draft i); returns how
    // many, and the correction after them.
    int32_t accept(llama_token & correction) {
        const int32_t k = (int32_t) batch.size();
        probs.assign(k - 1, 0.0f);
        correction = -1;
        int32_t j = 0;
        for (int32_t i = 1; i < k; ++i) {
            const float * row = logits.data() + (size_t) (i - 1) * n_vocab;
            bool ok;
            if (sampled) {
                warp(row, n_vocab, pw);
                probs[i - 1] = pw[batch[i]];
                const llama_token t = speculative_accept(pw, q[i], batch[i], rng, &ok);
                if (!ok) correction = t;
            } else {
                DenseRow r{row};
                ok = accept_greedy(cp, n_vocab, r, batch[i], &probs[i - 1]);
            }
            if (!ok) break;
            ++j;
        }
        if (correction < 0) correction = pick(logits.data() + (size_t) j * n_vocab);
        return j;
    }

    // A tree period (width > 1): draft, verify and accept in tree.cpp, the outcome in this loop's terms.
    int32_t tree(int32_t k, int32_t & j, llama_token & correction) {
        TreeOutcome t;
        if (int32_t rc = tree_period(s, p, pending, k, t)) return rc;
        batch = std::move(t.path);
        probs = std::move(t.probs);
        j = t.accepted;
        correction = t.correction;
        for (int32_t i = 0; i < t.sparse_steps; ++i) cost.timed_sparse(t.sparse_ms / t.sparse_steps);
        st.draft_steps += t.sparse_steps;
        st.tree_nodes += t.nodes + t.rewritten;
        st.t_draft_ms += t.draft_ms;
        st.t_verify_ms += t.verify_ms;
        return SIRIUS_OK;
    }

    // After a period that kept j drafts (the KV already rolled back past them): statistics, the trace, then the
    // verified tokens go out and the correction becomes pending. false: generation ends.
    bool finish_period(int32_t j, llama_token correction) {
        const int32_t k = (int32_t) batch.size();
        st.periods++;
        st.drafted += k - 1;
        st.accepted += j;
        st.advanced += j + 1;
        st.corrections += j < k - 1 ? 1 : 0;
        st.last_period = k;
        if (cp.on_period) cp.on_period(cp.period_user_data, c, k, batch.data() + 1, probs.data(), j, correction);
        cost.judged(k, j);
        bool go = true;
        for (int32_t i = 1; i <= j && go; ++i) go = out.emit(batch[i], c + i);
        if (go) go = out.emit(correction, c + j + 1);
        pending = correction;
        c += j + 1;
        return go;
    }

    // The cache keeps exactly the tokens before the one that ended generation (as dense decoding leaves it), or
    // the verified prefix after an error.
    void finish(int32_t status) {
        if (status != SIRIUS_OK) {
            truncate_to(s, std::min<int32_t>(c, (int32_t) s->tokens.size()));
        } else if (out.stop_pos >= 0) {
            truncate_to(s, std::min<int32_t>(out.stop_pos, (int32_t) s->tokens.size()));
        }
        set_ffn_mode(s, SIRIUS_MODE_DENSE);
        st.sparse_step_ms = cost.s_n > 0 ? cost.s_sum / cost.s_n : 0.0;
        // The curve's level as this call found it, for the session's next call and the stats.
        if (!cost.v.empty()) {
            scale_curve(s, cost.scale);
            st.dense_step_ms = cost.dense_ms(1);
        }
    }
};

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
    Loop L(s, p, text, callback, user_data, res);
    L.pending = L.pick(s->prompt_logits.data());  // the first token comes from the prompt's logits
    int32_t kmax = 1;
    if (int32_t rc = L.measure_costs(kmax)) return rc;
    AutoPeriod auto_period(L.cost, kmax);

    int32_t status = SIRIUS_OK;
    bool go = L.out.emit(L.pending, L.c);
    while (go && status == SIRIUS_OK) {
        const int32_t k = L.period(kmax, auto_period);
        if (k < 2) {
            status = L.dense_step(go);
            continue;
        }
        int32_t j = 0;
        llama_token correction = -1;
        if (p.sirius.width > 1) {
            if ((status = L.tree(k, j, correction)) != SIRIUS_OK) break;
        } else {
            // draft
            if ((status = L.draft(k)) != SIRIUS_OK) break;
            // verify
            const auto t0 = std::chrono::steady_clock::now();
            if ((status = L.verify()) != SIRIUS_OK) break;
            // accept
            j = L.accept(correction);
            // roll back past the last accepted draft; the correction comes after it
            truncate_to(s, L.c + j + 1);
            res.sirius.t_verify_ms += ms_since(t0);
        }
        go = L.finish_period(j, correction);
    }
    L.finish(status);
    return status;
}

}  // namespace sirius

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

extern "C" int32_t sirius_test_scale_cost_curve(sirius_session * s, double factor) {
    using namespace sirius;
    if (!s) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "scale_cost_curve needs a session");
    if (!(factor > 0.0) || !std::isfinite(factor)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "scale_cost_curve: factor must be > 0 and finite, got " + std::to_string(factor));
    }
    scale_curve(s, factor);
    return SIRIUS_OK;
}
