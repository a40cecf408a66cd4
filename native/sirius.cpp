// sirius-local native core: models, sessions, batched evaluation, KV truncation and the decode loop over
// llama.h. Errors become status codes with a thread-local message; llama.cpp's own error log lines are
// captured so that the message says why llama.cpp refused something.

#include "internal.h"
#include "text.h"

#include <sys/stat.h>
#ifndef _WIN32
#include <unistd.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#ifndef SIRIUS_VERSION
#define SIRIUS_VERSION "0.1.0"
#endif
#ifndef SIRIUS_LLAMA_SOURCE
#define SIRIUS_LLAMA_SOURCE "unknown"
#endif

namespace {
thread_local std::string t_last_error;
}

int32_t sirius::fail(int32_t code, std::string msg) {
    t_last_error = std::move(msg);
    return code;
}

namespace {

using sirius::fail;

// This machine's physical memory (0: unknown).
double physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return (double) pages * (double) page;
#endif
    return 0.0;
}

// Bytes of an n_ctx-token KV cache: F16 K and V in every layer (the head sizes from GGUF metadata where given).
double kv_cache_bytes(const llama_model * mdl, uint32_t n_ctx) {
    const int64_t n_head = std::max<int64_t>(1, llama_model_n_head(mdl));
    const int64_t n_head_kv = std::max<int64_t>(1, llama_model_n_head_kv(mdl));
    int64_t dk = std::max<int64_t>(1, llama_model_n_embd(mdl) / n_head), dv = dk;
    char arch[64] = {0}, key[160], val[32];
    if (llama_model_meta_val_str(mdl, "general.architecture", arch, sizeof(arch)) > 0) {
        snprintf(key, sizeof(key), "%s.attention.key_length", arch);
        if (llama_model_meta_val_str(mdl, key, val, sizeof(val)) > 0) dk = std::max<int64_t>(1, atoll(val));
        snprintf(key, sizeof(key), "%s.attention.value_length", arch);
        if (llama_model_meta_val_str(mdl, key, val, sizeof(val)) > 0) dv = std::max<int64_t>(1, atoll(val));
    }
    return (double) n_ctx * llama_model_n_layer(mdl) * n_head_kv * (double) (dk + dv) * 2.0;
}

std::mutex              g_log_mutex;
std::deque<std::string> g_log_errors;  // recent llama.cpp error lines, for error messages
std::string             g_log_line;    // error line being assembled from GGML_LOG_LEVEL_CONT pieces
int                     g_log_level = GGML_LOG_LEVEL_NONE;
int                     g_verbose = 0;
std::once_flag          g_backend_once;

void log_callback(ggml_log_level level, const char * text, void * /*user_data*/) {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    if (g_verbose) {
        fputs(text, stderr);
    }
    if (level != GGML_LOG_LEVEL_CONT) {
        g_log_level = level;
    }
    if (g_log_level != GGML_LOG_LEVEL_ERROR) {
        return;
    }
    g_log_line += text;
    size_t nl;
    while ((nl = g_log_line.find('\n')) != std::string::npos) {
        std::string line = g_log_line.substr(0, nl);
        g_log_line.erase(0, nl + 1);
        if (!line.empty()) {
            g_log_errors.push_back(line);
            if (g_log_errors.size() > 8) g_log_errors.pop_front();
        }
    }
}

void clear_log_errors() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_log_errors.clear();
    g_log_line.clear();
}

std::string take_log_errors() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string out;
    for (const auto & l : g_log_errors) {
        if (!out.empty()) out += "; ";
        out += l;
    }
    g_log_errors.clear();
    return out;
}

void ensure_backend() {
    std::call_once(g_backend_once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

// Copies s into buf (NUL-terminated when it fits); *n_out = bytes needed without the NUL.
int32_t copy_out(const std::string & s, char * buf, int32_t buf_len, int32_t * n_out) {
    if (n_out) *n_out = (int32_t) s.size();
    if (!buf || buf_len < (int32_t) s.size() + 1) {
        return fail(SIRIUS_ERR_BUFFER_TOO_SMALL, "output buffer too small: need " + std::to_string(s.size() + 1) + " bytes");
    }
    memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
    return SIRIUS_OK;
}

}  // namespace

namespace sirius {

std::string token_piece(const llama_vocab * vocab, llama_token tok) {
    char small[128];
    int32_t n = llama_token_to_piece(vocab, tok, small, sizeof(small), 0, false);
    if (n >= 0) return std::string(small, n);
    std::string big(-n, '\0');
    n = llama_token_to_piece(vocab, tok, &big[0], (int32_t) big.size(), 0, false);
    return n >= 0 ? big.substr(0, n) : std::string();
}

int32_t check_tokens(const sirius_session * s, const int32_t * tokens, int32_t n) {
    for (int32_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= s->model->n_vocab) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                                         " is outside the vocabulary [0, " + std::to_string(s->model->n_vocab) + ")");
        }
    }
    return SIRIUS_OK;
}

// Decodes tokens at positions n_past.., in chunks of n_batch. Output rows: all positions when logits_all,
// else the last one. On failure the session is rolled back to where it was.
int32_t decode(sirius_session * s, const int32_t * tokens, int32_t n, bool logits_all, float * logits_out) {
    if (n <= 0) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no tokens to evaluate");
    }
    if (int32_t rc = check_tokens(s, tokens, n)) return rc;
    const int32_t n_past = (int32_t) s->tokens.size();
    if ((int64_t) n_past + n > (int64_t) s->n_ctx) {
        return fail(SIRIUS_ERR_CONTEXT_OVERFLOW, std::to_string(n_past + n) + " tokens do not fit in the context of " +
                                                     std::to_string(s->n_ctx) + " (" + std::to_string(n_past) +
                                                     " already held): raise n_ctx or shorten the input");
    }
    const int32_t n_vocab = s->model->n_vocab;
    auto roll_back = [&] {
        llama_memory_seq_rm(llama_get_memory(s->ctx), 0, n_past, -1);
        s->tokens.resize(n_past);
        s->n_dense = std::min(s->n_dense, n_past);
    };
    clear_log_errors();
    for (int32_t start = 0; start < n; start += (int32_t) s->n_batch) {
        const int32_t len = std::min<int32_t>((int32_t) s->n_batch, n - start);
        llama_batch & b = s->batch;
        b.n_tokens = len;
        for (int32_t i = 0; i < len; ++i) {
            b.token[i] = tokens[start + i];
            b.pos[i] = n_past + start + i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            // While the Griffin statistic is collected every row is an output: llama.cpp computes the last
            // layer only for output rows, and the statistic needs every prompt token in every layer.
            b.logits[i] = logits_all || (start + i == n - 1) || s->collect;
        }
        const int32_t rc = budgeted_decode(s, b);
        s->last_batch_tokens = len;
        if (rc != 0) {
            roll_back();
            std::string why = take_log_errors();
            return fail(SIRIUS_ERR_DECODE, "llama_decode failed (code " + std::to_string(rc) + ")" +
                                               (rc == 1 ? ": no KV cache slot for the batch" : rc == 2 ? ": aborted" : "") +
                                               (why.empty() ? "" : ": " + why));
        }
        if (const float * last = logits_ith(s, -1)) {
            // Corrupt weights give NaN logits, and a NaN row would silently sample token 0 or stop.
            for (int32_t t = 0; t < n_vocab; ++t) {
                if (std::isnan(last[t]) || last[t] == INFINITY) {
                    roll_back();
                    return fail(SIRIUS_ERR_DECODE, "the model's logits are NaN or infinite at position " +
                                                       std::to_string(n_past + start + len - 1) +
                                                       ": its weights are probably corrupt; re-download or re-convert the model");
                }
            }
        }
        if (s->collect) sirius::head_collect(s, len);  // (every row is an output while collecting)
        if (logits_out) {
            for (int32_t i = 0; i < len; ++i) {
                if (!(logits_all || start + i == n - 1)) continue;
                const float * row = logits_ith(s, i);
                if (!row) {
                    return fail(SIRIUS_ERR_INTERNAL, "llama.cpp returned no logits for batch row " + std::to_string(i));
                }
                float * dst = logits_all ? logits_out + (size_t) (start + i) * n_vocab : logits_out;
                memcpy(dst, row, sizeof(float) * n_vocab);
            }
        }
        s->tokens.insert(s->tokens.end(), tokens + start, tokens + start + len);
        // A single-token decode in sparse mode writes sparse-model KV: never reuse it as the dense model's.
        const bool sparse_kv = s->sparse_on && s->sparse && len == 1;
        if (!sparse_kv && s->n_dense == n_past + start) s->n_dense = n_past + start + len;
    }
    return SIRIUS_OK;
}

void truncate_to(sirius_session * s, int32_t n_keep) {
    if (n_keep < s->griffin_upto) s->griffin_upto = 0;  // the statistic has tokens that are gone: unusable
    if (n_keep < s->prompt_logits_n) s->prompt_logits_n = 0;
    if (n_keep < (int32_t) s->tokens.size()) {
        llama_memory_seq_rm(llama_get_memory(s->ctx), 0, n_keep, -1);
        s->tokens.resize(n_keep);
    }
    s->n_dense = std::min(s->n_dense, n_keep);
}

int32_t check_sampling(const sirius_sampling & sp) {
    if (!std::isfinite(sp.temperature) || sp.temperature < 0.0f) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "temperature must be >= 0 (0 = greedy), got " + std::to_string(sp.temperature));
    }
    if (sp.top_k < 0) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "top_k must be >= 0 (0 = off), got " + std::to_string(sp.top_k));
    }
    if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "top_p must be in (0, 1], got " + std::to_string(sp.top_p));
    }
    if (!(sp.min_p >= 0.0f && sp.min_p < 1.0f)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "min_p must be in [0, 1), got " + std::to_string(sp.min_p));
    }
    return SIRIUS_OK;
}

llama_sampler * new_chain() {
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    return llama_sampler_chain_init(cp);
}

llama_sampler * make_filters(const sirius_sampling & sp) {
    llama_sampler * chain = new_chain();
    if (sp.top_k > 0) llama_sampler_chain_add(chain, llama_sampler_init_top_k(sp.top_k));
    if (sp.top_p < 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_top_p(sp.top_p, 1));
    if (sp.min_p > 0.0f) llama_sampler_chain_add(chain, llama_sampler_init_min_p(sp.min_p, 1));
    llama_sampler_chain_add(chain, llama_sampler_init_temp(sp.temperature));
    return chain;
}

llama_sampler * make_sampler(const sirius_sampling & sp) {
    if (sp.temperature <= 0.0f) {
        llama_sampler * chain = new_chain();
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        return chain;
    }
    llama_sampler * chain = make_filters(sp);
    llama_sampler_chain_add(chain, llama_sampler_init_dist(sp.seed));
    return chain;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace sirius

using sirius::check_sampling;
using sirius::check_tokens;
using sirius::decode;
using sirius::logits_ith;
using sirius::make_sampler;
using sirius::ms_since;
using sirius::token_piece;
using sirius::truncate_to;

namespace {

// Dense or sparse decoding, one token per step, sampled with llama.cpp's sampler chain.
int32_t plain_loop(sirius_session * s, const sirius_generate_params & p, sirius::TextStream & text,
                   sirius_token_callback callback, void * user_data, sirius_generate_result & res) {
    llama_sampler * smpl = make_sampler(p.sampling);
    const int32_t n_vocab = s->model->n_vocab;
    std::vector<llama_token_data> cur(n_vocab);
    const float * row = s->prompt_logits.data();  // the first token comes from the prompt's logits
    int32_t status = SIRIUS_OK;
    while (true) {
        // llama_sampler_sample's CPU path, over a row we choose
        for (llama_token t = 0; t < n_vocab; ++t) cur[t] = llama_token_data{t, row[t], 0.0f};
        llama_token_data_array arr{cur.data(), cur.size(), -1, false};
        llama_sampler_apply(smpl, &arr);
        const llama_token tok = arr.data[arr.selected].id;
        llama_sampler_accept(smpl, tok);
        if (!p.ignore_eos && llama_vocab_is_eog(s->model->vocab, tok)) {
            res.finish_reason = SIRIUS_FINISH_STOP;
            break;
        }
        res.n_generated++;
        const std::string out = text.push(token_piece(s->model->vocab, tok));
        const int cancel = callback ? callback(user_data, &tok, 1, out.data(), (int32_t) out.size()) : 0;
        if (text.stopped()) {
            res.finish_reason = SIRIUS_FINISH_STOP;
            break;
        }
        if (cancel) {
            res.finish_reason = SIRIUS_FINISH_CANCELLED;
            break;
        }
        if (res.n_generated >= p.max_tokens || s->tokens.size() >= s->n_ctx) {
            res.finish_reason = SIRIUS_FINISH_LENGTH;
            break;
        }
        if ((status = decode(s, &tok, 1, false, nullptr)) != SIRIUS_OK) break;
        row = logits_ith(s, -1);
    }
    llama_sampler_free(smpl);
    return status;
}

// sirius_generate's arguments, checked before anything runs; stops gets the stop strings.
int32_t check_generate(sirius_session * s, const int32_t * prompt, int32_t n_prompt, const sirius_generate_params * params,
                       std::vector<std::string> & stops) {
    if (!s || !params) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "session or params is NULL");
    if (n_prompt <= 0 || !prompt) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "the prompt is empty: give at least one token");
    if (params->max_tokens < 1) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "max_tokens must be >= 1, got " + std::to_string(params->max_tokens));
    }
    if (int32_t rc = check_sampling(params->sampling)) return rc;
    const bool sparse = sirius::uses_sparse_ffn(params->mode);
    if (params->mode != SIRIUS_MODE_DENSE && !sparse) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown mode " + std::to_string(params->mode) + " (0 = dense, 1 = sparse, 2 = sirius)");
    }
    if (sparse && params->sparsity != SIRIUS_SPARSITY_GRIFFIN && params->sparsity != SIRIUS_SPARSITY_TOPK &&
        params->sparsity != SIRIUS_SPARSITY_THRESHOLD) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown sparsity method " + std::to_string(params->sparsity));
    }
    if (sparse && !(params->density > 0.0f && params->density <= 1.0f)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "density must be in (0, 1], got " + std::to_string(params->density));
    }
    if (sparse && params->draft_vocab < 0) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "draft_vocab must be >= 0 (0 = the full head), got " + std::to_string(params->draft_vocab));
    }
    if (params->mode == SIRIUS_MODE_SIRIUS) {
        if (int32_t rc = sirius::check_correction_params(*params)) return rc;
    }
    if (params->n_stop < 0 || (params->n_stop > 0 && !params->stop)) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "bad stop list");
    for (int32_t i = 0; i < params->n_stop; ++i) {
        if (!params->stop[i] || !*params->stop[i]) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "stop strings must be non-empty");
        stops.emplace_back(params->stop[i]);
    }
    if (int32_t rc = check_tokens(s, prompt, n_prompt)) return rc;
    return sirius_session_check_prompt(s, n_prompt);
}

// The prompt's prefill. Reuses the dense KV of the longest common prefix; the last prompt token is evaluated for
// its logits unless they are kept from this very prompt's prefill. Griffin needs its statistic over the whole
// prompt: it is kept for the prefix it was collected on, so a prompt that extends that prefix (the next chat turn)
// evaluates only what is new; any other prompt is prefilled in full.
int32_t prefill(sirius_session * s, const int32_t * prompt, int32_t n_prompt, bool griffin, sirius_generate_result & res) {
    int32_t common = 0;
    const int32_t held = std::min<int32_t>((int32_t) s->tokens.size(), s->n_dense);
    while (common < held && common < n_prompt && s->tokens[common] == prompt[common]) ++common;
    const int32_t upto = s->griffin_upto;
    const bool stats_reusable = griffin && upto > 0 && common >= upto;
    // A re-run of the very prompt whose logits are kept (and, for Griffin, whose statistic is) evaluates nothing.
    const bool whole = common == n_prompt && s->prompt_logits_n == n_prompt && (!griffin || (stats_reusable && upto >= n_prompt));
    int32_t start = whole ? n_prompt : std::min(common, n_prompt - 1);
    if (griffin && !whole) start = stats_reusable ? std::min(upto, n_prompt - 1) : 0;
    sirius::set_ffn_mode(s, SIRIUS_MODE_DENSE);
    truncate_to(s, start);
    res.n_prompt_cached = start;

    const auto t0 = std::chrono::steady_clock::now();
    if (!whole) {
        // Collect over [upto, n_prompt).
        const bool collect = griffin && !(stats_reusable && upto >= n_prompt);
        s->prompt_logits.resize(s->model->n_vocab);
        s->prompt_logits_n = 0;
        if (collect) sirius::griffin_set_collect(s, true, !stats_reusable);
        const int32_t rc = decode(s, prompt + start, n_prompt - start, false, s->prompt_logits.data());
        if (collect) sirius::griffin_set_collect(s, false, false);
        if (rc != SIRIUS_OK) {
            s->griffin_upto = 0;
            return rc;
        }
        s->prompt_logits_n = n_prompt;
        if (griffin) s->griffin_upto = n_prompt;
    }
    res.t_prompt_ms = ms_since(t0);
    return SIRIUS_OK;
}

// Threshold's measured density over a generation's sparse decodes (kept of seen neurons), and the parameters a
// step read, from the neurons it kept (the skipped part scales with 1 - density).
void threshold_measured(int64_t kept, int64_t seen, sirius_sparse_info & info) {
    info.measured_density = seen > 0 ? (double) kept / (double) seen : 0.0;
    if (seen > 0 && info.density < 1.0) {
        info.param_fraction = 1.0 - (1.0 - info.param_fraction) * (1.0 - info.measured_density) / (1.0 - info.density);
    }
}

}  // namespace

extern "C" {

const char * sirius_last_error(void) { return t_last_error.c_str(); }

const char * sirius_version(void) {
    return "sirius-local " SIRIUS_VERSION " (llama.cpp from " SIRIUS_LLAMA_SOURCE ")";
}

const char * sirius_system_info(void) {
    ensure_backend();
    return llama_print_system_info();
}

const char * sirius_devices(void) {
    ensure_backend();
    static const std::string text = [] {
        std::string out;
        for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) continue;
            size_t free = 0, total = 0;
            ggml_backend_dev_memory(dev, &free, &total);
            out += std::string(ggml_backend_dev_name(dev)) + ": " + ggml_backend_dev_description(dev) + ", " +
                   std::to_string(total >> 20) + " MiB\n";
        }
        return out;
    }();
    return text.c_str();
}

void sirius_set_verbose(int32_t verbose) {
    ensure_backend();
    std::lock_guard<std::mutex> lock(g_log_mutex);
    g_verbose = verbose;
}

int32_t sirius_model_load(const char * path, int32_t n_gpu_layers, sirius_model ** out) {
    return sirius_model_load_opts(path, n_gpu_layers, 1, 0, out);
}

int32_t sirius_model_load_opts(const char * path, int32_t n_gpu_layers, int32_t repack, int32_t mlock, sirius_model ** out) {
    if (!out) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!path || !*path) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "model path is empty");
    struct stat st;
    if (stat(path, &st) != 0) {
        return fail(SIRIUS_ERR_IO, std::string("model file not found: ") + path);
    }
    if (S_ISDIR(st.st_mode)) {
        return fail(SIRIUS_ERR_IO, std::string("model path is a directory, not a GGUF file: ") + path);
    }
    {
        FILE * f = fopen(path, "rb");
        if (!f) return fail(SIRIUS_ERR_IO, std::string("cannot open model file: ") + path + ": " + strerror(errno));
        char magic[4] = {0, 0, 0, 0};
        size_t got = fread(magic, 1, 4, f);
        fclose(f);
        if (got != 4 || memcmp(magic, "GGUF", 4) != 0) {
            return fail(SIRIUS_ERR_IO, std::string("not a GGUF file (no 'GGUF' magic): ") + path +
                                           ": pass a .gguf model file or a model name from `sirius-local models list`");
        }
    }
    {
        const std::string why = sirius::check_gguf_hparams(path);
        if (!why.empty()) return fail(SIRIUS_ERR_MODEL_LOAD, std::string("cannot load ") + path + ": " + why);
    }
    ensure_backend();
    clear_log_errors();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu_layers;
    mp.use_extra_bufts = repack != 0;
    if (mlock) mp.load_mode = LLAMA_LOAD_MODE_MMAP_MLOCK;
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        std::string why = take_log_errors();
        return fail(SIRIUS_ERR_MODEL_LOAD, std::string("llama.cpp could not load ") + path +
                                               (why.empty() ? std::string(" (no reason given)") : ": " + why));
    }
    if (!llama_model_has_decoder(model)) {
        llama_model_free(model);
        return fail(SIRIUS_ERR_MODEL_LOAD, std::string("model has no decoder (encoder-only models cannot generate): ") + path);
    }
    auto * m = new sirius_model;
    m->model = model;
    m->vocab = llama_model_get_vocab(model);
    m->n_vocab = llama_vocab_n_tokens(m->vocab);
    m->path = path;
    *out = m;
    return SIRIUS_OK;
}

void sirius_model_free(sirius_model * model) {
    if (!model) return;
    llama_model_free(model->model);
    delete model;
}

int32_t sirius_model_n_vocab(const sirius_model * m) { return m ? m->n_vocab : 0; }
int32_t sirius_model_n_ctx_train(const sirius_model * m) { return m ? llama_model_n_ctx_train(m->model) : 0; }
double sirius_model_kv_cache_bytes(const sirius_model * m, uint32_t n_ctx) { return m ? kv_cache_bytes(m->model, n_ctx) : 0.0; }
int32_t sirius_model_n_layer(const sirius_model * m) { return m ? llama_model_n_layer(m->model) : 0; }
int32_t sirius_model_n_embd(const sirius_model * m) { return m ? llama_model_n_embd(m->model) : 0; }
int64_t sirius_model_n_params(const sirius_model * m) { return m ? (int64_t) llama_model_n_params(m->model) : 0; }
int64_t sirius_model_size(const sirius_model * m) { return m ? (int64_t) llama_model_size(m->model) : 0; }
int32_t sirius_model_token_bos(const sirius_model * m) { return m ? llama_vocab_bos(m->vocab) : -1; }
int32_t sirius_model_token_eos(const sirius_model * m) { return m ? llama_vocab_eos(m->vocab) : -1; }
int32_t sirius_model_is_eog(const sirius_model * m, int32_t token) {
    return (m && token >= 0 && token < m->n_vocab) ? (int32_t) llama_vocab_is_eog(m->vocab, token) : 0;
}

int32_t sirius_model_meta(const sirius_model * m, const char * key, char * buf, int32_t buf_len, int32_t * n_out) {
    if (!m || !key) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "model or key is NULL");
    int32_t n = llama_model_meta_val_str(m->model, key, nullptr, 0);
    if (n < 0) return fail(SIRIUS_ERR_INVALID_ARGUMENT, std::string("no GGUF metadata key ") + key);
    std::string v(n + 1, '\0');
    llama_model_meta_val_str(m->model, key, &v[0], v.size());
    v.resize(n);
    return copy_out(v, buf, buf_len, n_out);
}

int32_t sirius_quantize(const char * path_in, const char * path_out, int32_t ftype, int32_t n_threads) {
    if (!path_in || !path_out) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "quantize needs input and output paths");
    if (ftype < 0 || ftype > 64) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown ftype " + std::to_string(ftype));
    ensure_backend();
    clear_log_errors();
    llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = (llama_ftype) ftype;
    qp.nthread = n_threads;
    qp.allow_requantize = true;
    if (llama_model_quantize(path_in, path_out, &qp) != 0) {
        std::string why = take_log_errors();
        return fail(SIRIUS_ERR_MODEL_LOAD, std::string("quantizing ") + path_in + " failed" + (why.empty() ? "" : ": " + why));
    }
    return SIRIUS_OK;
}

int32_t sirius_tokenize(const sirius_model * m, const char * text, int32_t text_len, int32_t add_special,
                        int32_t parse_special, int32_t * tokens, int32_t n_max, int32_t * n_out) {
    if (!m || (!text && text_len > 0) || text_len < 0) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "bad tokenize arguments");
    int32_t n = llama_tokenize(m->vocab, text ? text : "", text_len, tokens, tokens ? n_max : 0, add_special != 0, parse_special != 0);
    if (n == INT32_MIN) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "text too long to tokenize");
    if (n < 0) {
        if (n_out) *n_out = -n;
        return fail(SIRIUS_ERR_BUFFER_TOO_SMALL, "token buffer too small: need " + std::to_string(-n));
    }
    if (n_out) *n_out = n;
    return SIRIUS_OK;
}

int32_t sirius_detokenize(const sirius_model * m, const int32_t * tokens, int32_t n_tokens, int32_t remove_special,
                          int32_t unparse_special, char * buf, int32_t buf_len, int32_t * n_out) {
    if (!m || (!tokens && n_tokens > 0) || n_tokens < 0) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "bad detokenize arguments");
    for (int32_t i = 0; i < n_tokens; ++i) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary [0, " +
                                                         std::to_string(m->n_vocab) + ")");
        }
    }
    int32_t n = llama_detokenize(m->vocab, tokens, n_tokens, buf, buf ? buf_len : 0, remove_special != 0, unparse_special != 0);
    if (n < 0) {
        if (n_out) *n_out = -n;
        return fail(SIRIUS_ERR_BUFFER_TOO_SMALL, "text buffer too small: need " + std::to_string(-n));
    }
    if (n_out) *n_out = n;
    return SIRIUS_OK;
}

int32_t sirius_chat_apply(const sirius_model * m, const sirius_chat_message * messages, int32_t n_messages,
                          int32_t add_assistant, char * buf, int32_t buf_len, int32_t * n_out) {
    if (!m || n_messages < 0 || (!messages && n_messages > 0)) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "bad chat arguments");
    const char * tmpl = llama_model_chat_template(m->model, nullptr);
    if (!tmpl) {
        return fail(SIRIUS_ERR_UNSUPPORTED, "this model's GGUF has no chat template (tokenizer.chat_template): use a plain completion");
    }
    std::vector<llama_chat_message> chat(n_messages);
    for (int32_t i = 0; i < n_messages; ++i) {
        if (!messages[i].role || !messages[i].content) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "chat message without role or content");
        chat[i] = {messages[i].role, messages[i].content};
    }
    int32_t n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_assistant != 0, buf, buf ? buf_len : 0);
    if (n < 0) {
        return fail(SIRIUS_ERR_UNSUPPORTED, "llama.cpp does not recognise this model's chat template: use a plain completion");
    }
    if (n_out) *n_out = n;
    if (!buf || n > buf_len) return fail(SIRIUS_ERR_BUFFER_TOO_SMALL, "chat buffer too small: need " + std::to_string(n));
    return SIRIUS_OK;
}

int32_t sirius_session_new(sirius_model * m, uint32_t n_ctx, int32_t n_threads, int32_t n_threads_batch, uint32_t n_batch,
                           sirius_session ** out) {
    if (!out) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!m) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "model is NULL");
    if (n_ctx < SIRIUS_MIN_CTX || n_ctx > (uint32_t) INT32_MAX) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "n_ctx must be in [" + std::to_string(SIRIUS_MIN_CTX) + ", 2^31), got " +
                                                     std::to_string(n_ctx));
    }
    for (int32_t t : {n_threads, n_threads_batch}) {
        if (t < 1 || t > SIRIUS_MAX_THREADS) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, "n_threads must be in [1, " + std::to_string(SIRIUS_MAX_THREADS) + "], got " +
                                                         std::to_string(t));
        }
    }
    if (n_batch < 1) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "n_batch must be >= 1");
    // llama.cpp reserves outputs for n_batch rows, and its worst-case graph has one output per sequence
    // (1 + 2·SIRIUS_MAX_WIDTH): a smaller batch aborts on the first decode. n_ctx >= SIRIUS_MIN_CTX holds it.
    n_batch = std::max<uint32_t>(std::min(n_batch, n_ctx), SIRIUS_MIN_CTX);
    {
        // The KV cache is allocated at once: refuse one that cannot fit in this machine's memory before llama.cpp
        // tries (10^9 tokens took 52 s and 19 GB before failing).
        const double kv_bytes = kv_cache_bytes(m->model, n_ctx), mem = physical_memory_bytes();
        if (mem > 0 && kv_bytes > mem) {
            char msg[320];
            snprintf(msg, sizeof(msg), "n_ctx %u needs about %.1f GiB of KV cache, more than this machine's %.1f GiB of "
                     "memory: use a smaller n_ctx (this model was trained for %d tokens)", n_ctx, kv_bytes / (1 << 30),
                     mem / (1 << 30), llama_model_n_ctx_train(m->model));
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, msg);
        }
    }

    auto * s = new sirius_session;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_ubatch = n_batch;
    // Tree verification (width > 1) keeps each draft beam as a sequence of one unified KV cache: sequence 0
    // holds the session's tokens, 1..2·SIRIUS_MAX_WIDTH the beams of two consecutive tree levels.
    cp.n_seq_max = 1 + 2 * SIRIUS_MAX_WIDTH;
    cp.kv_unified = true;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads_batch;
    cp.no_perf = true;
    clear_log_errors();
    llama_context * ctx = llama_init_from_model(m->model, cp);
    if (!ctx) {
        delete s;
        std::string why = take_log_errors();
        return fail(SIRIUS_ERR_MODEL_LOAD, "llama.cpp could not create a context of " + std::to_string(n_ctx) + " tokens" +
                                               (why.empty() ? std::string() : ": " + why));
    }
    s->model = m;
    s->ctx = ctx;
    if (!sirius::threads_init(s, n_threads, n_threads_batch)) {
        sirius_session_free(s);
        return fail(SIRIUS_ERR_MODEL_LOAD, "could not start " + std::to_string(std::max(n_threads, n_threads_batch)) +
                                               " CPU worker threads");
    }
    s->n_ctx = std::min(n_ctx, llama_n_ctx(ctx));
    s->n_batch = n_batch;
    s->batch = llama_batch_init((int32_t) n_batch, 0, 1);
    *out = s;
    return SIRIUS_OK;
}

void sirius_session_free(sirius_session * s) {
    if (!s) return;
    sirius::sparse_release(s);
    llama_batch_free(s->batch);
    if (s->ctx) llama_free(s->ctx);  // (before the threadpools it uses)
    sirius::threads_free(s);
    delete s;
}

uint32_t sirius_session_n_ctx(const sirius_session * s) { return s ? s->n_ctx : 0; }

int32_t sirius_session_check_prompt(const sirius_session * s, int32_t n_prompt) {
    if (!s) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    if (n_prompt > 0 && (uint32_t) n_prompt > s->n_ctx) {
        return fail(SIRIUS_ERR_CONTEXT_OVERFLOW, "the prompt has " + std::to_string(n_prompt) + " tokens but the context holds " +
                                                     std::to_string(s->n_ctx) + ": raise n_ctx or shorten the prompt");
    }
    return SIRIUS_OK;
}
int32_t  sirius_session_n_past(const sirius_session * s) { return s ? (int32_t) s->tokens.size() : 0; }

int32_t sirius_session_tokens(const sirius_session * s, int32_t * tokens, int32_t n_max) {
    if (!s) return 0;
    const int32_t n = (int32_t) s->tokens.size();
    if (tokens) std::copy_n(s->tokens.begin(), std::min(n, std::max(n_max, 0)), tokens);
    return n;
}

int32_t sirius_session_reset(sirius_session * s) {
    if (!s) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    llama_memory_clear(llama_get_memory(s->ctx), true);
    s->tokens.clear();
    s->n_dense = 0;
    s->griffin_upto = 0;
    return SIRIUS_OK;
}

int32_t sirius_eval(sirius_session * s, const int32_t * tokens, int32_t n_tokens, int32_t logits_all, float * logits_out) {
    if (!s || (!tokens && n_tokens > 0)) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "session or tokens is NULL");
    return decode(s, tokens, n_tokens, logits_all != 0, logits_out);
}

int32_t sirius_truncate(sirius_session * s, int32_t n_keep) {
    if (!s) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    if (n_keep < 0) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "n_keep must be >= 0, got " + std::to_string(n_keep));
    truncate_to(s, n_keep);
    return SIRIUS_OK;
}

int32_t sirius_generate(sirius_session * s, const int32_t * prompt, int32_t n_prompt, const sirius_generate_params * params,
                        sirius_token_callback callback, void * user_data, sirius_generate_result * result) {
    std::vector<std::string> stops;
    if (int32_t rc = check_generate(s, prompt, n_prompt, params, stops)) return rc;
    const bool corrected = params->mode == SIRIUS_MODE_SIRIUS;
    const bool sparse = sirius::uses_sparse_ffn(params->mode);
    sirius_generate_result res{};
    res.n_prompt = n_prompt;
    if (int32_t rc = prefill(s, prompt, n_prompt, sparse && params->sparsity == SIRIUS_SPARSITY_GRIFFIN, res)) return rc;
    if (sparse) {
        if (int32_t rc = sirius::sparse_build(s, params->sparsity, params->density, &res.sparse)) return rc;
        if (int32_t rc = sirius::head_build(s, params->draft_vocab, &res.sparse)) return rc;
        if (res.sparse.n_layers_sparse > 0) sirius::set_ffn_mode(s, SIRIUS_MODE_SPARSE);
    }

    int64_t kept0 = 0, seen0 = 0;
    sirius_threshold_kept(s, &kept0, &seen0);
    sirius::TextStream text(stops);
    res.finish_reason = SIRIUS_FINISH_LENGTH;
    const auto t0 = std::chrono::steady_clock::now();
    const int32_t status = corrected ? sirius::correction_loop(s, *params, text, callback, user_data, res)
                                     : plain_loop(s, *params, text, callback, user_data, res);
    // Measuring the session's cost curve is a one-time set-up, reported on its own, not decoding time.
    res.t_generate_ms = ms_since(t0) - res.sirius.t_calibrate_ms;
    if (sparse && params->sparsity == SIRIUS_SPARSITY_THRESHOLD) {
        int64_t kept1 = 0, seen1 = 0;
        sirius_threshold_kept(s, &kept1, &seen1);
        threshold_measured(kept1 - kept0, seen1 - seen0, res.sparse);
    } else if (sparse) {
        res.sparse.measured_density = res.sparse.density;
    }
    sirius::set_ffn_mode(s, SIRIUS_MODE_DENSE);  // eval() and the next prefill are dense again
    const std::string rest = text.flush();
    if (callback && !rest.empty()) callback(user_data, nullptr, 0, rest.data(), (int32_t) rest.size());
    if (result) *result = res;
    return status;
}

}  // extern "C"
