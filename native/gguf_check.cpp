// Checks a GGUF file's hyperparameters before llama.cpp's loader sees them. llama.cpp validates most of a
// file by throwing (which sirius_model_load turns into an error), but asserts on a few values: a layer count
// outside [1, LLAMA_MAX_LAYERS] aborts at load, a NaN epsilon at the first decode, a head count of 0 divides
// by zero. An abort inside a library kills the host process, so those values are refused here, with the key
// and the value named. What this does not cover is left to llama.cpp's own checks (tests/test_gguf_mutation.py
// loads mutated files in subprocesses to find any that abort).
#include "internal.h"

#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sirius {

namespace {

constexpr uint64_t kMaxLayers = 512;  // llama.cpp's LLAMA_MAX_LAYERS (llama-hparams.h)

struct Reader {
    const gguf_context * ctx;
    std::string arch;

    int64_t find(const std::string & key) const { return gguf_find_key(ctx, (arch + "." + key).c_str()); }

    // An integer value (any integer width; arrays give their elements). Returns false when absent or not an
    // integer: llama.cpp then reports the type itself.
    bool ints(const std::string & key, std::vector<int64_t> & out) const {
        out.clear();
        const int64_t id = find(key);
        if (id < 0) return false;
        gguf_type t = gguf_get_kv_type(ctx, id);
        const void * data = nullptr;
        size_t n = 1;
        if (t == GGUF_TYPE_ARRAY) {
            t = gguf_get_arr_type(ctx, id);
            n = gguf_get_arr_n(ctx, id);
            if (t == GGUF_TYPE_ARRAY || t == GGUF_TYPE_STRING) return false;
            data = gguf_get_arr_data(ctx, id);
        } else if (t != GGUF_TYPE_STRING) {
            data = gguf_get_val_data(ctx, id);
        }
        if (!data) return false;
        for (size_t i = 0; i < n; ++i) {
            switch (t) {
                case GGUF_TYPE_UINT8:  out.push_back(((const uint8_t *) data)[i]); break;
                case GGUF_TYPE_INT8:   out.push_back(((const int8_t *) data)[i]); break;
                case GGUF_TYPE_UINT16: out.push_back(((const uint16_t *) data)[i]); break;
                case GGUF_TYPE_INT16:  out.push_back(((const int16_t *) data)[i]); break;
                case GGUF_TYPE_UINT32: out.push_back(((const uint32_t *) data)[i]); break;
                case GGUF_TYPE_INT32:  out.push_back(((const int32_t *) data)[i]); break;
                case GGUF_TYPE_UINT64: out.push_back((int64_t) std::min<uint64_t>(((const uint64_t *) data)[i], INT64_MAX)); break;
                case GGUF_TYPE_INT64:  out.push_back(((const int64_t *) data)[i]); break;
                default: return false;
            }
        }
        return true;
    }

    bool real(const std::string & key, double & out) const {
        const int64_t id = find(key);
        if (id < 0) return false;
        switch (gguf_get_kv_type(ctx, id)) {
            case GGUF_TYPE_FLOAT32: out = gguf_get_val_f32(ctx, id); return true;
            case GGUF_TYPE_FLOAT64: out = gguf_get_val_f64(ctx, id); return true;
            default: return false;
        }
    }
};

std::string bad(const std::string & key, const std::string & value, const std::string & want) {
    return "its metadata has " + key + " = " + value + " (" + want + "): the file is corrupt or was written wrongly; "
           "re-download or re-convert it";
}

}  // namespace

// Long (about 90 lines) because it is a flat list of independent checks, one per hyperparameter, in the order
// llama.cpp's loader reads them; splitting it would only scatter that list.
std::string check_gguf_hparams(const char * path) {
    gguf_init_params gp = {/*no_alloc =*/ true, /*ctx =*/ nullptr};
    gguf_context * ctx = gguf_init_from_file(path, gp);
    if (!ctx) return "";  // not readable as GGUF: llama.cpp's loader says why
    Reader r{ctx, ""};
    std::string why;
    const int64_t arch_id = gguf_find_key(ctx, "general.architecture");
    if (arch_id >= 0 && gguf_get_kv_type(ctx, arch_id) == GGUF_TYPE_STRING) r.arch = gguf_get_val_str(ctx, arch_id);
    std::vector<int64_t> v;
    auto key = [&](const char * k) { return r.arch + "." + k; };
    auto check_ints = [&](const char * k, int64_t lo, int64_t hi, const std::string & want) {
        if (!why.empty() || !r.ints(k, v)) return;
        for (int64_t x : v) {
            if (x < lo || x > hi) { why = bad(key(k), std::to_string(x), want); return; }
        }
    };
    if (!r.arch.empty()) {
        check_ints("block_count", 1, (int64_t) kMaxLayers, "must be in [1, " + std::to_string(kMaxLayers) + "]");
        check_ints("context_length", 1, INT32_MAX, "must be >= 1");
        check_ints("embedding_length", 1, 1 << 20, "must be in [1, 2^20]");
        check_ints("vocab_size", 0, INT32_MAX, "must be in [0, 2^31)");
        check_ints("feed_forward_length", 0, 1 << 24, "must be in [0, 2^24]");
        std::vector<int64_t> embd, head, head_kv, key_len, rope_dims;
        r.ints("embedding_length", embd);
        // Head counts may be per layer (arrays, 0 for a layer without attention); a scalar head count is used by
        // every layer, and n_embd / n_head must be a whole head.
        if (why.empty() && r.ints("attention.head_count", head)) {
            for (int64_t h : head) {
                if (h < 0 || h > 1 << 16 || (head.size() == 1 && h == 0)) {
                    why = bad(key("attention.head_count"), std::to_string(h), "must be >= 1");
                    break;
                }
            }
        }
        if (why.empty() && r.ints("attention.head_count_kv", head_kv)) {
            for (size_t i = 0; i < head_kv.size(); ++i) {
                const int64_t hk = head_kv[i], h = head.empty() ? 1 : head[head.size() == 1 ? 0 : std::min(i, head.size() - 1)];
                if (hk < 0 || (head_kv.size() == 1 && hk == 0) || hk > h || (hk > 0 && h % hk != 0)) {
                    why = bad(key("attention.head_count_kv"), std::to_string(hk),
                              "must divide attention.head_count = " + std::to_string(h));
                    break;
                }
            }
        }
        const bool has_key_len = r.ints("attention.key_length", key_len);
        if (why.empty() && has_key_len) check_ints("attention.key_length", 1, 1 << 16, "must be in [1, 65536]");
        if (why.empty() && r.ints("attention.value_length", v)) check_ints("attention.value_length", 1, 1 << 16, "must be in [1, 65536]");
        if (why.empty() && !has_key_len && embd.size() == 1 && head.size() == 1 && head[0] > 0 && embd[0] % head[0] != 0) {
            why = bad(key("attention.head_count"), std::to_string(head[0]),
                      "must divide embedding_length = " + std::to_string(embd[0]));
        }
        if (why.empty() && r.ints("rope.dimension_count", rope_dims)) {
            const int64_t head_dim = has_key_len && !key_len.empty() ? key_len[0]
                                   : (embd.size() == 1 && head.size() == 1 && head[0] > 0 ? embd[0] / head[0] : INT32_MAX);
            for (int64_t d : rope_dims) {
                if (d < 0 || d > head_dim) {
                    why = bad(key("rope.dimension_count"), std::to_string(d), "must be in [0, the head size " + std::to_string(head_dim) + "]");
                    break;
                }
            }
        }
        for (const char * k : {"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"}) {
            double e;
            if (why.empty() && r.real(k, e) && !(std::isfinite(e) && e >= 0 && e < 1)) {
                why = bad(key(k), std::to_string(e), "must be a finite number in [0, 1)");
            }
        }
        for (const char * k : {"rope.freq_base", "rope.scaling.factor", "attention.scale", "logit_scale",
                               "final_logit_softcapping", "attn_logit_softcapping", "embedding_scale", "residual_scale"}) {
            double x;
            if (why.empty() && r.real(k, x) && !std::isfinite(x)) why = bad(key(k), std::to_string(x), "must be finite");
        }
        double base;
        if (why.empty() && r.real("rope.freq_base", base) && !(base > 0)) {
            why = bad(key("rope.freq_base"), std::to_string(base), "must be > 0");
        }
    }
    // A weight of an integer type has the bytes of a float one of the same width (I32 for F32): it loads, and the
    // first op on it aborts ("unsupported types"). No model weight is an integer; a removed type has no blocks.
    for (int64_t i = 0; why.empty() && i < gguf_get_n_tensors(ctx); ++i) {
        const ggml_type t = gguf_get_tensor_type(ctx, i);
        const bool integer = t == GGML_TYPE_I8 || t == GGML_TYPE_I16 || t == GGML_TYPE_I32 || t == GGML_TYPE_I64;
        if (integer || t == GGML_TYPE_F64 || t >= GGML_TYPE_COUNT || ggml_blck_size(t) <= 0) {
            why = std::string("its tensor ") + gguf_get_tensor_name(ctx, i) + " has type " + std::to_string((int) t) +
                  " (" + (t < GGML_TYPE_COUNT ? ggml_type_name(t) : "unknown") + "), which no model weight has: the file is "
                  "corrupt or was written wrongly; re-download or re-convert it";
        }
    }
    gguf_free(ctx);
    return why;
}

}  // namespace sirius
