// Internal state shared by the native modules (not part of the C API).
#pragma once

#include "llama.h"
#include "sirius.h"

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <atomic>
#include <map>
#include <vector>

#include <chrono>

namespace sirius {
int32_t fail(int32_t code, std::string msg);
struct SparseFFN;  // sparse.cpp
struct DraftHead;  // sparse.h
struct MappedGGUF; // sparse.h
struct NeuronDown; // sparse.h
class TextStream;  // text.h
}  // namespace sirius

struct sirius_model {
    llama_model *       model = nullptr;
    const llama_vocab * vocab = nullptr;
    int32_t             n_vocab = 0;
    std::string         path;
    // The GGUF file mapped once for the sparse builders (their byte copies), shared by the model's sessions.
    std::shared_ptr<sirius::MappedGGUF> file;
    std::mutex                          file_mu;
    // The neuron-major ffn_down of per-token single-neuron sparsity (neuron_down.cpp), built or loaded on first
    // use and cached in cache_dir ("" : built in memory).
    std::string                               cache_dir;
    std::shared_ptr<const sirius::NeuronDown> neuron_down;
    std::mutex                                neuron_mu;
};

struct sirius_session {
    sirius_model *           model = nullptr;
    llama_context *          ctx = nullptr;
    // CPU threads (cpu_budget.cpp): the session's own ggml threadpools, one per thread count in use, attached to
    // ctx. n_threads / n_threads_batch as created are the most it uses; sirius_session_set_threads asks for
    // fewer (from any thread), which the next decode applies.
    std::map<int32_t, ggml_threadpool *> pools;
    int32_t                  n_threads_cfg = 1, n_threads_batch_cfg = 1;
    int32_t                  n_threads_cur = 1, n_threads_batch_cur = 1;
    std::atomic<int32_t>     want_threads{1}, want_threads_batch{1};
    llama_batch              batch{};
    uint32_t                 n_ctx = 0;    // the limit the caller asked for (llama.cpp pads its own up)
    uint32_t                 n_batch = 0;
    std::vector<llama_token> tokens;       // exactly the tokens whose KV is in the cache, positions 0..n-1
    int32_t                  n_dense = 0;  // leading tokens whose KV came from the dense model (reusable)
    // The dense logits after the last prompt's prefill, valid while tokens[0, prompt_logits_n) stand: a re-run of
    // that prompt starts from them instead of re-evaluating its last token alone (which rounds differently
    // from the batch and could change a greedy answer), so it is bit-identical to a fresh run.
    std::vector<float>       prompt_logits;
    int32_t                  prompt_logits_n = 0;
    bool                     sparse_on = false;

    // Griffin statistic, accumulated from the FFN activations of dense batches while collecting:
    // per layer and neuron, the sum over tokens of (z_ti / ||z_t||)^2 with z = act(gate x) * (up x).
    bool                            collect = false;
    std::vector<std::vector<double>> griffin_sumsq;
    int32_t                         griffin_tokens = 0;
    // The statistic holds exactly the activations of tokens[0, griffin_upto) (set by sirius_generate; 0: it
    // belongs to no reusable prefix). A later prompt that extends this prefix collects only its new tokens.
    int32_t                         griffin_upto = 0;
    std::vector<float>              scratch;
    // Top-k and threshold: while recording (tests, tracing), the neurons (or, on group layers, the groups) each
    // layer kept in the last single-token decode.
    bool                             record_topk = false;
    std::vector<std::vector<int32_t>> topk_ids;

    // Threshold sparsity: per-layer thresholds on a neuron's |act(gate x)| (from a calibration).
    std::vector<float> thresholds;
    // Calibration: while recording, every dense batch adds, per layer, each token's |act(gate x)| of every
    // neuron to score_hist[il] (SIRIUS_SCORE_BINS counts, binned by sirius_score_bin; empty: no gated FFN).
    bool                               record_scores = false;
    std::vector<std::vector<uint64_t>> score_hist;

    // Measured dense batch costs, verify_ms[k] for a k-token batch (0: not measured); from sirius_measure_verify.
    std::vector<double> verify_ms;

    std::unique_ptr<sirius::SparseFFN> sparse;  // compact FFN of the current prompt, if built
    // The trimmed draft head of the current prompt, if built, and its statistic: per token, the highest dense
    // logit over the prompt rows collected with Griffin's statistic (head_rows of them).
    std::unique_ptr<sirius::DraftHead> head;
    std::vector<float>                 head_max;
    int64_t                            head_rows = 0;
    int32_t                            last_batch_tokens = 0;  // tokens in the last llama_decode
    sirius_session();   // both out of line: SparseFFN is complete only in sparse.cpp
    ~sirius_session();
};

namespace sirius {
// gguf_check.cpp: "" when the file's hyperparameters are safe to hand to llama.cpp (or it is not readable as GGUF,
// which llama.cpp's loader reports), else why not, naming the key, its value and the fix.
std::string     check_gguf_hparams(const char * path);
// sirius.cpp
std::string     token_piece(const llama_vocab * vocab, llama_token tok);
int32_t         check_tokens(const sirius_session * s, const int32_t * tokens, int32_t n);
// Decodes tokens at positions n_past.. in chunks of n_batch; rows: all (logits_all) or the last. On failure the
// session is rolled back to where it was.
int32_t         decode(sirius_session * s, const int32_t * tokens, int32_t n, bool logits_all, float * logits_out);
// cpu_budget.cpp: llama_decode once the process's CPUs have room for this session's threads (sessions take
// turns past that). Every decode goes through it.
int32_t         budgeted_decode(sirius_session * s, const llama_batch & b);
// cpu_budget.cpp: the session's threadpools, made and attached (false: threads could not start) / freed.
bool            threads_init(sirius_session * s, int32_t n_threads, int32_t n_threads_batch);
void            threads_free(sirius_session * s);
void            truncate_to(sirius_session * s, int32_t n_keep);
int32_t         check_sampling(const sirius_sampling & sp);
// Whether a generation in this mode needs the sparse FFN (sparse alone, or drafting for the correction loop).
inline bool     uses_sparse_ffn(int32_t mode) { return mode == SIRIUS_MODE_SPARSE || mode == SIRIUS_MODE_SIRIUS; }
// The dense sampler chain (greedy at temperature 0; else make_filters, then a seeded draw), and its filters alone:
// top-k, top-p, min-p, then temperature. Speculative sampling takes its distributions from the filters (Warp,
// accept.h).
llama_sampler * make_sampler(const sirius_sampling & sp);
llama_sampler * make_filters(const sirius_sampling & sp);
double          ms_since(std::chrono::steady_clock::time_point t0);

// correction.cpp: the Sirius loop, run after the dense prefill with the sparse FFN built. Streams verified
// tokens through `text` and callback; leaves the session holding dense KV for the kept tokens.
int32_t correction_loop(sirius_session * s, const sirius_generate_params & p, TextStream & text,
                        sirius_token_callback callback, void * user_data, sirius_generate_result & res);
int32_t check_correction_params(const sirius_generate_params & p);

// The first maximum, as llama.cpp's greedy sampler picks it (strict mode must agree on ties).
inline llama_token argmax(const float * l, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i) {
        if (l[i] > l[best]) best = i;
    }
    return best;
}

// tree.cpp: one period of width p.sirius.width > 1 (greedy acceptance: relaxed or strict) from the verified
// token `root` at position c = n_past, K = k. Leaves the session holding dense KV for root and the accepted
// drafts (sequence 0) and nothing else; on failure, at most those (the caller truncates to c).
struct TreeOutcome {
    std::vector<llama_token> path;   // the winning beam: root, then its K-1 drafts
    std::vector<float>       probs;  // each draft's dense probability under the rule (0 where never judged)
    int32_t     accepted = 0;        // leading drafts kept
    llama_token correction = -1;     // the dense token after them
    int32_t     nodes = 0;           // tokens in the verify batch
    int32_t     rewritten = 0;       // accepted tokens evaluated again to keep the cache in position order
    int32_t     sparse_steps = 0;    // single-token sparse decodes
    double      sparse_ms = 0.0, draft_ms = 0.0, verify_ms = 0.0;
};
int32_t tree_period(sirius_session * s, const sirius_generate_params & p, llama_token root, int32_t k, TreeOutcome & out);

// sparse.cpp
bool    eval_callback(struct ggml_tensor * t, bool ask, void * user_data);
int32_t sparse_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info);
void    sparse_release(sirius_session * s);
int32_t set_ffn_mode(sirius_session * s, int32_t mode);
// Starts (reset: from zero) or stops collecting the Griffin statistic over the following dense batches.
void    griffin_set_collect(sirius_session * s, bool collect, bool reset);

// draft_head.cpp
// Row i of the last decode's logits over the whole vocabulary (a trimmed draft row scattered, -inf elsewhere).
const float * logits_ith(sirius_session * s, int32_t i);
// After a decode of n_rows output rows while collecting: folds them into the head statistic.
void    head_collect(sirius_session * s, int32_t n_rows);
void    head_reset_statistic(sirius_session * s);
// Builds (draft_vocab > 0) or drops (0) the trimmed head for the prompt in the session; adds to info.
int32_t head_build(sirius_session * s, int32_t draft_vocab, sirius_sparse_info * info);
void    head_release(sirius_session * s);
}  // namespace sirius
