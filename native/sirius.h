/* sirius.h: the C API of sirius-local's native core, a thin layer over llama.h.
 *
 * Conventions: every call that can fail returns a sirius_status; on failure sirius_last_error() holds a
 * message for the calling thread that names the problem and, where there is one, the fix. No function aborts
 * on bad input. Token ids are int32. Positions count tokens held in the session's KV cache.
 *
 * The block between CDEF-BEGIN and CDEF-END is read by the Python binding (cffi), so it holds plain C
 * declarations only: no macros other than SIRIUS_API, which the binding strips.
 */
#ifndef SIRIUS_H
#define SIRIUS_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  define SIRIUS_API __declspec(dllexport)
#else
#  define SIRIUS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */
typedef enum {
    SIRIUS_OK                    = 0,
    SIRIUS_ERR_INVALID_ARGUMENT  = 1,  /* a parameter is out of range or inconsistent */
    SIRIUS_ERR_IO                = 2,  /* a file is missing, unreadable or not GGUF */
    SIRIUS_ERR_MODEL_LOAD        = 3,  /* llama.cpp refused the model (architecture, truncation, ...) */
    SIRIUS_ERR_CONTEXT_OVERFLOW  = 4,  /* the tokens do not fit in the session's context */
    SIRIUS_ERR_DECODE            = 5,  /* llama_decode failed; the session was rolled back */
    SIRIUS_ERR_BUFFER_TOO_SMALL  = 6,  /* the output buffer is too small; *n_out holds the size needed */
    SIRIUS_ERR_UNSUPPORTED       = 7,  /* e.g. no usable chat template */
    SIRIUS_ERR_INTERNAL          = 8
} sirius_status;

typedef enum {
    SIRIUS_FINISH_LENGTH    = 0,  /* max_tokens reached, or the context is full */
    SIRIUS_FINISH_STOP      = 1,  /* end-of-generation token or a stop string */
    SIRIUS_FINISH_CANCELLED = 2   /* the token callback asked to stop */
} sirius_finish_reason;

typedef enum {
    SIRIUS_MODE_DENSE  = 0,  /* the full model */
    SIRIUS_MODE_SPARSE = 1,  /* single-token decodes use the compact sparse FFN, if one is built */
    SIRIUS_MODE_SIRIUS = 2   /* sparse drafts checked every period by one dense batch (the correction loop) */
} sirius_mode;

/* Largest tree width (draft beams per period), and the largest period K (also of a measured dense batch). */
enum { SIRIUS_MAX_WIDTH = 8, SIRIUS_MAX_PERIOD = 512 };

/* Session limits: the smallest context (it must hold a batch of 1 + 2·SIRIUS_MAX_WIDTH sequences' outputs, see
   sirius_session_new), and the most threads (ggml's GGML_MAX_N_THREADS). */
enum { SIRIUS_MIN_CTX = 32, SIRIUS_MAX_THREADS = 512 };

typedef enum {
    SIRIUS_ACCEPT_RELAXED = 0,  /* the paper's rule: softmax(dense_logits / accept_temperature)[draft] >= threshold */
    SIRIUS_ACCEPT_STRICT  = 1,  /* only the dense argmax: output identical to dense greedy decoding */
    SIRIUS_ACCEPT_SAMPLE  = 2   /* speculative sampling (temperature > 0): output distributed as the dense model's */
} sirius_acceptance;

typedef enum {
    SIRIUS_SPARSITY_GRIFFIN = 0, /* neuron groups chosen from the prompt's FFN activations, frozen per prompt */
    SIRIUS_SPARSITY_TOPK    = 1, /* per token: the neurons with the largest |act(gate x)| (gate dense, up/down skipped) */
    SIRIUS_SPARSITY_THRESHOLD = 2 /* per token: the neurons whose |act(gate x)| reaches the layer's calibrated
                                     threshold (a varying count; sirius_set_thresholds first) */
} sirius_sparsity;

/* Calibration's histogram of |act(gate x)|: SIRIUS_SCORE_BINS bins, sirius_score_bin(v) being the top 16 bits of
 * |v| as a float (8 exponent and 8 mantissa bits: 0.4% wide, ordered as the values). */
enum { SIRIUS_SCORE_BINS = 65536 };

typedef struct {
    int32_t n_layers;          /* layers of the model */
    int32_t n_layers_sparse;   /* layers with a compact FFN (gated FFN found); 0: the model runs dense */
    int32_t group_size;        /* neurons per selectable group (max over layers): 1 (single neurons) for Griffin and,
                                  on CPU layers, top-k and threshold; ffn_down's quant block for top-k and
                                  threshold on layers offloaded to a GPU (patch 0002's mul_mat_id groups) */
    double  density;           /* fraction of FFN neurons kept, over the sparse layers */
    double  param_fraction;    /* fraction of all parameters a sparse decode step reads */
    int64_t bytes;             /* memory held by the compact tensors */
    double  build_ms;          /* time to select and gather */
    double  measured_density;  /* threshold: neurons computed / neurons considered over the sparse decodes of the
                                  last sirius_generate (0 before any); other methods: = density */
    int32_t down_type;         /* ggml type of the ffn_down the sparse decode reads where it is not the model's:
                                  Griffin's compact copy, top-k / threshold's neuron-major copy (-1: none) */
    int64_t dense_step_bytes;  /* weight bytes one dense decode step reads (the GGUF's tensors; the token
                                  embedding only where it doubles as the output head) */
    int64_t step_bytes;        /* weight bytes one sparse decode step reads (the compact tensors instead of the FFN's,
                                  the trimmed head instead of the full one) */
    int32_t draft_vocab;       /* tokens in the trimmed draft head (0: drafts use the full head) */
    int64_t device_bytes;      /* of bytes, the part held in device (non-host) buffers: a GPU's memory, where the
                                  layers it copies from are offloaded */
} sirius_sparse_info;

typedef struct sirius_model   sirius_model;
typedef struct sirius_session sirius_session;

typedef struct {
    const char * role;
    const char * content;
} sirius_chat_message;

typedef struct {
    float    temperature;  /* <= 0: greedy (argmax) */
    int32_t  top_k;        /* <= 0: off */
    float    top_p;        /* >= 1: off */
    float    min_p;        /* <= 0: off */
    uint32_t seed;
} sirius_sampling;

/* Called once per verification (tests, tracing): the period started at position pos with the verified token
 * at pos, then k - 1 drafts; probs[i] is the dense model's probability of drafts[i] under the acceptance rule
 * (relaxed: softmax(logits / accept_temperature); strict: 1 if it is the argmax, else 0; sample: the warped
 * dense distribution); n_accepted drafts were kept and `correction` was appended after them. */
typedef void (*sirius_period_callback)(void * user_data, int32_t pos, int32_t k, const int32_t * drafts,
                                       const float * probs, int32_t n_accepted, int32_t correction);

typedef struct {
    int32_t period;              /* K >= 2: tokens per verification (K - 1 drafts); 0: auto (cost model) */
    int32_t max_period;          /* auto: largest K considered (>= 2) */
    int32_t acceptance;          /* sirius_acceptance */
    float   threshold;           /* relaxed: in (0, 1] */
    float   accept_temperature;  /* relaxed: > 0 (0.6 in the paper) */
    int32_t width;               /* draft beams verified together in one tree batch, 1..SIRIUS_MAX_WIDTH;
                                    > 1 needs relaxed or strict acceptance */
    sirius_period_callback on_period;  /* may be NULL */
    void *  period_user_data;
} sirius_correction_params;

typedef struct {
    int32_t periods;         /* verifications */
    int32_t drafted;         /* sparse draft tokens verified */
    int32_t accepted;        /* of which kept */
    int32_t corrections;     /* periods that ended on a rejected draft (the dense token replaced it) */
    int32_t advanced;        /* tokens advanced by verifications (accepted + one per period) */
    int32_t dense_steps;     /* tokens decoded densely one at a time (auto found drafting unprofitable, or the end) */
    int32_t last_period;     /* K of the last period */
    int32_t auto_dense;      /* auto: the cost model chose plain dense decoding for the rest of the call */
    double  t_draft_ms;      /* sparse drafting */
    double  t_verify_ms;     /* dense verify batches, acceptance included */
    double  t_dense_ms;      /* single dense steps */
    double  sparse_step_ms;  /* measured mean cost of one sparse step */
    double  dense_step_ms;   /* measured cost of one dense decode step on this session (0: no room to measure);
                                auto: as the call's own dense batches left it */
    double  t_calibrate_ms;  /* measuring the session's dense cost curve (first call only) */
    int32_t draft_steps;     /* sparse single-token decodes (= drafted at width 1; 1 + (K-2)·W per tree period) */
    int32_t tree_nodes;      /* tokens the dense model evaluated to verify (= drafted + periods at width 1; a tree
                                also re-evaluates accepted nodes off the best beam, to keep the cache in order) */
} sirius_correction_stats;

typedef struct {
    int32_t              max_tokens;  /* > 0 */
    sirius_sampling      sampling;
    const char * const * stop;        /* n_stop stop strings (not emitted), may be NULL */
    int32_t              n_stop;
    int32_t              ignore_eos;
    int32_t              mode;      /* sirius_mode */
    int32_t              sparsity;  /* sirius_sparsity, for SIRIUS_MODE_SPARSE */
    float                density;   /* (0, 1], for SIRIUS_MODE_SPARSE and SIRIUS_MODE_SIRIUS */
    sirius_correction_params sirius;  /* SIRIUS_MODE_SIRIUS */
    int32_t              draft_vocab; /* SPARSE and SIRIUS modes: >= 0; > 0 trims the drafts' output head to the prompt's
                                         tokens, the end-of-generation tokens and the draft_vocab tokens with the highest
                                         dense logit over the prompt (sirius_draft_head_build); 0: the full head */
} sirius_generate_params;

typedef struct {
    int32_t n_prompt;         /* prompt tokens */
    int32_t n_prompt_cached;  /* of which reused from the session's KV cache (not recomputed) */
    int32_t n_generated;      /* completion tokens (an end-of-generation token is not counted) */
    int32_t finish_reason;    /* sirius_finish_reason */
    double  t_prompt_ms;      /* prefill wall time */
    double  t_generate_ms;    /* decode loop wall time */
    sirius_sparse_info sparse; /* SPARSE and SIRIUS modes: what was built (n_layers_sparse = 0 if it ran dense) */
    sirius_correction_stats sirius;  /* SIRIUS_MODE_SIRIUS */
} sirius_generate_result;

/* Called with newly generated token ids and the text that became final with them (text may lag tokens:
 * bytes that could start a stop string or an incomplete UTF-8 character are held back). A last call with
 * n_tokens = 0 flushes held text. Return non-zero to cancel: the call then ends with SIRIUS_FINISH_CANCELLED
 * and the session stays consistent. */
typedef int (*sirius_token_callback)(void * user_data, const int32_t * tokens, int32_t n_tokens,
                                     const char * text, int32_t text_len);

SIRIUS_API const char * sirius_last_error(void);
SIRIUS_API const char * sirius_version(void);
SIRIUS_API const char * sirius_system_info(void);
/* The devices other than the CPU that this build's backends found, one per line: "NAME: DESCRIPTION, N MiB"
 * ("" when none: a CPU-only build, or a GPU build on a machine without a GPU or its driver). */
SIRIUS_API const char * sirius_devices(void);
/* 0: llama.cpp logs are kept (errors feed sirius_last_error) but not printed; 1: printed to stderr. */
SIRIUS_API void         sirius_set_verbose(int32_t verbose);

/* Model: weights mmapped once; any number of sessions share them. */
SIRIUS_API int32_t sirius_model_load(const char * path, int32_t n_gpu_layers, sirius_model ** out);
/* repack = 0 keeps CPU weights in their file layout (llama.cpp's use_extra_bufts off): batched and one-token
 * matmuls then use the same kernels, so a small verify batch rounds exactly like decoding (strict mode is then
 * bit-identical to dense greedy); repacking (the default) makes batches faster but rounds them differently. */
/* mlock = 1 locks the mapped file in RAM (llama.cpp's use_mlock; a warning if the limit forbids it), so the OS
 * cannot page weights out between calls (which a benchmark would otherwise measure as disk reads). */
SIRIUS_API int32_t sirius_model_load_opts(const char * path, int32_t n_gpu_layers, int32_t repack, int32_t mlock,
                                          sirius_model ** out);
SIRIUS_API void    sirius_model_free(sirius_model * model);
SIRIUS_API int32_t sirius_model_n_vocab(const sirius_model * model);
SIRIUS_API int32_t sirius_model_n_ctx_train(const sirius_model * model);
/* Bytes of one session's KV cache at n_ctx tokens (F16 K and V in every layer): what each server slot costs. */
SIRIUS_API double sirius_model_kv_cache_bytes(const sirius_model * model, uint32_t n_ctx);
SIRIUS_API int32_t sirius_model_n_layer(const sirius_model * model);
SIRIUS_API int32_t sirius_model_n_embd(const sirius_model * model);
SIRIUS_API int64_t sirius_model_n_params(const sirius_model * model);
SIRIUS_API int64_t sirius_model_size(const sirius_model * model);
/* Weight bytes one dense decode step reads (every tensor once; the token embedding only where it doubles as the
 * output head): the bound the sparse paths' step_bytes are measured against. -1 if the file cannot be mapped. */
SIRIUS_API int64_t sirius_model_step_bytes(sirius_model * model);
/* Where per-token single-neuron sparsity (top-k, threshold) caches the model's neuron-major ffn_down (a GGUF of
 * about the size of all ffn_down tensors, built on first use in seconds, then mapped): a directory (created if
 * its parent exists); NULL or "": built in memory by each process. */
SIRIUS_API int32_t sirius_model_set_cache_dir(sirius_model * model, const char * dir);
SIRIUS_API int32_t sirius_model_token_bos(const sirius_model * model);
SIRIUS_API int32_t sirius_model_token_eos(const sirius_model * model);
SIRIUS_API int32_t sirius_model_is_eog(const sirius_model * model, int32_t token);
/* GGUF metadata value as a string (e.g. "general.architecture"); SIRIUS_ERR_INVALID_ARGUMENT if absent. */
SIRIUS_API int32_t sirius_model_meta(const sirius_model * model, const char * key, char * buf, int32_t buf_len,
                                     int32_t * n_out);

/* Writes a copy of a GGUF model quantised to ftype (llama.cpp's llama_ftype numbering, e.g. 2 = Q4_0,
 * 7 = Q8_0, 15 = Q4_K_M), requantising if needed. Tensors whose shape the type cannot hold fall back as in
 * llama-quantize. */
SIRIUS_API int32_t sirius_quantize(const char * path_in, const char * path_out, int32_t ftype, int32_t n_threads);

/* Text <-> tokens. add_special: BOS/EOS as the model's tokenizer wants; parse_special: "<|im_start|>" etc.
 * become control tokens. */
SIRIUS_API int32_t sirius_tokenize(const sirius_model * model, const char * text, int32_t text_len,
                                   int32_t add_special, int32_t parse_special,
                                   int32_t * tokens, int32_t n_max, int32_t * n_out);
SIRIUS_API int32_t sirius_detokenize(const sirius_model * model, const int32_t * tokens, int32_t n_tokens,
                                     int32_t remove_special, int32_t unparse_special,
                                     char * buf, int32_t buf_len, int32_t * n_out);
/* The model's chat template (from GGUF metadata) applied to messages; add_assistant opens the reply. */
SIRIUS_API int32_t sirius_chat_apply(const sirius_model * model, const sirius_chat_message * messages,
                                     int32_t n_messages, int32_t add_assistant,
                                     char * buf, int32_t buf_len, int32_t * n_out);

/* Session: one llama_context with its own KV cache (sequence 0) and the list of tokens it holds. */
SIRIUS_API int32_t  sirius_session_new(sirius_model * model, uint32_t n_ctx, int32_t n_threads,
                                       int32_t n_threads_batch, uint32_t n_batch, sirius_session ** out);
SIRIUS_API void     sirius_session_free(sirius_session * session);
SIRIUS_API uint32_t sirius_session_n_ctx(const sirius_session * session);
/* SIRIUS_ERR_CONTEXT_OVERFLOW if a prompt of n_prompt tokens cannot fit in the context (what sirius_generate
 * checks first), so a caller can refuse it before it starts. */
SIRIUS_API int32_t  sirius_session_check_prompt(const sirius_session * session, int32_t n_prompt);
/* Use fewer of the session's CPU threads (1..its own n_threads / n_threads_batch) from the next decode on, e.g.
 * while other sessions compute beside it. Safe to call from any thread, during a generation too. */
SIRIUS_API int32_t  sirius_session_set_threads(sirius_session * session, int32_t n_threads, int32_t n_threads_batch);
SIRIUS_API int32_t  sirius_session_n_past(const sirius_session * session);
/* Copies the tokens held in the KV cache (up to n_max) and returns how many there are. */
SIRIUS_API int32_t  sirius_session_tokens(const sirius_session * session, int32_t * tokens, int32_t n_max);
SIRIUS_API int32_t  sirius_session_reset(sirius_session * session);

/* Evaluates tokens at positions n_past.. (batched, in chunks of n_batch). logits_all: write n_tokens rows of
 * n_vocab floats to logits_out; else only the last row. logits_out may be NULL. */
SIRIUS_API int32_t sirius_eval(sirius_session * session, const int32_t * tokens, int32_t n_tokens,
                               int32_t logits_all, float * logits_out);
/* Drops tokens and KV cells from position n_keep on (llama_memory_seq_rm). */
SIRIUS_API int32_t sirius_truncate(sirius_session * session, int32_t n_keep);

/* Sparse FFN, step by step. Griffin:  (sirius_generate does all of this for SIRIUS_MODE_SPARSE).
 * collect = 1 starts (and resets) the Griffin statistic over the FFN activations of the following dense
 * evaluations; 0 stops it. sparse_build selects, per layer, the round(density * n_groups) neuron groups with
 * the highest statistic and gathers them into compact gate/up/down tensors (exact byte copies of the GGUF's
 * quantised rows and blocks). Top-k needs no statistic: sparse_build(SIRIUS_SPARSITY_TOPK) keeps the
 * round(density * n_ff) neurons with the largest |act(gate x)| per token, reading up in place from the mapped GGUF
 * and ffn_down from the model's neuron-major copy (sirius_model_set_cache_dir); SIRIUS_SPARSITY_THRESHOLD keeps
 * the neurons reaching the thresholds set by sirius_set_thresholds (density is then the calibration's, for the
 * report). Layers offloaded to a GPU keep round(density * n_groups) whole groups instead (group_size in info).
 * set_ffn_mode(SPARSE) then makes single-token decodes use them;
 * batches of more than one token are always dense. */
SIRIUS_API int32_t sirius_griffin_collect(sirius_session * session, int32_t collect);
SIRIUS_API int32_t sirius_sparse_build(sirius_session * session, int32_t sparsity, float density, sirius_sparse_info * info);
SIRIUS_API int32_t sirius_set_ffn_mode(sirius_session * session, int32_t mode);
SIRIUS_API void    sirius_sparse_release(sirius_session * session);
/* The trimmed draft head (after the prompt's prefill and sparse_build): single-token decodes in sparse mode then
 * compute logits for a token subset only (see sirius_generate_params.draft_vocab; 0 drops it), and their
 * logits rows hold -inf outside it. Models whose head has a bias keep the full head (info->draft_vocab = 0). */
SIRIUS_API int32_t sirius_draft_head_build(sirius_session * session, int32_t draft_vocab, sirius_sparse_info * info);
/* Threshold sparsity: per-layer thresholds (n = n_layer values, finite, >= 0; NULL clears) on a neuron's
 * |act(gate x)|, used by sparse_build(SIRIUS_SPARSITY_THRESHOLD) and, live, by a threshold FFN already built. */
SIRIUS_API int32_t sirius_set_thresholds(sirius_session * session, const float * thresholds, int32_t n);
/* Calibration: record = 1 resets and starts recording, for every following dense batch, each token's
 * |act(gate x)| of every neuron into a per-layer histogram; 0 stops. sirius_neuron_score_hist copies layer il's
 * SIRIUS_SCORE_BINS counts into out and returns SIRIUS_SCORE_BINS (0: the layer has no gated FFN; -1: nothing
 * recorded). sirius_score_bin_floor(b) is the smallest value in bin b, so |v| >= floor(b) iff bin(v) >= b. */
SIRIUS_API int32_t sirius_neuron_scores_record(sirius_session * session, int32_t record);
SIRIUS_API int32_t sirius_neuron_score_hist(const sirius_session * session, int32_t il, uint64_t * out, int32_t n_max);
SIRIUS_API int32_t sirius_score_bin(float v);
SIRIUS_API float   sirius_score_bin_floor(int32_t bin);
/* Per-token decodes so far on the current sparse FFN: neurons computed and neurons considered, over the
 * single-neuron layers. */
SIRIUS_API int32_t sirius_threshold_kept(const sirius_session * session, int64_t * kept, int64_t * seen);

/* Cost of dense batches on this session (the verify cost curve): for each ks[i] in [1, 512], the median over
 * `repeats` runs of the wall time (ms) of one batch of ks[i] tokens with logits at every position, evaluated
 * after the tokens the session holds and then removed again (the session is unchanged). The last measured
 * curve also feeds the correction loop's auto period; its calls keep the curve's level current from their own
 * timed dense batches (a curve measured while the machine was busy does not misprice the session's life). */
SIRIUS_API int32_t sirius_measure_verify(sirius_session * session, const int32_t * ks, int32_t n, int32_t repeats,
                                         double * ms_out);

/* The correction loop's cost model (what period = auto decides with), for predictions: a period of k tokens
 * (width beams) at per-draft acceptance rate accept_rate, sparse steps of sparse_ms, and dense batches whose
 * measured costs are curve_ms[i] ms at curve_k[i] tokens (interpolated and extrapolated as the loop does).
 * *verify_ms gets the period's dense batch cost, *tokens_per_second the predicted speed (either may be NULL). */
SIRIUS_API int32_t sirius_cost_predict(const int32_t * curve_k, const double * curve_ms, int32_t n_curve, int32_t k,
                                       int32_t width, double accept_rate, double sparse_ms, double * verify_ms,
                                       double * tokens_per_second);

/* Prefill (reusing the longest common prefix already in the KV cache) and the whole decode loop, in C.
 * The prompt replaces whatever followed that prefix. */
SIRIUS_API int32_t sirius_generate(sirius_session * session, const int32_t * prompt, int32_t n_prompt,
                                   const sirius_generate_params * params, sirius_token_callback callback,
                                   void * user_data, sirius_generate_result * result);

/* ---- Test and measurement hooks: sirius_test_*. Not for applications; tests and benchmarks hold the engine's
 * parts against independent references with them. ---- */

/* The Griffin statistic of layer il per neuron (sqrt of the accumulated sum; n_ff values). Returns n_ff. */
SIRIUS_API int32_t sirius_test_griffin_scores(const sirius_session * session, int32_t il, float * out, int32_t n_max);
/* The neurons (group_size > 1: groups) kept in layer il's compact FFN (ascending) and the group size; returns the
 * count, -1 if none. */
SIRIUS_API int32_t sirius_test_sparse_groups(const sirius_session * session, int32_t il, int32_t * groups, int32_t n_max,
                                             int32_t * group_size);
/* Top-k and threshold: record = 1 records, per layer, the neurons (group layers: the groups) the last single-token
 * sparse decode kept; sirius_test_topk_kept returns their count (ascending ids into out), -1 if none was
 * recorded. */
SIRIUS_API int32_t sirius_test_topk_record(sirius_session * session, int32_t record);
SIRIUS_API int32_t sirius_test_topk_kept(const sirius_session * session, int32_t il, int32_t * out, int32_t n_max);
/* The trimmed draft head's tokens (ascending, up to n_max); returns the subset's size (0: full head). */
SIRIUS_API int32_t sirius_test_draft_head_tokens(const sirius_session * session, int32_t * tokens, int32_t n_max);

/* Multiplies the session's measured dense cost curve by factor (> 0, finite): the curve as a busier (factor > 1)
 * or idler machine would have measured it. */
SIRIUS_API int32_t sirius_test_scale_cost_curve(sirius_session * session, double factor);

/* The sample acceptance rule on given distributions: n_trials times, draw a draft from q, accept or resample it
 * against p; out_tokens gets the resulting tokens (distributed as p), *n_kept how many drafts stood. */
SIRIUS_API int32_t sirius_test_speculative_sample(const float * p, const float * q, int32_t n, uint32_t seed,
                                                  int32_t n_trials, int32_t * out_tokens, int32_t * n_kept);

/* One ggml-cpu matrix product on caller data (ggml's CPU paths for a weight type against a reference and each
 * other): out[c * rows + r] = row r of `weights` (rows x n of ggml type `type`, raw blocks) dot column c of x
 * (cols x n floats), computed by a ggml graph with n_threads threads, as llama.cpp's matmuls are. repack = 1
 * puts the weights in the CPU_REPACK buffer type first, as llama.cpp loads them by default (an error where this
 * build and CPU do not repack that type and shape). */
SIRIUS_API int32_t sirius_test_ggml_mul_mat(int32_t type, int32_t n, int32_t rows, int32_t cols, const void * weights,
                                            const float * x, float * out, int32_t n_threads, int32_t repack);

/* The single-neuron FFN kernels on caller data: y = sum over kept neurons n of a[n] * (up row n . x) * down_nm row
 * n, where up is n_ff rows of n_embd (ggml type up_type, raw blocks, as in a GGUF), down_nm n_ff rows of n_embd
 * (down_type: Q4_0, Q8_0, F16 or F32), a the n_ff values act(gate x), and the kept neurons are the top k of |a|
 * (k > 0) or those with |a| >= threshold (k = 0); run by a ggml graph with n_threads threads. kept (n_ff ints, or
 * NULL) receives the kept ids ascending and *n_kept their count. */
SIRIUS_API int32_t sirius_test_ggml_neuron_ffn(int32_t up_type, int32_t down_type, int32_t n_embd, int32_t n_ff,
                                               const void * up, const void * down_nm, const float * a, const float * x,
                                               int32_t k, float threshold, int32_t n_threads, float * y, int32_t * kept,
                                               int32_t * n_kept);

/* One ggml-cpu flash attention (ggml_flash_attn_ext, as llama.cpp's attention runs with flash_attn on) on caller
 * data, to hold a verify batch's rows against one-token decodes: q is n_head x n_q x dk, k is n_head_kv x n_kv x dk
 * and v n_head_kv x n_kv x dv (floats, stored as F16 like llama.cpp's KV cache), mask n_q x n_kv (0 or -INFINITY),
 * out n_q x n_head x dv, computed with n_threads threads. */
SIRIUS_API int32_t sirius_test_ggml_flash_attn(int32_t dk, int32_t dv, int32_t n_q, int32_t n_head, int32_t n_head_kv,
                                               int32_t n_kv, const float * q, const float * k, const float * v,
                                               const float * mask, float scale, float * out, int32_t n_threads);
/* CDEF-END */

#ifdef __cplusplus
}
#endif

#endif /* SIRIUS_H */
