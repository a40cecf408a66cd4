// The neuron-major ffn_down that per-token single-neuron sparsity reads (neuron_ffn.cpp): for every layer, a
// transposed copy [n_ff rows of n_embd], so neuron n's column of ffn_down is one contiguous row that a decode
// accumulates as h[n] * row (an "axpy"), and a skipped neuron is bytes never read. PowerInfer's CPU layout.
// Rows are ggml blocks of their type, except that a Q4_0 row holds its blocks' fp16 scales first and then their
// nibbles (the same bytes, split; neuron_ffn.cpp's kernels read a run of scales with one load).
//
// Built once per model: each layer's ffn_down is dequantised, transposed in tiles and requantised row by row
// (neuron_down_type). Cached as a small GGUF in the model's cache directory (sirius_model_set_cache_dir), named
// by the model file and the type, and checked against the model on load (format version, file size, a
// fingerprint of the ffn_down bytes, every tensor's type and shape); a stale or foreign file is rebuilt.
// Without a cache directory it is built in memory. One copy per model, shared by its sessions.

#include "sparse.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <strings.h>
#include <sys/stat.h>
#include <thread>

namespace sirius {

namespace {

constexpr uint32_t kFormat = 2;  // 2: Q4_0 rows with their scales first

std::string tensor_name(int32_t il) { return "blk." + std::to_string(il) + ".ffn_down_nm.weight"; }

// FNV-1a over the first and last 4 KiB of every ffn_down in the model file: tells a file built for another
// model (or another version of this one) of the same size apart.
uint64_t fingerprint(const MappedGGUF & file, const std::vector<LayerFFN> & layers) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](const uint8_t * p, size_t n) {
        for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    };
    for (const LayerFFN & f : layers) {
        if (!f.down) continue;
        const size_t n = ggml_nbytes(f.down);
        const uint8_t * p = file.tensor(f.name[2], n);
        if (!p) return 0;
        mix(p, std::min<size_t>(n, 4096));
        mix(p + n - std::min<size_t>(n, 4096), std::min<size_t>(n, 4096));
    }
    return h;
}

// Layer il's neuron-major down from the file's ffn_down bytes (src: [n_embd rows of n_ff], type st) into dst
// (n_ff rows of n_embd, type dt). full: the dequantised matrix; tile: 32 neurons' columns.
bool transpose_layer(const uint8_t * src, ggml_type st, int64_t n_ff, int64_t n_embd, ggml_type dt, uint8_t * dst,
                     std::vector<float> & full, std::vector<float> & tile) {
    const size_t srow = ggml_row_size(st, n_ff), drow = ggml_row_size(dt, n_embd);
    full.resize((size_t) n_ff * n_embd);
    const ggml_to_float_t to_float = ggml_get_type_traits(st)->to_float;
    for (int64_t r = 0; r < n_embd; ++r) {
        if (st == GGML_TYPE_F32) {
            memcpy(full.data() + (size_t) r * n_ff, src + (size_t) r * srow, srow);
        } else if (to_float) {
            to_float(src + (size_t) r * srow, full.data() + (size_t) r * n_ff, n_ff);
        } else {
            return false;
        }
    }
    constexpr int64_t T = 32;
    tile.resize((size_t) T * n_embd);
    std::vector<uint8_t> blocks(dt == GGML_TYPE_Q4_0 ? drow : 0);
    const ggml_from_float_t q8 = ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float;
    for (int64_t n0 = 0; n0 < n_ff; n0 += T) {
        const int64_t nt = std::min<int64_t>(T, n_ff - n0);
        for (int64_t r = 0; r < n_embd; ++r) {
            const float * p = full.data() + (size_t) r * n_ff + n0;
            for (int64_t t = 0; t < nt; ++t) tile[(size_t) t * n_embd + r] = p[t];
        }
        for (int64_t t = 0; t < nt; ++t) {
            const float * col = tile.data() + (size_t) t * n_embd;
            uint8_t * out = dst + (size_t) (n0 + t) * drow;
            if (dt == GGML_TYPE_F32) {
                memcpy(out, col, drow);
            } else if (dt == GGML_TYPE_F16) {
                ggml_fp32_to_fp16_row(col, reinterpret_cast<ggml_fp16_t *>(out), n_embd);
            } else if (dt == GGML_TYPE_Q8_0 && q8) {
                q8(col, out, n_embd);
            } else if (dt == GGML_TYPE_Q4_0) {
                // ggml's blocks {fp16 d, 16 bytes of nibbles}, split: the row's scales, then its nibbles
                // (the kernels read a run of scales with one load)
                if (ggml_quantize_chunk(dt, col, blocks.data(), 0, 1, n_embd, nullptr) != drow) return false;
                const int64_t nb = n_embd / 32;
                for (int64_t b = 0; b < nb; ++b) {
                    memcpy(out + 2 * b, blocks.data() + 18 * b, 2);
                    memcpy(out + 2 * nb + 16 * b, blocks.data() + 18 * b + 2, 16);
                }
            } else if (ggml_quantize_chunk(dt, col, out, 0, 1, n_embd, nullptr) != drow) {
                return false;
            }
        }
    }
    return true;
}

// The cached file, if it is exactly what `want` describes; fills nd's rows from its mapping.
bool load_cached(const std::string & path, ggml_type type, uint64_t size, uint64_t fp, const std::vector<LayerFFN> & layers,
                 NeuronDown & nd) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return false;
    auto f = std::make_unique<MappedGGUF>();
    if (!f->open(path, true)) return false;
    auto u64 = [&](const char * key, uint64_t & v) {
        const int64_t id = gguf_find_key(f->g, key);
        if (id < 0 || gguf_get_kv_type(f->g, id) != GGUF_TYPE_UINT64) return false;
        v = gguf_get_val_u64(f->g, id);
        return true;
    };
    uint64_t format = 0, src_size = 0, src_fp = 0;
    if (!u64("sirius.neuron_down.format", format) || format != kFormat || !u64("sirius.source.size", src_size) ||
        src_size != size || !u64("sirius.source.fingerprint", src_fp) || src_fp != fp) {
        return false;
    }
    for (size_t il = 0; il < layers.size(); ++il) {
        const LayerFFN & L = layers[il];
        if (!L.down) continue;
        const std::string name = tensor_name((int32_t) il);
        const int64_t id = gguf_find_tensor(f->g, name.c_str());
        if (id < 0 || gguf_get_tensor_type(f->g, id) != type) return false;
        const uint8_t * p = f->tensor(name.c_str(), ggml_row_size(type, L.n_embd) * (size_t) L.n_ff);
        if (!p) return false;
        nd.rows[il] = p;
    }
    nd.bytes = (int64_t) f->size;
    nd.file = std::move(f);
    nd.path = path;
    return true;
}

// Writes nd (built in memory) to path, through a temporary file renamed into place. false: not written (the
// in-memory copy still serves; the next load builds again).
bool save(const std::string & path, const NeuronDown & nd, uint64_t size, uint64_t fp, const std::vector<LayerFFN> & layers) {
    gguf_context * g = gguf_init_empty();
    gguf_set_val_u64(g, "sirius.neuron_down.format", kFormat);
    gguf_set_val_u64(g, "sirius.source.size", size);
    gguf_set_val_u64(g, "sirius.source.fingerprint", fp);
    ggml_init_params ip = {ggml_tensor_overhead() * (layers.size() + 1), nullptr, true};
    ggml_context * ctx = ggml_init(ip);
    for (size_t il = 0; il < layers.size(); ++il) {
        if (!nd.rows[il]) continue;
        ggml_tensor * t = ggml_new_tensor_2d(ctx, nd.type, layers[il].n_embd, layers[il].n_ff);
        ggml_set_name(t, tensor_name((int32_t) il).c_str());
        t->data = const_cast<uint8_t *>(nd.rows[il]);
        gguf_add_tensor(g, t);
    }
    const std::string tmp = path + ".tmp." + std::to_string((long) getpid());
    bool ok = gguf_write_to_file(g, tmp.c_str(), false);
    ok = ok && rename(tmp.c_str(), path.c_str()) == 0;
    if (!ok) remove(tmp.c_str());
    ggml_free(ctx);
    gguf_free(g);
    return ok;
}

}  // namespace

// The neuron-major down's type for a layer whose ffn_down is of type src: Griffin's rule (requantised_down_type:
// float weights stay float, here F16; 8-bit ones Q8_0, lower ones Q4_0) (the 0.5625 bytes per weight of the original K-quants; Q8_0 would read nearly
// twice the bytes a dense Q4_K down reads). Measured on Qwen2.5-Coder-1.5B: benchmarks/NOTES.md, "Per-token
// sparsity on single neurons". SIRIUS_NEURON_DOWN=TYPE (q8_0, q4_0, f16, f32) overrides it for measurements;
// *why is set when its value is unusable.
ggml_type neuron_down_type(ggml_type src, const char ** why) {
    static const ggml_type allowed[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
    *why = nullptr;
    const char * v = getenv("SIRIUS_NEURON_DOWN");
    if (v && *v) {
        for (ggml_type t : allowed) {
            if (strcasecmp(v, ggml_type_name(t)) == 0) return t;
        }
        *why = "SIRIUS_NEURON_DOWN is not a neuron-major down type: use q8_0, q4_0, f16 or f32";
        return GGML_TYPE_Q8_0;
    }
    const ggml_type t = requantised_down_type(src);
    return t == GGML_TYPE_BF16 ? GGML_TYPE_F16 : t;  // (no BF16 kernel)
}

// Loads the cached copy or builds it (and caches it). About 100 lines, in order: the cache check, the build over
// the session's threads, the write and the reload; each step needs the one before it, under one lock.
int32_t neuron_down(sirius_model * m, int32_t n_threads, std::shared_ptr<const NeuronDown> & out) {
    std::lock_guard<std::mutex> lock(m->neuron_mu);
    if (m->neuron_down) {
        out = m->neuron_down;
        return SIRIUS_OK;
    }
    const std::shared_ptr<const MappedGGUF> file = model_file(m);
    if (!file) {
        return fail(SIRIUS_ERR_IO, "cannot map the model file for the neuron-major ffn_down: " + m->path);
    }
    const int32_t n_layer = llama_model_n_layer(m->model);
    std::vector<LayerFFN> layers(n_layer);
    ggml_type type = GGML_TYPE_COUNT;
    const char * why = nullptr;
    for (int32_t il = 0; il < n_layer; ++il) {
        LayerFFN & f = layers[il];
        if (!layer_ffn(m->model, il, f) || f.n_embd % 32 != 0) {
            f = LayerFFN{};
            continue;
        }
        const ggml_type t = neuron_down_type(f.down->type, &why);
        if (why) {
            return fail(SIRIUS_ERR_INVALID_ARGUMENT, why);
        }
        if (type == GGML_TYPE_COUNT || ggml_type_size(t) * ggml_blck_size(type) > ggml_type_size(type) * ggml_blck_size(t)) {
            type = t;  // one type for the file: the widest any layer asks for
        }
    }
    auto nd = std::make_shared<NeuronDown>();
    nd->rows.assign(n_layer, nullptr);
    if (type == GGML_TYPE_COUNT) {  // no layer can run on single neurons: an empty copy (every layer keeps groups)
        m->neuron_down = nd;
        out = nd;
        return SIRIUS_OK;
    }
    nd->type = type;
    struct stat st;
    const uint64_t size = stat(m->path.c_str(), &st) == 0 ? (uint64_t) st.st_size : 0;
    const uint64_t fp = fingerprint(*file, layers);
    std::string path;
    if (!m->cache_dir.empty()) {
        std::string base = m->path.substr(m->path.find_last_of('/') + 1);
        path = m->cache_dir + "/" + base + "-" + std::to_string(size) + "." + ggml_type_name(type) + ".neuron-down.gguf";
        if (load_cached(path, type, size, fp, layers, *nd)) {
            m->neuron_down = nd;
            out = nd;
            return SIRIUS_OK;
        }
        nd->rows.assign(n_layer, nullptr);
    }

    // Build: each thread takes the next layer.
    const auto t0 = std::chrono::steady_clock::now();
    nd->owned.resize(n_layer);
    std::vector<int32_t> todo;
    for (int32_t il = 0; il < n_layer; ++il) {
        const LayerFFN & f = layers[il];
        if (!f.down) continue;
        if (!file->tensor(f.name[2], ggml_nbytes(f.down))) {
            return fail(SIRIUS_ERR_IO, std::string("cannot read ") + f.name[2] + " from " + m->path);
        }
        // ggml wraps the rows in a CPU buffer, which must start on its tensor alignment (a heap vector's need not).
        const size_t n = ggml_row_size(type, f.n_embd) * (size_t) f.n_ff;
        nd->owned[il].resize(n + kRowAlign);
        const uintptr_t at = reinterpret_cast<uintptr_t>(nd->owned[il].data());
        nd->rows[il] = nd->owned[il].data() + ((kRowAlign - at % kRowAlign) % kRowAlign);
        nd->bytes += (int64_t) n;
        todo.push_back(il);
    }
    std::atomic<size_t> next{0};
    std::atomic<bool> ok{true};
    auto work = [&] {
        std::vector<float> full, tile;
        for (size_t i; (i = next++) < todo.size() && ok;) {
            const LayerFFN & f = layers[todo[i]];
            const uint8_t * src = file->tensor(f.name[2], ggml_nbytes(f.down));
            if (!transpose_layer(src, f.down->type, f.n_ff, f.n_embd, type, const_cast<uint8_t *>(nd->rows[todo[i]]), full, tile)) ok = false;
        }
    };
    std::vector<std::thread> pool;
    for (int32_t t = 1; t < std::max(1, n_threads); ++t) pool.emplace_back(work);
    work();
    for (auto & th : pool) th.join();
    if (!ok) {
        return fail(SIRIUS_ERR_INTERNAL, "cannot transpose ffn_down into the neuron-major layout (its type has no dequantiser)");
    }
    nd->build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!path.empty()) {
        mkdir(m->cache_dir.c_str(), 0755);
        // Written, then used through its mapping (page cache) rather than the heap copy.
        if (save(path, *nd, size, fp, layers)) {
            auto cached = std::make_shared<NeuronDown>();
            cached->type = type;
            cached->rows.assign(n_layer, nullptr);
            if (load_cached(path, type, size, fp, layers, *cached)) {
                cached->build_ms = nd->build_ms;
                nd = cached;
            }
        }
    }
    m->neuron_down = nd;
    out = nd;
    return SIRIUS_OK;
}

}  // namespace sirius

extern "C" {

int32_t sirius_model_set_cache_dir(sirius_model * m, const char * dir) {
    if (!m) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "model is NULL");
    std::lock_guard<std::mutex> lock(m->neuron_mu);
    std::string d = dir ? dir : "";
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    if (!d.empty()) {
        struct stat st;
        if (stat(d.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
            return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "cache directory " + d + " exists and is not a directory");
        }
    }
    m->cache_dir = d;
    return SIRIUS_OK;
}

}  // extern "C"
